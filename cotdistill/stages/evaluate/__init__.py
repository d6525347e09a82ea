"""evaluate: models x test questions -> greedy accuracy, self-consistency curves, pass@k and cost, side by side.

    cotdistill evaluate pipelines/demo.yaml

For each model in `evaluate.models` (`teacher`, `base_student`, `student` = the trained model, `student_dpo` =
it after the dpo stage, `student_onpolicy` = the onpolicy stage's), on the test questions: one greedy request
(temperature 0) and one request of K samples at `evaluate.temperature`. From that single pass, maj@k for every
k <= K is the expected accuracy of a vote over random k-subsets, and pass@k is Chen et al.'s unbiased estimator
(cotdistill/stages/evaluate/metrics.py). The teacher is asked with its own generate prompt, the students with the
student prompt they were trained on. `evaluate.stored` scores existing Sample shards (e.g. a teacher's generations
on the test split) without running a model.

With `evaluate.adaptive`, adaptive self-consistency (Adaptive-Consistency's Beta rule, or ESC's window; see
cotdistill/verify/stopping.py) is scored on the same K samples: per question, the samples are walked in the order they
were drawn, a round of `round_size` at a time, until the rule says the vote is settled or all K are used. The K
samples are i.i.d., so stopping partway through them is exactly what drawing one round at a time and stopping
would have given; one pass of K per question thus serves the fixed-K figures and the adaptive ones alike.

Outputs in runs/<run>/evaluate/: <model>.parquet (every completion, its parsed answer, the votes),
<model>.cost.json, metrics.json, and (cotdistill/stages/evaluate/report.py) report.md, accuracy_vs_k.png and
accuracy_vs_tokens.png. A rerun skips the models already done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotdistill.config.run import RunConfig
from cotdistill.config.sections import AdaptiveEvalConfig, ModelConfig
from cotdistill.core.fields import ConfigError
from cotdistill.core.fingerprints import data_settings, digest, file_digest, folder_digest, make_fingerprint, upstream
from cotdistill.core.paths import DPO, EVALUATE, ONPOLICY, PRUNE, TRAIN
from cotdistill.core.paths import RunPaths
from cotdistill.core.prompts import PromptTemplate
from cotdistill.core.records import EVAL_SCHEMA, Question, rows_to_table
from cotdistill.core.shards import (
    read_json, read_json_or_none, write_json_atomic, write_parquet_atomic, write_text_atomic,
)
from cotdistill.models.adapters import is_adapter, merge_adapter
from cotdistill.models.footprint import model_footprint
from cotdistill.questions.sources import QuestionSource
from cotdistill.stages.base import Stage
from cotdistill.stages.evaluate.metrics import bootstrap_ci, paired_bootstrap_ci
from cotdistill.stages.evaluate.report import format_table, report_markdown, write_plots
from cotdistill.stages.evaluate.scoring import (
    answer_format, evaluate_model, question_maj_at_k, stored_rows, summarize_model,
)
from cotdistill.teachers import build_teacher, teacher_settings
from cotdistill.verify.answers import ANSWER_RULES, THINK_DELIMITERS, AnswerFormat, delimiters_of, format_settings
from cotdistill.verify.judging import CodeChecks, sandbox_settings

logger = logging.getLogger(__name__)


@dataclass
class EvalModel:
    name: str
    model: ModelConfig
    model_path: str | None  # a trained or pruned model's folder, in place of model.model
    template: PromptTemplate
    stage: str | None = None  # the stage that wrote model_path ("train", "prune"): its fingerprint keys the weights
    # Where its reasoning ends in its text: its own reasoning_delimiters, or for the trained student those that
    # train.reasoning_format wrote around the teacher's reasoning, else <think> and </think>.
    delimiters: tuple[str, str] = THINK_DELIMITERS


def eval_models(config: RunConfig) -> list[EvalModel]:
    paths, pruned, student = config.paths, config.student.prune is not None, config.student
    trained = tuple(student.reasoning_delimiters or ()) or delimiters_of(config.train.reasoning_format)
    runs = {run.teacher_name: run for run in config.teacher_runs()}  # {None: config} for a single teacher
    first = next(iter(runs.values()))

    def teacher(name: str, run: RunConfig) -> EvalModel:  # asked with its own generate prompt
        return EvalModel(name, run.teacher, None, PromptTemplate(run.generate.prompt, run.generate.examples),
                         delimiters=run.teacher.delimiters())

    known = {
        "teacher": lambda: teacher("teacher", first),  # with several: the first
        **{name: (lambda name=name: teacher(name, runs[name])) for name in runs if name is not None},
        # With student.prune, the base student is the pruned model, untrained.
        "base_student": lambda: EvalModel(
            "base_student", student, str(paths.pruned_model) if pruned else None,
            PromptTemplate(config.train.prompt), "prune" if pruned else None, student.delimiters()),
        "student": lambda: EvalModel("student", student, str(paths.trained_model), PromptTemplate(config.train.prompt),
                                     "train", trained or student.delimiters()),
        # the SFT student after the dpo stage (preference pairs): the same prompt and delimiters
        "student_dpo": lambda: EvalModel("student_dpo", student, str(paths.dpo_model),
                                         PromptTemplate(config.train.prompt), "dpo", trained or student.delimiters()),
        # the student after the onpolicy stage (its own samples, the teacher's distribution): the same prompt
        "student_onpolicy": lambda: EvalModel("student_onpolicy", student, str(paths.onpolicy_model),
                                              PromptTemplate(config.train.prompt), "onpolicy",
                                              trained or student.delimiters()),
    }
    teacher_prompt = PromptTemplate(first.generate.prompt, first.generate.examples)
    extra = [EvalModel(name, m, None, teacher_prompt if m.prompt == "teacher" else PromptTemplate(config.train.prompt),
                       delimiters=m.delimiters()) for name, m in config.evaluate.extra_models.items()]
    return [known[m]() for m in config.evaluate.models] + extra  # names checked at load (config.EVAL_MODELS)


def servable(m: EvalModel, paths: RunPaths) -> str | None:
    """The folder to serve for `m`: its model_path, or for a LoRA adapter (train.merge_adapter: false) the
    adapter merged into its base model, once, under evaluate/<name>.merged/ (vLLM then serves an ordinary model)."""
    if m.model_path is None:
        return None
    path = Path(m.model_path)
    if is_adapter(path):
        source = file_digest(path / "adapter_config.json") + folder_digest(path, "adapter_model*")
        return merge_adapter(path, paths.merged_adapter(m.name), source)
    if not (path / "config.json").exists():
        stage = m.stage or "train"
        raise RuntimeError(f"evaluate: no model in {path}; run `cotdistill {stage}` first")
    return str(path)


def model_key(config: RunConfig, m: EvalModel, fmt: AnswerFormat) -> str:
    """What one model's per-question rows depend on: its weights (the trained student by train's fingerprint),
    engine, prompt, sampling, answer format, the test questions, and evaluate.adaptive when set (the rows hold
    its columns; left out when off, so the keys of runs from before it stay the same)."""
    ev = config.evaluate
    weights = upstream(config.paths.stage(m.stage)) if m.stage else None
    return digest({
        "model": teacher_settings(m.model, weights),
        "prompt": file_digest(m.template.path), "examples": digest(m.template.examples),
        "sampling": {k: getattr(ev, k) for k in ("num_samples", "temperature", "top_p", "max_tokens", "greedy")},
        **answer_settings(fmt.name, m.delimiters), **format_settings(fmt), "seed": config.seed,
        "data": data_settings(ev.data) if ev.data else None,
        **({"adaptive": vars(ev.adaptive)} if ev.adaptive is not None else {}),
        **({"max_reasoning_tokens": ev.max_reasoning_tokens} if ev.max_reasoning_tokens is not None else {}),
        **code_settings(config, fmt),
    })


def answer_settings(name: str, delimiters: tuple[str, str]) -> dict[str, Any]:
    """What reading an answer depends on: the format, the rules (answers.ANSWER_RULES: a change scores every model
    again) and the reasoning delimiters when not <think>...</think>."""
    settings: dict[str, Any] = {"answer_format": name, "answer_rules": ANSWER_RULES}
    if tuple(delimiters) != THINK_DELIMITERS:
        settings["reasoning_delimiters"] = list(delimiters)
    return settings


def stored_key(path: str, fmt: AnswerFormat, adaptive: AdaptiveEvalConfig | None = None,
               code: dict[str, Any] | None = None) -> str:
    return digest({"path": path, "contents": folder_digest(path, "*.parquet"),
                   **answer_settings(fmt.name, fmt.delimiters), **format_settings(fmt),
                   **({"adaptive": vars(adaptive)} if adaptive is not None else {}), **(code or {})})


def code_settings(config: RunConfig, fmt: AnswerFormat) -> dict[str, Any]:
    """For answer_format code, what the verdicts depend on besides the completions and the test data (in every
    model's key already): the sandbox's limits. Nothing for other formats, so their keys stay as they were."""
    return {"sandbox": sandbox_settings(config.sandbox)} if fmt.name == "code" else {}


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """Every model's key (model_key, stored_key) under `models`, and the settings of the metrics."""
    ev = config.evaluate
    return make_fingerprint({"models": current_keys(config), "maj_draws": ev.maj_draws,
                             "bootstrap_resamples": ev.bootstrap_resamples, "seed": config.seed,
                             # only when changed: runs from before it keep their fingerprints
                             **({"compare_to": ev.compare_to} if ev.compare_to != ["teacher", "base_student"]
                                else {})})


def current_keys(config: RunConfig) -> dict[str, str]:
    fmt = answer_format(config, config.teacher.delimiters())
    keys = {m.name: model_key(config, m, fmt) for m in eval_models(config)}  # each with its own delimiters
    if config.evaluate.stored:  # stored generations are judged against the test data's tests, for code
        code = code_settings(config, fmt)
        if code and config.evaluate.data is not None:
            code["tests"] = data_settings(config.evaluate.data)
        keys.update({name: stored_key(path, fmt, config.evaluate.adaptive, code)
                     for name, path in config.evaluate.stored.items()})
    return keys


def _is_done(paths: RunPaths, name: str, key: str) -> bool:
    cost = read_json_or_none(paths.eval_cost(name))
    return paths.eval_rows(name).exists() and cost is not None and cost.get("fingerprint") == key


def evaluate_models(config: RunConfig) -> dict[str, Any]:
    """The stage's work: every model not yet scored under its key, then metrics.json, report.md and the plots."""
    import pyarrow.parquet as pq

    ev, paths = config.evaluate, config.paths
    models = eval_models(config)
    fmt = answer_format(config, config.teacher.delimiters())  # stored shards are a teacher's generations
    names = [m.name for m in models] + list(ev.stored)
    if not names:
        raise ValueError("evaluate: no models and no stored generations to evaluate")
    keys = current_keys(config)
    questions: list[Question] | None = None
    code: CodeChecks | None = None
    for m in models:
        if _is_done(paths, m.name, keys[m.name]):
            logger.info("evaluate: %s is up to date, skipping", m.name)
            continue
        if paths.eval_cost(m.name).exists():
            logger.info("evaluate: %s changed (model, settings or test data): evaluating it again", m.name)
        if ev.data is None:
            raise ValueError("evaluate.data is not set: name the test questions to evaluate on")
        model_path = servable(m, paths)
        if questions is None:
            source = QuestionSource(ev.data)
            questions = list(source.questions())
            code = source.code_checks(config.sandbox) if fmt.name == "code" else None
        teacher = build_teacher(m.model, config.seed, model_path)
        try:
            rows, cost = evaluate_model(teacher, questions, m.template, config, m.name, m.model, m.delimiters, code)
        finally:
            teacher.close()
        cost.update(model_footprint(model_path or m.model.model), fingerprint=keys[m.name])
        write_parquet_atomic(rows_to_table(rows, EVAL_SCHEMA), paths.eval_rows(m.name))
        write_json_atomic(cost, paths.eval_cost(m.name))  # last: marks the model done
    for name, path in ev.stored.items():
        if not _is_done(paths, name, keys[name]):
            if fmt.name == "code" and code is None:
                if ev.data is None:
                    raise ValueError("evaluate.data is not set: code answers need the test questions' tests")
                code = QuestionSource(ev.data).code_checks(config.sandbox)
            rows, cost = stored_rows(Path(path), name, fmt, ev.adaptive, code)
            write_parquet_atomic(rows_to_table(rows, EVAL_SCHEMA), paths.eval_rows(name))
            write_json_atomic({**cost, "parameters": None, "weights_mb": None, "weights_format": None,
                               "fingerprint": keys[name]},
                              paths.eval_cost(name))

    all_rows = {name: pq.read_table(paths.eval_rows(name)).to_pylist() for name in names}
    metrics = {name: summarize_model(rows, read_json(paths.eval_cost(name)), config)
               for name, rows in all_rows.items()}
    add_comparisons(metrics, all_rows, fmt, config)
    for m in models:  # a trained student's cost beside its accuracy
        if m.stage in TRAINING_STAGES:
            metrics[m.name]["training"] = training_cost(m.stage, paths.stage(m.stage) / "stats.json")
    result = {"temperature": ev.temperature, "answer_format": fmt.name,
              "tie_rule": "a tie among t answers scores 1/t when the gold is among them",
              "adaptive": vars(ev.adaptive) if ev.adaptive is not None else None, "models": metrics}
    plots = write_plots(metrics, paths.evaluate)
    write_text_atomic(report_markdown(config, metrics, plots), paths.evaluate / "report.md")
    write_json_atomic(result, paths.metrics)  # last: the stage is done
    logger.info("evaluate: wrote %s and report.md", paths.metrics)
    return result


TRAINING_STAGES = ("train", "dpo", "onpolicy")


def training_cost(stage: str, stats_file: Path) -> dict[str, Any]:
    """What the stage that made a student cost (its stats.json): steps, wall time and, where it samples, the student
    tokens sampled and the teacher tokens scored."""
    stats = read_json_or_none(stats_file) or {}
    wall = stats.get("train_wall_s", stats.get("train_runtime_s"))
    return {"stage": stage, "steps": stats.get("global_steps"), "wall_s": wall,
            "student_tokens_sampled": stats.get("student_tokens_sampled"),
            "teacher_tokens_scored": stats.get("teacher_tokens_scored")}


def add_comparisons(metrics: dict[str, dict[str, Any]], all_rows: dict[str, list[dict[str, Any]]],
                    fmt: AnswerFormat, config: RunConfig) -> None:
    """Each model beside the teacher (how much of its accuracy it keeps, how often it agrees, its speed and size)
    and beside the base student (what training gained). Every ratio and difference of accuracies comes with a
    paired bootstrap interval over the same questions; the speed ratio with its range over the repeats; sizes are
    exact ratios, of parameters and of bytes on disk, each named."""
    ev = config.evaluate

    def paired(a: list[float], b: list[float], statistic: str) -> list[float] | None:
        ci = paired_bootstrap_ci(a, b, statistic, seed=config.seed, resamples=ev.bootstrap_resamples)
        return [round(x, 4) for x in ci] if ci is not None else None

    def scores(name: str, k: int, ids: list[str]) -> tuple[list[float], list[float] | None]:
        by_id = {r["question_id"]: r for r in all_rows[name]}
        maj = [question_maj_at_k(by_id[q], k, config) for q in ids]
        greedy = ([float(bool(by_id[q].get("greedy_correct"))) for q in ids]
                  if metrics[name].get("greedy_accuracy") is not None else None)
        return maj, greedy

    for base_name in ev.compare_to:
        prefix = {"teacher": "vs_teacher", "base_student": "vs_base"}.get(base_name, f"vs_{base_name}")
        if base_name not in metrics:
            continue
        base = metrics[base_name]
        base_ids = {r["question_id"] for r in all_rows[base_name]}
        for name, m in metrics.items():
            if name == base_name:
                continue
            ids = [r["question_id"] for r in all_rows[name] if r["question_id"] in base_ids]
            k = min(m["k"], base["k"])
            if not ids or not k:
                continue
            maj, greedy = scores(name, k, ids)
            base_maj, base_greedy = scores(base_name, k, ids)
            comparison: dict[str, Any] = {"k": k, "questions": len(ids),
                                          "maj_difference": round(sum(maj) / len(ids) - sum(base_maj) / len(ids), 4),
                                          "maj_difference_ci": paired(maj, base_maj, "difference")}
            if greedy is not None and base_greedy is not None:
                comparison["greedy_difference"] = round((sum(greedy) - sum(base_greedy)) / len(ids), 4)
                comparison["greedy_difference_ci"] = paired(greedy, base_greedy, "difference")
            if base_name == "teacher":
                comparison["maj_share"] = round(sum(maj) / sum(base_maj), 4) if sum(base_maj) else None
                comparison["maj_share_ci"] = paired(maj, base_maj, "ratio") if sum(base_maj) else None
                votes = {r["question_id"]: r["voted_answer"] for r in all_rows[base_name]}
                own = {r["question_id"]: r["voted_answer"] for r in all_rows[name]}
                agree = [float(own[q] is not None and votes[q] is not None and (own[q] == votes[q]
                                                                                 or fmt.equal(own[q], votes[q])))
                         for q in ids]
                comparison["agreement"] = round(sum(agree) / len(agree), 4)
                comparison["agreement_ci"] = [round(x, 4) for x in bootstrap_ci(
                    agree, seed=config.seed, resamples=ev.bootstrap_resamples)]
                if m.get("tokens_per_s_range") and base.get("tokens_per_s_range"):
                    (low, high), (base_low, base_high) = m["tokens_per_s_range"], base["tokens_per_s_range"]
                    comparison["speed"] = round(m["tokens_per_s"] / base["tokens_per_s"], 3)
                    comparison["speed_range"] = [round(low / base_high, 3), round(high / base_low, 3)]
                if m.get("parameters") and base.get("parameters"):
                    comparison["parameters_share"] = round(m["parameters"] / base["parameters"], 4)
                if m.get("weights_mb") and base.get("weights_mb"):
                    comparison["bytes_share"] = round(m["weights_mb"] / base["weights_mb"], 4)
            m[prefix] = comparison


def models_scored(config: RunConfig) -> bool:
    """Every model scored with today's settings and weights (a retrained student is evaluated again)."""
    paths = config.paths
    return all(_is_done(paths, name, key) for name, key in current_keys(config).items())


def needs(config: RunConfig) -> tuple:
    """The trained models it scores: train's student, dpo's, onpolicy's, and the pruned base student."""
    models = set(config.evaluate.models)
    return (*((PRUNE,) if config.student.prune is not None and models & {"base_student", "student", "student_dpo"}
              else ()),
            *((TRAIN,) if models & {"student", "student_dpo"} else ()), *((DPO,) if "student_dpo" in models else ()),
            *((ONPOLICY,) if "student_onpolicy" in models else ()))


def preflight(config: RunConfig) -> None:
    """The test questions read now: a bad row fails before any engine starts."""
    ev = config.evaluate
    if ev.models or ev.extra_models:
        if ev.data is None:
            raise ConfigError("evaluate.data is not set: name the test questions to evaluate on")
        QuestionSource(ev.data)


STAGE = Stage(
    outputs=EVALUATE, help="greedy and self-consistency accuracy per model -> runs/<run>/evaluate/metrics.json",
    needs=needs, fingerprint=fingerprint, outputs_complete=models_scored, work=evaluate_models, preflight=preflight,
    on_change="keep",  # each model's cost file holds its key: only the models that changed are scored again
    show=lambda summary: format_table(summary["models"]),
    example="evaluate.num_samples=8",
)
