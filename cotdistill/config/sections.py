"""The sections of a run's configuration: one dataclass per YAML section, its fields with their allowed values
beside them (`setting(...)`, core/fields.py), and its rules.

    generate: GenerateConfig        # the `generate:` section of a pipeline YAML; config/run.py holds them all

A section's `rules(run)` yields (key, problem) for every check that is more than one field's range: between its
own fields, with the rest of the run (a rule lives in the section whose key it blames), and what it names outside
the config (files, templates, model folders). config/load.py runs the field checks and the rules of every
section, in the order the YAML declares them, before anything starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from cotdistill.core.fields import setting
from cotdistill.teachers import BACKENDS
from cotdistill.verify.answers import (
    ANSWER_FORMATS, ANSWER_KINDS, EXTRACTION_TARGETS, GOLD_PARSERS, JUDGE_FORMAT, THINK_DELIMITERS, MathOptions,
)
from cotdistill.verify.code import CODE_TEST_FORMATS
from cotdistill.verify.stopping import STOPPING_RULES

if TYPE_CHECKING:
    from cotdistill.config.run import RunConfig

Problems = Iterator[tuple[str, str]]  # (key within the section, what is wrong)

LABEL_MODES = ("gold", "majority", "none")  # filter.label
DIFFICULTY_WEIGHTS = ("none", "harder_more")  # filter.difficulty.weight
# evaluate.models: the run's own models
EVAL_MODELS = ("teacher", "base_student", "student", "student_dpo", "student_onpolicy")
EXTRA_MODEL_PROMPTS = ("student", "teacher")  # evaluate.extra_models.<name>.prompt
TRAIN_LOSSES = ("sft", "kd")  # train.loss
TRAIN_TARGETS = ("rationale", "label")  # train.target
ONPOLICY_STARTS = ("student", "base_student")  # onpolicy.start
KD_INTERPOLATIONS = ("none", "taid")  # train.kd.interpolation
SCORE_CONTEXTS = ("student", "teacher")  # score.context
SELECTIONS = ("random", "shortest", "longest")  # filter.select
SANDBOX_EXECUTORS = ("local", "piston")  # sandbox.executor
# filter.pair_reasons: the reasons that make a rationale a preference pair's rejected side (a subset of the
# filter's reasons, stages/filter/phases.py): its answer or program is wrong, or it never reached one. Duplicates,
# the question's cap and question-level reasons say nothing against the text itself.
LABEL_PAIR_REASONS = ("wrong", "tests_failed", "runtime_error", "exec_timeout", "memory_limit", "output_limit")
PAIR_REASONS = (*LABEL_PAIR_REASONS, "truncated", "unfinished_reasoning", "unparseable", "ambiguous", "degenerate",
                "no_code", "syntax_error", "overlong")
# filter.audit_verifier.second: the verifier that judges a sample of the filter's verdicts again, on its own
AUDIT_VERIFIERS = ("math_verify_whole_text", "judge")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"  # a teacher's or an extra model's name: it names files and folders


def template_problems(name: str, examples: str | None, prompt_key: str, examples_key: str,
                      needs_hint: bool = False) -> Problems:
    """A prompt template that does not exist or compile, or a few-shot file it cannot read (blamed on the key that
    names it); with `needs_hint`, a rationalization template that never shows the hint."""
    from cotdistill.core.prompts import PromptError, PromptTemplate

    try:
        template = PromptTemplate(name, examples)
        if needs_hint:
            shown = template.render(question="What is 2 + 3?", choices=None, hint="5 (hint 7f3a)")
            if not any("hint 7f3a" in m["content"] for m in shown):
                yield prompt_key, "never shows `hint` (the gold answer): that would ask the question again without it"
    except PromptError as e:
        yield examples_key if examples and str(e).startswith(str(examples)) else prompt_key, str(e)


def greedy_problem(temperature: float, num_samples: int, local_engine: bool) -> str | None:
    """vLLM refuses n > 1 at temperature 0: every request would fail."""
    if local_engine and temperature == 0 and num_samples > 1:
        return (f"0 samples greedily, and vLLM refuses n > 1 with greedy sampling ({num_samples} copies of one "
                "text): use a temperature above 0, or num_samples 1")
    return None


@dataclass
class DataConfig:
    """Where questions come from and how to read them."""

    path: str  # a hub dataset id, a local file (.jsonl/.json/.parquet/.csv), a directory, or a glob
    split: str = "train"
    name: str | None = None  # hub dataset configuration, e.g. "main" for openai/gsm8k
    question_field: str = "question"
    answer_field: str | None = "answer"  # null for unlabelled questions (filter.label: majority)
    choices_field: str | None = None  # list of option texts, for multiple choice
    id_field: str | None = None  # when absent, ids are a hash of the question text
    gold_format: str = setting("plain", one_of=GOLD_PARSERS)  # how to parse the gold: gsm8k | plain | choice_letter
    limit: int | None = setting(None, at_least=1)
    # Code problems (answer_format code): their tests, read once per question (verify/code.parse_code_tests).
    # functional: tests_field holds test code (HumanEval's check(candidate), MBPP's list of asserts) and
    # entry_point_field the function it tests (inferred from MBPP-style asserts when unset). stdio: tests_field
    # holds input/output pairs, as a JSON string or a structure (APPS' input_output, CodeContests' tests,
    # LiveCodeBench's test cases); a function name (APPS' fn_name, or entry_point_field) makes them call-based.
    # answer_field, when set, is the reference solution (the STaR hint). Unset: fingerprints stay as they were.
    tests_format: str | None = setting(None, one_of=CODE_TEST_FORMATS)
    tests_field: str | None = None
    entry_point_field: str | None = None
    # answer_format math: a field that says how each question's answer of several parts compares: set | tuple (in
    # order) | single; an empty value leaves it to the format (filter.math.answer_kind, else inferred from the
    # gold). Unset: fingerprints stay as they were.
    answer_kind_field: str | None = None

    def rules(self, run: RunConfig) -> Problems:
        from cotdistill.core.paths import local_files, looks_local

        if self.answer_kind_field is not None and "math" not in (run.filter.answer_format,
                                                                  run.evaluate.answer_format):
            yield "answer_kind_field", "answer kinds are read only with answer_format: math"
        if (self.tests_format is None) != (self.tests_field is None):
            yield "tests_format" if self.tests_format is None else "tests_field", (
                "code problems need both data.tests_format (functional | stdio) and data.tests_field")
        if self.entry_point_field is not None and self.tests_format is None:
            yield "entry_point_field", "is read only for code problems: set data.tests_format and data.tests_field"
        if self.tests_format is not None and not any(run.uses_code()):
            yield "tests_format", "code tests are read only with answer_format: code"
        if looks_local(self.path) and not local_files(self.path):
            yield "path", f"no such file or folder: {self.path}"


@dataclass
class PruneConfig:
    """student.prune: the student is `student.model` cut smaller (cotdistill/stages/prune.py; Minitron, ShortGPT).
    Importance is measured on the teacher's rationales; every layer keeps the same sizes (vLLM needs them)."""

    # decoder blocks to keep (depth): the lowest Block Influence ones go
    num_layers: int | None = setting(None, at_least=1)
    # MLP channels to keep in every block (width), by activation size
    intermediate_size: int | None = setting(None, at_least=1)
    # Attention heads to keep in every block, whole key/value groups at a time (the query heads per KV head stay
    # the same), so it must be a multiple of that ratio.
    num_attention_heads: int | None = setting(None, at_least=1)
    # Instead of num_layers: drop the least important blocks one at a time until the total parameter count
    # (after any width and head pruning) is at or below this.
    parameter_budget: int | None = setting(None, at_least=1)
    # teacher rationales (finish_reason stop first) run to measure importance
    calibration_samples: int = setting(64, at_least=1)
    calibration_max_tokens: int = setting(512, at_least=1)  # each calibration text is cut to this many tokens

    def rules(self, run: RunConfig) -> Problems:
        targets = (self.num_layers, self.intermediate_size, self.num_attention_heads, self.parameter_budget)
        if all(t is None for t in targets):
            yield "", ("prunes nothing: set num_layers, intermediate_size, num_attention_heads or "
                       "parameter_budget")
        if self.parameter_budget is not None and self.num_layers is not None:
            yield "parameter_budget", ("chooses the number of layers itself: set it or student.prune.num_layers, "
                                       "not both")


@dataclass
class ModelConfig:
    """A model served by vLLM (the teacher; evaluate's models), locally, behind a server, or as Ray actors."""

    model: str  # hub id, local folder, or a model cotdistill names (models/resolve.named_model, e.g. tiny-thinker)
    engine: dict[str, Any] = field(default_factory=dict)  # vllm.LLM keyword arguments, passed through
    # A name from cotdistill.teachers.BACKENDS: vllm (a local engine) | openai (a served model) | ray (many engines
    # as Ray actors).
    backend: str = setting("vllm", one_of=BACKENDS)
    # The backend's own settings, written under its name (`openai: {base_url: ...}`, `ray: {replicas: 8}`); their
    # class is the one its module declares (teachers/<backend>.py). Unwritten: that class's defaults.
    settings: Any = field(default=None, metadata={"key_named_by": "backend"})
    # Passed to the model's chat template wherever it is rendered (generate, evaluate, score, the filter's token
    # counts, train), and to a served model in the request body: e.g. {enable_thinking: false} for Qwen3, or
    # {reasoning_effort: high}.
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    # A reasoning model on a local engine (backend vllm or ray): one of vLLM's reasoning parsers, by the name
    # `vllm serve --reasoning-parser` takes (deepseek_r1, qwen3, ...). It splits each completion into its reasoning
    # and its answer as vLLM's server does, so every backend's shards look the same. A served model is split by its
    # server.
    reasoning_parser: str | None = None
    # [opening, closing] of the reasoning block in the text, for the answer formats (which read only after it) and
    # for the openai backend's completions endpoint (which splits and budget-forces by them); default
    # ["<think>", "</think>"].
    reasoning_delimiters: list[str] | None = None

    def __post_init__(self) -> None:
        backend = BACKENDS.get(self.backend)
        if self.settings is None and backend is not None and backend.settings is not None:
            self.settings = backend.settings()

    def delimiters(self) -> tuple[str, str]:
        return tuple(self.reasoning_delimiters) if self.reasoning_delimiters else THINK_DELIMITERS

    @property
    def local_engine(self) -> bool:
        """vLLM runs here (or in Ray actors of this run): a local model, engine arguments, a reasoning parser."""
        return BACKENDS[self.backend].local_engine

    def rules(self, run: RunConfig) -> Problems:
        from cotdistill.models.resolve import named_model

        if self.reasoning_delimiters is not None and (len(self.reasoning_delimiters) != 2
                                                      or not all(d.strip() for d in self.reasoning_delimiters)):
            yield "reasoning_delimiters", ("must be [opening, closing], two non-empty strings; got "
                                           f"{self.reasoning_delimiters}")
        if self.reasoning_parser is not None and not self.local_engine:
            yield "reasoning_parser", ("splits a local engine's completions; a served model's reasoning is split by "
                                       "its server (vllm serve --reasoning-parser), or by reasoning_delimiters with "
                                       "the completions endpoint")
        elif self.reasoning_parser is not None:  # vLLM's own registry, imported only when a parser is named
            from vllm.reasoning import ReasoningParserManager

            known = ReasoningParserManager.list_registered()
            if self.reasoning_parser not in known:
                yield "reasoning_parser", f"unknown value {self.reasoning_parser!r}; vLLM knows: {', '.join(known)}"
        name = self.model  # a served model's `model` is the server's name for it, not a local path
        if self.local_engine and not named_model(name) and (name.startswith(("/", ".", "~")) or name.count("/") > 1):
            if not Path(name).expanduser().exists():  # else it would be tried as a hub id, with a puzzling error
                yield "model", f"no such local model folder: {name}"


# A teachers: entry's keys that replace generate's for that teacher alone (unset: generate's).
TEACHER_GENERATE_KEYS = ("prompt", "examples", "num_samples", "temperature", "top_p", "max_tokens",
                         "max_reasoning_tokens")


@dataclass
class TeacherEntryConfig(ModelConfig):
    """teachers: one of several teachers of a run: a model as above (backend, engine, reasoning settings), named,
    with optionally its own prompt, sampling and number of samples; each unset key is generate's."""

    name: str = ""  # the folder generate/teachers/<name>/, and the rows' teacher_name
    prompt: str | None = None
    examples: str | None = None
    num_samples: int | None = setting(None, at_least=1)
    temperature: float | None = setting(None, at_least=0.0)
    top_p: float | None = setting(None, within=(0.0, 1.0), low_open=True)
    max_tokens: int | None = setting(None, at_least=1)
    max_reasoning_tokens: int | None = setting(None, at_least=1)

    def rules(self, run: RunConfig) -> Problems:
        yield from super().rules(run)
        if not re.fullmatch(NAME_PATTERN, self.name):
            yield "name", (f"{self.name!r}: every teacher needs a name of letters, digits, '_', '.' and '-' (it "
                           "names its folder and its rows)")
            return
        own = run.for_teacher(self.name).generate
        if self.prompt or self.examples:
            yield from template_problems(own.prompt, own.examples, "prompt", "examples")
        if self.temperature is not None:  # its own temperature; generate's is checked there
            problem = greedy_problem(own.temperature, own.num_samples, self.local_engine)
            if problem:
                yield "temperature", problem


@dataclass
class ExtraModelConfig(ModelConfig):
    """evaluate.extra_models: any model scored beside the run's own (a quantized teacher, a public reference
    student, last month's student), with the student's prompt unless `prompt: teacher`."""

    prompt: str = setting("student", one_of=EXTRA_MODEL_PROMPTS)  # train.prompt, or the teacher's generate prompt


@dataclass
class StudentConfig(ModelConfig):
    """The student: a model as above, which train fine-tunes, and which may first be pruned."""

    # the student is `model` pruned as this says (written to <run>/prune/model); null: not pruned
    prune: PruneConfig | None = None


@dataclass
class StoppingRuleConfig:
    """A self-consistency stopping rule (cotdistill/verify/stopping.py), for generate.adaptive and evaluate.adaptive."""

    # a name from cotdistill.verify.stopping.STOPPING_RULES: beta (Adaptive-Consistency's Beta criterion: P(leader's
    # share > 1/2) under Beta(v1 + 1, v2 + 1) reaches `confidence`) | window (ESC: the last `window` answers agree)
    rule: str = setting("beta", one_of=STOPPING_RULES)
    confidence: float = setting(0.95, within=(0.5, 1.0), low_open=True)
    window: int = setting(4, at_least=1)


@dataclass
class AdaptiveGenerateConfig(StoppingRuleConfig):
    """generate.adaptive: sample in rounds of `round_size` per still-open question, up to generate.num_samples (N)
    in all, instead of N at once. A question closes when it has `target_correct` rationales that reach the gold
    (filter.label gold; checked as the filter checks them) or, without gold (filter.label majority), when the
    stopping rule says its majority answer is settled; else at N."""

    round_size: int = setting(4, at_least=1)  # b: samples asked per open question per round
    target_correct: int = setting(2, at_least=1)  # label gold: close once this many rationales reach the gold answer


@dataclass
class RequestCacheConfig:
    """generate.cache: the teacher's answers kept across runs (cotdistill/teachers/cache.py). A request's key is
    everything that determines its answer, so a run with other settings only misses; never part of a fingerprint."""

    enabled: bool = False
    # default ~/.cache/cotdistill/requests ($COTDISTILL_CACHE); for a cluster, a folder on a shared filesystem
    dir: str | None = None
    max_gb: float = setting(20.0, above=0)  # past this, the least recently used entries are removed
    # Also keep requests without a per-request seed (generate.seed_per_request false): a later run then reuses
    # samples it would otherwise have drawn afresh.
    unseeded: bool = False


@dataclass
class GenerateConfig:
    """generate: the teacher's N rationales per question (cotdistill/stages/generate/)."""

    prompt: str = "math_zero_shot_cot.jinja"  # a template in prompts/, or a path
    examples: str | None = None  # JSONL of few-shot examples, given to the template as `examples`
    num_samples: int = setting(30, at_least=1)  # SCoTD's N
    temperature: float = setting(1.0, at_least=0.0)
    top_p: float = setting(1.0, within=(0.0, 1.0), low_open=True)
    top_k: int = setting(-1, at_least=1, off=-1)
    max_tokens: int = setting(512, at_least=1)
    stop: list[str] = field(default_factory=list)
    # memory is bounded by one shard of questions and their rationales
    questions_per_shard: int = setting(256, at_least=1)
    # Per-request seeds make each question's samples independent of shard order and batch (on CPU this needs
    # chunked prefill off, which build_llm sets there by default).
    seed_per_request: bool = False
    # Store the teacher's top-k logprobs at every generated token (k, e.g. 20; null: off), for train.loss: kd.
    # A local engine only (backend vllm or ray); for other text, the score step computes the same columns.
    logprobs: int | None = setting(None, at_least=1)
    # Adaptive sampling (AdaptiveGenerateConfig above); null: off, every question gets N samples at once (SCoTD).
    adaptive: AdaptiveGenerateConfig | None = None
    # Budget forcing (s1): a completion still thinking after this many tokens has its reasoning closed and goes on
    # to answer, in the same text; rows record whether the budget was hit. Needs to know where the thinking ends:
    # teacher.reasoning_parser on a local engine, or reasoning_delimiters with the openai completions endpoint.
    max_reasoning_tokens: int | None = setting(None, at_least=1)
    # STaR rationalization (needs filter.label gold): a question left with no rationale reaching the gold is
    # asked once more, for `rationalize_samples` samples, with `rationalize_prompt` (which receives question,
    # choices and hint = the gold answer). Its rationales are stored with rationalized = true and the question's
    # ordinary prompt; the filter drops those that quote the hint (quotes_hint).
    rationalize: bool = False
    rationalize_prompt: str = "math_rationalize.jinja"
    rationalize_samples: int = setting(4, at_least=1)
    cache: RequestCacheConfig = field(default_factory=RequestCacheConfig)
    # The share of questions that may fail (a request refused or out of retries, or answered short) for the stage
    # to end well: above it, it stops with exit 2, naming the count and the commonest reason. 0 demands every
    # question; 1 accepts any. Either way a rerun sends the failed questions again and keeps the rest.
    max_failed_fraction: float = setting(0.01, within=(0.0, 1.0))

    def rules(self, run: RunConfig) -> Problems:
        flt = run.filter
        if self.cache.enabled and not (self.seed_per_request or self.cache.unseeded):
            yield "cache", ("keeps seeded requests only, and generate.seed_per_request is false: set it true, or "
                            "set generate.cache.unseeded true to reuse unseeded samples")
        if self.logprobs is not None and len(run.teachers) > 1:
            yield "logprobs", ("each teacher would store its own distribution, and KD from several teachers' "
                               "logprobs is not supported: remove it, and add a score: section, whose model "
                               "(train.kd.teacher's by default) scores every accepted rationale")
        elif self.logprobs is not None and not BACKENDS[run.teacher.backend].logprobs:
            yield "logprobs", ("needs a local engine (teacher.backend vllm or ray); for a served teacher's "
                               "rationales, set score: to have a local copy of the teacher score them")
        if self.adaptive is not None and flt.label == "none":
            yield "adaptive", ("closes a question on rationales that reach its label, and filter.label none "
                               "checks no answers; use label gold (target_correct) or majority (the stopping rule)")
        if self.adaptive is not None and flt.label == "gold" and self.adaptive.target_correct > self.num_samples:
            yield "adaptive.target_correct", (f"{self.adaptive.target_correct} is above generate.num_samples "
                                              f"({self.num_samples}): no question could ever close by it")
        if self.rationalize and flt.label != "gold":
            yield "rationalize", (f"gives the gold answer as a hint, and filter.label is {flt.label}: "
                                  "rationalization needs gold labels (label gold)")
        if self.rationalize and run.data.answer_field is None:
            yield "rationalize", "gives the gold answer as a hint, and data.answer_field is null"
        if self.rationalize and run.train.loss == "kd" and run.score is None:
            yield "rationalize", ("rationalized rationales carry no teacher logprobs (the teacher's distribution "
                                  "after the hint prompt would pass the hint on to the student); with train.loss kd, "
                                  "add a score: section so the teacher scores every accepted rationale after the "
                                  "student's prompt")
        for key, teacher_run in run.keyed_teacher_runs():  # each teacher that samples at generate's temperature
            if getattr(teacher_run.teacher, "temperature", None) is None:
                own = teacher_run.generate
                problem = greedy_problem(own.temperature, own.num_samples, teacher_run.teacher.local_engine)
                if problem:
                    yield "temperature", problem
            budget = teacher_run.generate.max_reasoning_tokens
            problem = BACKENDS[teacher_run.teacher.backend].budget_problem(teacher_run.teacher, key) if budget else None
            if problem:
                yield "max_reasoning_tokens", problem
        yield from template_problems(self.prompt, self.examples, "prompt", "examples")
        if self.rationalize:
            yield from template_problems(self.rationalize_prompt, self.examples, "rationalize_prompt", "examples",
                                         needs_hint=True)


@dataclass
class DifficultyConfig:
    """filter.difficulty: select questions by their pass rate, the share of the question's rationales that reach
    its label (finished, not truncated, with the label's answer, over all its rationales; gold or majority
    label). Needs a label: an error with label none."""

    # Keep questions whose pass rate lies in [min_pass_rate, max_pass_rate]; every rationale of a question
    # above the band is rejected as too_easy, below it as too_hard (whatever else it fails).
    min_pass_rate: float = setting(0.0, within=(0.0, 1.0))
    max_pass_rate: float = setting(1.0, within=(0.0, 1.0))
    # none: every question keeps up to filter.max_per_question. harder_more (needs filter.max_per_question =
    # M): a question with pass rate p keeps up to max(min_per_question, ceil(M * (1 - p))) of its survivors,
    # by the same seeded uniform draw; the others are over_max_per_question. Hard questions keep up to M, easy
    # ones few: p = 0.9 with M = 8 keeps 1, p = 0.25 keeps 6.
    weight: str = setting("none", one_of=DIFFICULTY_WEIGHTS)

    def rules(self, run: RunConfig) -> Problems:
        if self.min_pass_rate > self.max_pass_rate:
            yield "min_pass_rate", (f"{self.min_pass_rate} is above filter.difficulty.max_pass_rate "
                                    f"({self.max_pass_rate})")


@dataclass
class MathAnswerConfig:
    """filter.math, evaluate.math: the `math` answer format's settings (verify/answers.MathOptions), by
    math-verify's names where it has one; unwritten, math-verify's defaults."""

    precision: int = setting(6, within=(0, 15))  # decimal places numbers are rounded to before comparing
    # what reads an answer: latex (\boxed{}, $...$, \[...\]) and expr (plain numbers and sums: "1 000", "2,74")
    extraction: list[str] = setting(factory=lambda: list(EXTRACTION_TARGETS), one_of=EXTRACTION_TARGETS)
    strict: bool = True  # variables must match: f(x) is not f(y)
    set_relation: bool = False  # a gold set x \in [a, b] also equals the relation a \le x \le b
    # An answer of several parts (several boxed answers, an answer line listing them) against the gold: set |
    # tuple (in order) | single (several different parts are ambiguous); null: inferred from the gold ('(a, b)'
    # a tuple, '1, 2' a set). A question's own (data.answer_kind_field) comes first.
    answer_kind: str | None = setting(None, one_of=ANSWER_KINDS)

    def options(self) -> MathOptions:
        return MathOptions(precision=self.precision, extraction=tuple(self.extraction), strict=self.strict,
                           set_relation=self.set_relation, answer_kind=self.answer_kind)

    def rules(self, run: RunConfig) -> Problems:
        if not self.extraction or len(set(self.extraction)) != len(self.extraction):
            yield "extraction", f"must name latex, expr or both, once each; got {self.extraction}"


@dataclass
class AuditVerifierConfig:
    """filter.audit_verifier: a second verifier judges a seeded sample of the accepted rationales and of those
    rejected as wrong, unparseable, ambiguous or timeout, on its own; audit.md and stats.json report where it
    disagrees and estimate how many good rationales the filter throws away (stages/filter/second.py). It compares
    with the gold whatever filter.label is (with majority or none: how often the kept answers are not the gold);
    rows without a gold are undecided."""

    sample: int = setting(200, at_least=2)  # rationales judged again: half accepted, half rejected (if there are)
    # math_verify_whole_text: math-verify reads the whole rationale (its own extraction) and verifies it against
    # the gold. judge: the LLM judge of filter.judge reads the question, the gold and the rationale.
    second: str = setting("math_verify_whole_text", one_of=AUDIT_VERIFIERS)

    def rules(self, run: RunConfig) -> Problems:
        cfg = run.filter
        if run.uses_code().filtering:
            yield "second", "judges answers against a gold, and answer_format code runs programs against tests"
        elif self.second == "math_verify_whole_text" and cfg.answer_format not in ("number", "math"):
            yield "second", (f"math-verify reads numbers and formulas, and answer_format is {cfg.answer_format}: "
                             "use second: judge")
        if self.second == "judge" and cfg.judge is None:
            yield "second", "judge asks the LLM judge, and filter.judge is not set"


@dataclass
class JudgeConfig:
    """filter.judge: an LLM judge (any of the run's teachers, by name) decides whether a rationale's final answer
    is the gold where the rules cannot: their extraction is unparseable or ambiguous, and for every answer of
    answer_format judge (free-form answers; where the judge gives no verdict, exact's rules). Its reply is data:
    only a last line `VERDICT: equivalent` or `VERDICT: different` counts (teachers/judge.py). Its requests are
    greedy, seeded and always kept in the request cache (generate.cache.dir), so a rerun sends none again."""

    teacher: str | None = None  # a name from `teachers`; null: the run's one teacher
    # at most this many rationales judged per filter run (in shard order); the rest keep the rules' verdict, counted
    max_requests: int = setting(1000, at_least=0)
    prompt: str = "judge.jinja"  # a template in prompts/ (or a path), given question, gold and response
    max_tokens: int = setting(256, at_least=1)  # the judge's reply, reasoning included

    def rules(self, run: RunConfig) -> Problems:
        names = [t.name for t in run.teachers]
        if self.teacher is not None and self.teacher not in names:
            yield "teacher", (f"{self.teacher!r} is none of the teachers ({', '.join(names)})" if names else
                              "names one of several teachers, and this run has one `teacher`: leave it null")
        if run.filter.label != "gold":
            yield "teacher", f"compares answers with the gold, and filter.label is {run.filter.label}: use gold"
        from cotdistill.core.prompts import PromptError, PromptTemplate

        try:  # compiles, and renders the three variables it is given
            PromptTemplate(self.prompt).render(question="What is 2 + 3?", gold="5", response="The answer is 5.")
        except PromptError as e:
            yield "prompt", str(e)

    def model(self, run: RunConfig) -> Any:
        """The judge's model settings: the named teacher, or the run's one."""
        return next(t for t in run.teachers if t.name == self.teacher) if self.teacher else run.teacher


@dataclass
class FilterConfig:
    """filter: which rationales the student learns from (cotdistill/stages/filter/; the reasons in phases.py)."""

    # a name from cotdistill.verify.answers.ANSWER_FORMATS, or judge: free-form answers for filter.judge
    answer_format: str = setting("number", one_of=(*ANSWER_FORMATS, JUDGE_FORMAT.name))
    math: MathAnswerConfig | None = None  # answer_format math's settings (MathAnswerConfig); null: the defaults
    # gold: keep rationales that reach the gold answer. majority: no gold needed; the teacher's own majority
    # answer over a question's rationales is the label, if it wins at least majority_min_share of the votes.
    # none: answers are not checked (OpenThoughts: answer filtering did not help at scale); truncated, empty,
    # degenerate, too_long, contaminated and duplicate rationales are still dropped; is_correct is null.
    label: str = setting("gold", one_of=LABEL_MODES)
    majority_min_share: float = setting(0.5, within=(0.0, 1.0), low_open=True)
    drop_duplicates: bool = True  # exact, after whitespace normalisation
    near_duplicates: bool = True  # MinHash over word n-grams, within a question
    # estimated Jaccard similarity at or above which two are near duplicates
    near_duplicate_threshold: float = setting(0.8, within=(0.0, 1.0), low_open=True)
    near_duplicate_ngram: int = setting(3, at_least=1)
    minhash_num_perm: int = setting(64, at_least=1)
    # degenerate: share of repeated word n-grams above max_repeated_ngram_share
    repetition_ngram: int = setting(4, at_least=1)
    max_repeated_ngram_share: float = setting(0.5, within=(0.0, 1.0))
    # Longer than the student can train on: tokens of the student's chat-formatted prompt + rationale, counted
    # with its tokenizer, over train.sft.max_length (or this value). Off when neither is set.
    max_student_tokens: int | None = setting(None, at_least=1)
    decontaminate: list[DataConfig] = field(default_factory=list)  # evaluation sets; only their questions are read
    decontamination_ngram: int = setting(13, at_least=1)
    max_per_question: int | None = setting(None, at_least=1)  # SCoTD-style cap, drawn uniformly with the run's seed
    # Only the first use_samples samples of each question (sample_index below it) are judged, as if generate had
    # drawn that many: ablations over N from one pool, without sampling again. The rest are counted in stats.json
    # (unused_samples), in neither accepted nor rejected. null: every sample.
    use_samples: int | None = setting(None, at_least=1)
    min_per_question: int = setting(1, at_least=0)  # a question left with fewer is dropped whole
    num_workers: int = setting(2, at_least=1)  # worker processes, one shard each at a time
    difficulty: DifficultyConfig | None = None  # select and weight questions by pass rate (above); null: off
    # Which survivors a question keeps when it has more than max_per_question: a seeded uniform draw (random,
    # SCoTD's balance), or by length in tokens of the student's text (reasoning and answer as train joins them):
    # shortest or longest first.
    select: str = setting("random", one_of=SELECTIONS)
    # Drop a rationale longer than this many times the median length (student tokens) of its question's rationales
    # that reach the label, as overlong: overthinking. Needs a label. null: off.
    max_length_ratio: float | None = setting(None, at_least=1.0)
    # With several teachers: max_per_question applies to each teacher's rationales of a question (true), or to all
    # of them together (false).
    per_teacher: bool = False
    # Preference pairs for DPO (filter/pairs/, TRL's prompt/chosen/rejected): per question, up to
    # pairs_per_question pairs drawn with the run's seed, chosen an accepted rationale, rejected one of the same
    # question rejected for one of pair_reasons; the prompt is the student's (train.prompt).
    preference_pairs: bool = False
    pair_reasons: list[str] = setting(factory=lambda: ["wrong"], one_of=PAIR_REASONS)
    pairs_per_question: int = setting(1, at_least=1)
    # a second verifier judges a sample of the verdicts again (AuditVerifierConfig); null: off
    audit_verifier: AuditVerifierConfig | None = None
    judge: JudgeConfig | None = None  # an LLM judge where the rules cannot decide (JudgeConfig); null: off

    def math_options(self) -> MathOptions | None:
        """The math format's settings, for get_answer_format (None: not the math format, or its defaults)."""
        return self.math.options() if self.math is not None and self.answer_format == "math" else None

    def rules(self, run: RunConfig) -> Problems:
        if self.math is not None and "math" not in (self.answer_format, run.evaluate.answer_format):
            yield "math", f"sets the math format's settings, and the answer format is {self.answer_format}"
        if self.preference_pairs and not self.pair_reasons:
            yield "pair_reasons", "is empty: name the reasons a rejected rationale may have, e.g. [wrong]"
        if self.preference_pairs and self.label == "none" and set(self.pair_reasons) <= set(LABEL_PAIR_REASONS):
            yield "pair_reasons", (f"{self.pair_reasons} are verdicts of a label, and filter.label none checks no "
                                   "answers: no rationale would ever be rejected so; use label gold or majority")
        if self.preference_pairs and "overlong" in self.pair_reasons and self.max_length_ratio is None:
            yield "pair_reasons", "overlong is given only with filter.max_length_ratio, which is not set"
        if self.max_per_question is not None and self.max_per_question < self.min_per_question:
            yield "max_per_question", (f"{self.max_per_question} is below filter.min_per_question "
                                       f"({self.min_per_question})")
        if self.difficulty is not None and self.label == "none":
            yield "difficulty", ("needs a pass rate, and filter.label none checks no answers; use label gold or "
                                 "majority, or remove filter.difficulty")
        if self.difficulty is not None and self.difficulty.weight != "none" and self.max_per_question is None:
            yield "difficulty.weight", f"{self.difficulty.weight} shares out filter.max_per_question, which is not set"
        if self.max_length_ratio is not None and self.label == "none":
            yield "max_length_ratio", ("compares a rationale with its question's rationales that reach the label, and "
                                       "filter.label none checks no answers; use label gold or majority")
        if self.per_teacher and len(run.teachers) < 2:
            yield "per_teacher", "applies max_per_question to each of several teachers, and this run has one"
        if self.answer_format == "judge" and self.judge is None:
            yield "answer_format", "judge leaves every answer to the LLM judge: set filter.judge"
        if run.uses_code().filtering and run.data.tests_format is None:
            yield "answer_format", ("code runs each program against its question's tests: set data.tests_format "
                                    "and data.tests_field (or filter.label: none to check no answers)")


@dataclass
class KDConfig:
    """train.kd: the distillation loss when train.loss is kd (cotdistill/trainers/losses.py)."""

    # weight of CE on the teacher's sampled tokens; 1 - alpha goes to the KL term
    alpha: float = setting(0.5, within=(0.0, 1.0))
    temperature: float = setting(1.0, above=0)  # T: both distributions softened by T; the KL term is scaled by T^2
    # none | taid: the target moves from the student's own to the teacher's
    interpolation: str = setting("none", one_of=KD_INTERPOLATIONS)
    taid_start: float = setting(0.1, within=(0.0, 1.0))  # TAID's interpolation weight at the first step ...
    taid_end: float = setting(1.0, within=(0.0, 1.0))  # ... and at the last (linear in the step)
    # With several teachers: the one whose logprobs the student learns (the score step's model); default the first.
    teacher: str | None = None

    def rules(self, run: RunConfig) -> Problems:
        names = [t.name for t in run.teachers]
        if self.teacher is not None and self.teacher not in names:
            yield "teacher", (f"{self.teacher!r} is none of the teachers ({', '.join(names)})" if names else
                              "names one of several teachers, and this run has one `teacher`")


@dataclass
class ScoreConfig:
    """score: the teacher scores the accepted rationales in one prefill pass (prompt_logprobs), writing the
    same top-k columns generate.logprobs writes, for text that came without them (an API teacher's) or to
    compute them after the student's prompt."""

    logprobs: int = setting(20, at_least=1)  # k
    # student: after the student's prompt (train.prompt, in the teacher's chat template): the distribution the
    # student is trained to match, in the context it sees. teacher: after the teacher's own prompt (prompt_text),
    # as generate.logprobs captures it.
    context: str = setting("student", one_of=SCORE_CONTEXTS)
    model: str | None = None  # a local copy of the teacher (defaults to teacher.model; needed for a served one)
    batch_size: int = setting(64, at_least=1)  # rationales sent to the engine at once

    def rules(self, run: RunConfig) -> Problems:
        from cotdistill.core.paths import looks_local

        if self.model is None and not run.teacher.local_engine:
            yield "model", "a served teacher cannot score text here: name a local copy of it"
        if self.model is not None and looks_local(self.model) and not Path(self.model).expanduser().exists():
            yield "model", f"no such local model folder: {self.model}"


@dataclass
class TrainConfig:
    """train: TRL's SFTTrainer on the accepted rationales (cotdistill/stages/train.py)."""

    prompt: str = "student_question.jinja"  # the student's prompt: the bare question, not the teacher's
    sft: dict[str, Any] = field(default_factory=dict)  # trl.SFTConfig fields, passed through
    # How a reasoning teacher's reasoning (kept apart from its answer by the server) and answer are joined into
    # the text the student learns; rationales without separate reasoning are used as they are.
    reasoning_format: str = "<think>\n{reasoning}\n</think>\n\n{answer}"
    # sft: the teacher's text (cross-entropy on the completion). kd: α·CE + (1−α)·T²·KL to the teacher's stored
    # top-k logprobs (generate.logprobs, or the score step), settings in `kd`; the student must share the
    # teacher's vocabulary (checked before training starts).
    loss: str = setting("sft", one_of=TRAIN_LOSSES)
    # rationale: the student learns the accepted rationales. label: the question's gold answer alone, written as
    # label_format, one example per question of the generate shards (the step-by-step baseline, no teacher text).
    target: str = setting("rationale", one_of=TRAIN_TARGETS)
    label_format: str = "The answer is {answer}."
    kd: KDConfig = field(default_factory=lambda: KDConfig())
    # LoRA: peft.LoraConfig fields, passed through as is (e.g. {r: 16, lora_alpha: 32, target_modules:
    # all-linear}); null: full fine-tuning. merge_adapter: true saves the merged model, false the adapter alone
    # (evaluate merges it into the base model before serving it).
    peft: dict[str, Any] | None = None
    merge_adapter: bool = True

    def rules(self, run: RunConfig) -> Problems:
        import dataclasses

        try:
            self.reasoning_format.format(reasoning="", answer="")
        except (KeyError, IndexError, ValueError) as e:
            yield "reasoning_format", f"may use only {{reasoning}} and {{answer}}: {e!r}"
        if not isinstance(self.sft.get("max_length", 0), (int, type(None))):
            yield "sft.max_length", f"must be an integer or null, got {self.sft['max_length']!r}"
        try:
            self.label_format.format(answer="")
        except (KeyError, IndexError, ValueError) as e:
            yield "label_format", f"may use only {{answer}}: {e!r}"
        if self.target == "label" and self.loss == "kd":
            yield "target", "label trains on gold answers, which carry no teacher logprobs: use loss sft"
        if self.loss == "kd" and len(run.teachers) > 1 and run.score is None:
            yield "loss", ("kd with several teachers needs one teacher's logprobs on every rationale: add a score: "
                           "section (its model is train.kd.teacher's, or the first teacher's)")
        elif self.loss == "kd" and run.score is None and run.generate.logprobs is None:
            yield "loss", ("kd needs the teacher's logprobs: set generate.logprobs (a local teacher) or a score: "
                           "section (the teacher scores the accepted rationales)")
        yield from template_problems(self.prompt, None, "prompt", "prompt")
        if self.peft is not None:
            try:
                from peft import LoraConfig
            except ImportError:
                yield "peft", "needs the peft package (pip install peft)"
                return
            known = {f.name for f in dataclasses.fields(LoraConfig)}
            for key in sorted(set(self.peft) - known):
                yield f"peft.{key}", "not a peft.LoraConfig field"


def onpolicy_trl_class(cross_tokenizer: bool, served: bool) -> type:
    """The TRL config `onpolicy:`'s other keys are passed to: GOLD's with cross_tokenizer, server distillation's for
    a served teacher, else DistillationConfig."""
    if cross_tokenizer:
        from trl.experimental.gold import GOLDConfig

        return GOLDConfig
    if served:
        from trl.experimental.server_distillation import ServerDistillationConfig

        return ServerDistillationConfig
    from trl import DistillationConfig

    return DistillationConfig


def same_vocabulary(first: str, second: str) -> bool:
    """Whether two models' tokenizers map every token to the same id (folders or hub ids, as from_pretrained takes)."""
    from transformers import AutoTokenizer

    from cotdistill.models.resolve import resolve_model

    a, b = (AutoTokenizer.from_pretrained(resolve_model(name)) for name in (first, second))
    return a.get_vocab() == b.get_vocab()


@dataclass
class OnPolicyConfig:
    """onpolicy: on-policy distillation (cotdistill/stages/onpolicy.py): the student samples its own completions to
    the run's training questions (its prompt, chat template and chat_template_kwargs) and learns the teacher's
    next-token distribution on them, by TRL's DistillationTrainer (a local teacher), its server-distillation trainer
    (a served teacher's top-k logprobs) or GOLD (cross_tokenizer). Every key besides those below is a field of that
    trainer's TRL config, passed through as it is and checked at load (beta: 0 forward KL, 1 reverse KL, between
    them the generalized JSD; max_completion_length, temperature, max_steps, learning_rate, ...)."""

    # The teacher: a name from `teachers`; null: the run's teacher (the first of several). A local model (its
    # backend runs a local engine) is loaded in this process; a served one (backend openai, a vLLM server) scores
    # the student's tokens by its top-k prompt logprobs, with openai's api_key_env and retries.
    teacher: str | None = None
    # student: start from train's student (train/model/); base_student: from the untrained student (the pruned one
    # with student.prune), without train.
    start: str = setting("student", one_of=ONPOLICY_STARTS)
    # The teacher's tokenizer is not the student's: TRL's GOLD trainer (experimental) aligns the two; refused at
    # load when both tokenizers are the same. A local teacher only.
    cross_tokenizer: bool = False
    # Questions of data held out of training (the last ones): the divergence on them is measured before and after
    # training with the trainer's own loss, and written to stats.json. 0: none.
    held_out: int = setting(0, at_least=0)
    # a field of the trainer's TRL config (trl.DistillationConfig; ServerDistillationConfig for a served teacher,
    # GOLDConfig with cross_tokenizer), passed through as it is and checked at load: beta, max_completion_length,
    # temperature, max_steps, learning_rate, per_device_train_batch_size, save_steps, ...
    trl: dict[str, Any] = field(default_factory=dict, metadata={"other_keys": True})

    def teacher_model(self, run: RunConfig) -> ModelConfig:
        return next(t for t in run.teachers if t.name == self.teacher) if self.teacher else run.teacher

    def rules(self, run: RunConfig) -> Problems:
        import dataclasses

        names = [t.name for t in run.teachers]
        if self.teacher is not None and self.teacher not in names:
            yield "teacher", (f"{self.teacher!r} is none of the teachers ({', '.join(names)})" if names else
                              "names one of several teachers, and this run has one `teacher`: leave it null")
            return
        teacher = self.teacher_model(run)
        served = not teacher.local_engine
        if served and not hasattr(teacher.settings, "servers"):
            yield "teacher", f"backend {teacher.backend} is neither a local model nor a served one"
            return
        if served and self.cross_tokenizer:
            yield "cross_tokenizer", ("GOLD needs the teacher's whole distribution, and a served teacher gives its "
                                      "top-k logprobs only: use a local copy of the teacher")
            return
        cls = onpolicy_trl_class(self.cross_tokenizer, served)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in self.trl:
            if key not in fields:
                why = (" (TRL's DistillationTrainer samples every completion from the student: lmbda is 1; GOLD, "
                       "with cross_tokenizer, takes lmbda)" if key == "lmbda" else "")
                yield key, f"unknown {cls.__name__} field{why}"
                return
            default = fields[key].default
            if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(self.trl[key], str):
                yield key, (f"must be a number, got {self.trl[key]!r} (YAML reads 1e-4 as text: write 1.0e-4)")
                return
        for key in ("teacher_model_name_or_path", "teacher_model_server_url", "teacher_tokenizer_name_or_path",
                    "output_dir"):
            if key in self.trl:
                yield key, "is set by cotdistill (onpolicy.teacher, and the run's folder)"
                return
        extra = {"teacher_model_server_url": "http://127.0.0.1:1"} if served else {}
        try:  # TRL's own checks (beta in [0, 1], the server's top-k rules, ...), now rather than after train
            cls(**{"report_to": "none", "bf16": False, **extra, **self.trl, "output_dir": "/nonexistent"})
        except (TypeError, ValueError) as e:
            yield "", f"{cls.__name__} refuses these settings: {e}"
            return
        if teacher.local_engine and Path(run.student.model).expanduser().is_dir() and \
                Path(teacher.model).expanduser().is_dir():  # else checked before the stage starts (preflight)
            problem = self.tokenizer_problem(teacher.model, run.student.model)
            if problem:
                yield "cross_tokenizer", problem

    def tokenizer_problem(self, teacher: str, student: str) -> str | None:
        """What is wrong with cross_tokenizer for these two models' tokenizers (at load, or before the stage starts
        when a model is not a folder yet); None when it is right."""
        same = same_vocabulary(teacher, student)
        if self.cross_tokenizer and same:
            return (f"the teacher {teacher} and the student {student} have the same tokenizer: set it false "
                    "(TRL's DistillationTrainer)")
        if not self.cross_tokenizer and not same:
            return (f"the teacher {teacher} and the student {student} have different tokenizers: set "
                    "onpolicy.cross_tokenizer: true (GOLD)")
        return None


@dataclass
class AdaptiveEvalConfig(StoppingRuleConfig):
    """evaluate.adaptive: adaptive self-consistency, reported beside the fixed-K maj@K of the same samples. Per
    question, the K samples already drawn are walked in order, `round_size` at a time, until the stopping rule
    says the vote is settled (or all K are used); that vote is the adaptive answer. The samples are i.i.d., so
    this is what sampling round by round would have given, and one pass of K serves both. ESC as published
    uses round_size = window."""

    round_size: int = setting(1, at_least=1)  # samples per round; the rule is asked after each round


@dataclass
class SpeedConfig:
    """evaluate.speed: each model's tokens/s, measured alike for every model so that the same weights give the same
    figure within noise: after one warm-up batch, `repeats` batches of the first `prompts` test questions, each
    generating exactly `max_tokens` tokens (the end-of-sequence token ignored), greedily, n = 1. The report gives
    the median and the range over the repeats."""

    prompts: int = setting(8, at_least=1)
    max_tokens: int = setting(32, at_least=1)
    repeats: int = setting(3, at_least=1)


@dataclass
class EvaluateConfig:
    """evaluate: every model on the test questions, side by side (cotdistill/stages/evaluate/)."""

    data: DataConfig | None = None  # the test questions
    # the run's own (EVAL_MODELS), or with teachers: any teacher by its name (`teacher` is the first)
    models: list[str] = field(default_factory=lambda: ["teacher", "base_student", "student"])
    # K: one request of K samples per question gives maj@k and pass@k for every k <= K
    num_samples: int = setting(16, at_least=1)
    temperature: float = setting(0.7, at_least=0.0)
    top_p: float = setting(1.0, within=(0.0, 1.0), low_open=True)
    max_tokens: int = setting(512, at_least=1)
    greedy: bool = True  # also one greedy (temperature 0) completion per question
    answer_format: str | None = setting(None, one_of=ANSWER_FORMATS)  # defaults to filter.answer_format
    math: MathAnswerConfig | None = None  # answer_format math's settings; defaults to filter.math
    # Stored generations scored without running a model: a name -> a folder of Sample shards, e.g.
    # {teacher_test: runs/teacher-on-test/generate/samples}.
    stored: dict[str, str] = field(default_factory=dict)
    # Any other model scored exactly like the run's own, each under its name, with its own key (adding one scores
    # only it): a name -> model settings (model, engine, backend, chat_template_kwargs, ..., and prompt: student
    # | teacher), e.g. {teacher_int8: {model: org/teacher-W8A8, prompt: teacher}}.
    extra_models: dict[str, ExtraModelConfig] = field(default_factory=dict)
    # maj@k: exact when there are at most this many k-subsets, else this many draws
    maj_draws: int = setting(1000, at_least=1)
    bootstrap_resamples: int = setting(1000, at_least=1)
    # Every model is compared with each of these, question by question (paired bootstrap intervals of the
    # differences in maj@k and greedy accuracy): metrics.json's vs_teacher, vs_base (base_student) and
    # vs_<name> for any other model scored here (an extra model, a stored set). The teacher's comparison also
    # gives the share of its accuracy kept, agreement, speed and size.
    compare_to: list[str] = field(default_factory=lambda: ["teacher", "base_student"])
    max_reasoning_tokens: int | None = setting(None, at_least=1)  # budget forcing, as generate.max_reasoning_tokens
    adaptive: AdaptiveEvalConfig | None = None  # adaptive self-consistency beside maj@K (above); null: off
    speed: SpeedConfig | None = field(default_factory=SpeedConfig)  # tokens/s per model (above); null: not measured

    def math_options(self, run: RunConfig) -> MathOptions | None:
        """The math format's settings evaluate scores with (evaluate.math, else filter.math), None when its
        format is not math."""
        if (self.answer_format or run.filter.answer_format) != "math":
            return None
        settings = self.math or run.filter.math
        return settings.options() if settings is not None else None

    def rules(self, run: RunConfig) -> Problems:
        if self.math is not None and (self.answer_format or run.filter.answer_format) != "math":
            yield "math", ("sets the math format's settings, and evaluate's answer format is "
                           f"{self.answer_format or run.filter.answer_format}")
        known = (*EVAL_MODELS, *(t.name for t in run.teachers))
        for name in self.models:
            if name not in known:
                yield "models", f"unknown value {name!r}; known: {', '.join(sorted(known))}"
        if "student_dpo" in self.models and run.dpo is None:
            yield "models", "student_dpo is the dpo stage's model, and there is no dpo: section"
        if "student_onpolicy" in self.models and run.onpolicy is None:
            yield "models", "student_onpolicy is the onpolicy stage's model, and there is no onpolicy: section"
        scored = {*self.models, *self.stored, *self.extra_models}
        for name in self.compare_to:
            if name not in scored and name not in ("teacher", "base_student"):
                yield "compare_to", f"{name!r} is not a model scored here; known: {', '.join(sorted(scored))}"
        clash = sorted(set(self.stored) & set(self.models))
        if clash:
            yield "stored", f"{clash[0]!r} is also in evaluate.models; name it differently"
        for name in self.extra_models:
            if name in EVAL_MODELS or name in self.stored:
                yield f"extra_models.{name}", "is the name of a run's model or of a stored set; name it differently"
            elif not re.fullmatch(NAME_PATTERN, name):
                yield f"extra_models.{name}", "names files in evaluate/: letters, digits, '_', '.' and '-' only"
        if self.temperature == 0 and self.num_samples > 1:
            yield "temperature", ("0 samples greedily, and vLLM refuses n > 1 with greedy sampling: K samples "
                                  "need a temperature above 0 (evaluate.greedy adds the greedy answer)")
        if run.uses_code().evaluating and self.data is not None and self.data.tests_format is None:
            yield "answer_format", ("code runs each program against its question's tests: set "
                                    "evaluate.data.tests_format and evaluate.data.tests_field")
        if self.max_reasoning_tokens is not None:
            students = {"base_student", "student_dpo", "student_onpolicy"}
            models = [(name, model) for name, model in (("teacher", run.teacher), ("student", run.student))
                      if name in self.models or (name == "student" and students & set(self.models))]
            models += [(f"evaluate.extra_models.{name}", m) for name, m in self.extra_models.items()]
            for key, model in models:
                problem = BACKENDS[model.backend].budget_problem(model, key)
                if problem:
                    yield "max_reasoning_tokens", problem
        for name, path in self.stored.items():
            if not Path(path).is_dir():
                yield f"stored.{name}", f"no such folder of Sample shards: {path}"


@dataclass
class SandboxConfig:
    """Where and how model-written programs run (answer_format code; cotdistill/verify/sandbox.py)."""

    # local: this machine's sandbox (namespaces, limits; needs CAP_SYS_ADMIN). piston: a remote service speaking
    # Piston's API at `url` (no program runs here).
    executor: str = setting("local", one_of=SANDBOX_EXECUTORS)
    url: str | None = None
    workers: int = setting(2, at_least=1)  # sandboxes at once, per filter worker; memory: workers x memory_mb
    timeout_s: float = setting(10.0, above=0)  # wall clock per run (a functional problem's tests; one stdin)
    cpu_s: int = setting(10, at_least=1)
    # memory of the whole sandbox, all its processes together (a cgroup), and each process's address space
    memory_mb: int = setting(1024, at_least=32)
    # Run without namespaces where the OS allows none (no network or filesystem isolation): only on purpose.
    allow_unisolated: bool = False

    def rules(self, run: RunConfig) -> Problems:
        if self.executor == "piston" and not self.url:
            yield "url", "the piston executor needs the service's url (http://host:2000)"
        if any(run.uses_code()) and self.executor == "local" and not self.allow_unisolated:
            from cotdistill.verify.sandbox import isolation_problem

            problem = isolation_problem()  # one program run in the sandbox (a few tens of ms), only for code
            if problem:
                yield "", (f"model-written programs cannot be isolated here ({problem}); run where namespaces "
                           "are allowed (root or CAP_SYS_ADMIN), use sandbox.executor: piston, or set "
                           "sandbox.allow_unisolated: true to run them with resource limits only (no network or "
                           "filesystem isolation)")

    def limits(self) -> Any:
        """The sandbox's Limits (part of the code verdicts' fingerprints: a longer timeout can pass more)."""
        from cotdistill.verify.sandbox import Limits

        return Limits(wall_s=self.timeout_s, cpu_s=self.cpu_s, memory_mb=self.memory_mb)
