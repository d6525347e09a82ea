"""RunConfig: one run, as its pipeline YAML says; the sections are in config/sections.py.

    config = load_config("pipelines/demo.yaml")       # config/load.py: a RunConfig, every value checked
    config.paths.accepted                              # where its stages write (core/paths.py)
    config.teacher_runs()                              # the run as each of its teachers sees it
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from cotdistill.config.sections import (
    EVAL_MODELS, TEACHER_GENERATE_KEYS, DataConfig, EvaluateConfig, FilterConfig, GenerateConfig, ModelConfig, Problems,
    OnPolicyConfig, SandboxConfig, ScoreConfig, StudentConfig, TeacherEntryConfig, TrainConfig,
)
from cotdistill.core.paths import RunPaths

if TYPE_CHECKING:
    from cotdistill.verify.judging import CodeChecks


class CodeUse(NamedTuple):
    """Whether model-written programs are run: by the filter (and generate's checks), and by evaluate."""

    filtering: bool
    evaluating: bool


@dataclass(kw_only=True)
class RunConfig:
    run_name: str
    data: DataConfig
    # The teacher; or `teachers`, a list of several (each with a name), whose rows generate tags by teacher_name.
    # Where one teacher is meant (evaluate's `teacher`, score.model's default, prune's calibration rationales),
    # it is the first of the list: after loading, `teacher` is that one.
    teacher: ModelConfig | None = None
    teachers: list[TeacherEntryConfig] = field(default_factory=list)
    student: StudentConfig
    # Where runs go: <output_dir>/<run_name>/, relative to the directory the command runs in.
    output_dir: str = "runs"
    seed: int = 0
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    score: ScoreConfig | None = None  # null: no score step (train.loss kd then reads generate.logprobs' columns)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)  # for answer_format code
    # The dpo stage: TRL's DPOTrainer on filter/pairs/ from the SFT student (train/model/); trl.DPOConfig fields,
    # passed through as they are (e.g. {beta: 0.1, max_steps: 100, learning_rate: 5.0e-7}). null: no dpo stage.
    dpo: dict[str, Any] | None = None
    # The onpolicy stage: on-policy distillation of the student from a teacher on the training questions
    # (OnPolicyConfig, e.g. {beta: 0.5, max_steps: 50, max_completion_length: 256}); null: no onpolicy stage.
    onpolicy: OnPolicyConfig | None = None

    def rules(self, run: RunConfig) -> Problems:
        """The teachers apart from one another, and the stages that need another's outputs."""
        names = [t.name for t in self.teachers]
        for name in sorted({n for n in names if names.count(n) > 1}):
            yield "teachers", f"two teachers are named {name!r}: every teacher needs its own name"
        for name in names:
            if name in (*EVAL_MODELS, *self.evaluate.extra_models):
                yield "teachers", f"{name!r} is also the name of a model evaluate scores; name the teacher differently"
        if len({t.delimiters() for t in self.teachers}) > 1:
            yield "teachers", ("their reasoning_delimiters differ, and the filter reads every teacher's answers after "
                               "one reasoning block: give them the same delimiters")
        if self.dpo is not None and not self.filter.preference_pairs:
            yield "dpo", "trains on the filter's preference pairs: set filter.preference_pairs: true"

    @property
    def overrides(self) -> list[str]:
        """The command line's dotted overrides this config was loaded with (config/load.py)."""
        return getattr(self, "_overrides", [])

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir, self.teacher_name)

    @property
    def teacher_name(self) -> str | None:
        """Set on the run as one teacher of `teachers` sees it (for_teacher); None otherwise."""
        return getattr(self, "_teacher_name", None)

    def for_teacher(self, name: str) -> RunConfig:
        """The run as the teacher `name` of `teachers` alone sees it: that teacher, generate's settings with its
        own in their place, and generate's folder generate/teachers/<name>/. generate runs each teacher so, with
        the single-teacher code, fingerprint, journals and resume."""
        entry = next(t for t in self.teachers if t.name == name)
        own = {k: getattr(entry, k) for k in TEACHER_GENERATE_KEYS if getattr(entry, k) is not None}
        derived = dataclasses.replace(self, teacher=entry, teachers=[],
                                      generate=dataclasses.replace(self.generate, **own))
        derived._teacher_name, derived._overrides = name, self.overrides
        return derived

    def kd_teacher(self) -> ModelConfig:
        """The teacher whose logprobs a KD student learns: train.kd.teacher, else the first (or only) one."""
        named = self.train.kd.teacher
        return next(t for t in self.teachers if t.name == named) if named else self.teacher

    def teacher_runs(self) -> list[RunConfig]:
        """One run per teacher: for_teacher of each of `teachers`, or this run itself for a single teacher."""
        return [run for _, run in self.keyed_teacher_runs()]

    def keyed_teacher_runs(self) -> list[tuple[str, RunConfig]]:
        """teacher_runs, each with the key its settings are written under: "teacher", or "teachers[i]"."""
        if not self.teachers:
            return [("teacher", self)]
        return [(f"teachers[{i}]", self.for_teacher(t.name)) for i, t in enumerate(self.teachers)]

    def student_base(self) -> str:
        """What the student trains from (and base_student is): the pruned model with student.prune, else
        student.model (an embedded model converted once to a folder)."""
        from cotdistill.models.resolve import resolve_model

        if self.student.prune is not None:
            return str(self.paths.pruned_model)
        return resolve_model(self.student.model)

    def uses_code(self) -> CodeUse:
        """Whether programs are run: by the filter (and generate's checks), and by evaluate."""
        ev = self.evaluate
        filtering = self.filter.answer_format == "code" and self.filter.label != "none"
        evaluating = (ev.answer_format or self.filter.answer_format) == "code" and bool(ev.models or ev.stored
                                                                                         or ev.extra_models)
        return CodeUse(filtering, evaluating)

    def answer_kinds(self) -> dict[str, str]:
        """The questions' declared answer kinds (data.answer_kind_field), by question id; {} when unset."""
        from cotdistill.questions.sources import QuestionSource

        return QuestionSource(self.data).answer_kinds() if self.data.answer_kind_field else {}

    def code_checks(self) -> CodeChecks | None:
        """The filter's (and generate's) verdicts on programs: with filter.answer_format code, when answers are
        checked; None otherwise."""
        from cotdistill.questions.sources import QuestionSource

        return QuestionSource(self.data).code_checks(self.sandbox) if self.uses_code().filtering else None
