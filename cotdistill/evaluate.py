"""evaluate: models x test questions -> greedy accuracy, self-consistency curves, pass@k and cost, side by side.

    cotdistill evaluate pipelines/demo.yaml

For each model in `evaluate.models` (`teacher`, `base_student`, `student` = the trained model, `student_dpo` =
it after the dpo stage), on the test questions: one greedy request (temperature 0) and one request of K samples
at `evaluate.temperature`. From that single pass, maj@k for every k <= K is the expected accuracy of a vote over
random k-subsets, and pass@k is Chen et al.'s unbiased estimator (cotdistill/metrics.py). The teacher is asked
with its own generate prompt, the students with the student prompt they were trained on. `evaluate.stored` scores
existing Sample shards (e.g. a teacher's generations on the test split) without running a model.

With `evaluate.adaptive`, adaptive self-consistency (Adaptive-Consistency's Beta rule, or ESC's window; see
cotdistill/stopping.py) is scored on the same K samples: per question, the samples are walked in the order they
were drawn, a round of `round_size` at a time, until the rule says the vote is settled or all K are used. The K
samples are i.i.d., so stopping partway through them is exactly what drawing one round at a time and stopping
would have given; one pass of K per question thus serves the fixed-K figures and the adaptive ones alike.

Outputs in runs/<run>/evaluate/: <model>.parquet (every completion, its parsed answer, the votes),
<model>.cost.json, metrics.json, and (cotdistill/report.py) report.md, accuracy_vs_k.png and
accuracy_vs_tokens.png. A rerun skips the models already done.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotdistill.answers import (
    ANSWER_RULES, THINK_DELIMITERS, AnswerFormat, Extraction, delimiters_of, get_answer_format, group_equivalent,
)
from cotdistill.config import AdaptiveEvalConfig, ModelConfig, RunConfig
from cotdistill.fingerprints import data_settings, digest, file_digest, folder_digest, make_fingerprint, upstream
from cotdistill.judging import CodeChecks, sandbox_settings
from cotdistill.metrics import (
    accuracy, agreement, bootstrap_ci, expected_maj_at_k, majority_vote, pass_at_k, question_seed,
)
from cotdistill.models import is_adapter, merge_adapter, model_footprint
from cotdistill.paths import RunPaths
from cotdistill.prompts import PromptTemplate
from cotdistill.records import EVAL_SCHEMA, Question, rows_to_table
from cotdistill.report import report_markdown, write_plots
from cotdistill.shards import (
    list_shards, read_json, read_json_or_none, write_json_atomic, write_parquet_atomic, write_text_atomic,
)
from cotdistill.sources import QuestionSource
from cotdistill.stages import Stage
from cotdistill.stopping import should_stop
from cotdistill.teachers import (
    Completion, Finished, Sampling, Teacher, TeacherRequest, build_teacher, prompt_too_long, render_prompt,
    teacher_settings,
)
from cotdistill.teachers.reasoning import split_by_delimiters

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
        **answer_settings(fmt.name, m.delimiters), "seed": config.seed,
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
                   **answer_settings(fmt.name, fmt.delimiters),
                   **({"adaptive": vars(adaptive)} if adaptive is not None else {}), **(code or {})})


def code_settings(config: RunConfig, fmt: AnswerFormat) -> dict[str, Any]:
    """For answer_format code, what the verdicts depend on besides the completions and the test data (in every
    model's key already): the sandbox's limits. Nothing for other formats, so their keys stay as they were."""
    return {"sandbox": sandbox_settings(config.sandbox)} if fmt.name == "code" else {}


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """Every model's key (model_key, stored_key) under `models`, and the settings of the metrics."""
    ev = config.evaluate
    return make_fingerprint({"models": current_keys(config), "maj_draws": ev.maj_draws,
                             "bootstrap_resamples": ev.bootstrap_resamples, "seed": config.seed})


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


def answer_format(config: RunConfig, delimiters: tuple[str, str] | None = None) -> AnswerFormat:
    return get_answer_format(config.evaluate.answer_format or config.filter.answer_format, delimiters)


def _is_done(paths: RunPaths, name: str, key: str) -> bool:
    cost = read_json_or_none(paths.eval_cost(name))
    return paths.eval_rows(name).exists() and cost is not None and cost.get("fingerprint") == key


def adaptive_stop(answers: list[str | None], adaptive: AdaptiveEvalConfig) -> tuple[int, str | None]:
    """Adaptive self-consistency on one question's samples, in the order drawn: (samples used, voted answer).

    Rounds of `round_size`; after each, stopping.should_stop is asked about the answers so far; at K it stops
    anyway. `answers` are already grouped (answers.group_equivalent maps each to its first-seen equivalent, so
    grouping a prefix gives that prefix of the grouped list). The answer is the majority vote of the samples
    used (unparseable ones do not vote; a tie, possible only at K, goes to the answer seen first)."""
    used = 0
    while used < len(answers):
        used = min(len(answers), used + adaptive.round_size)
        if should_stop(answers[:used], adaptive.rule, adaptive.confidence, adaptive.window):
            break
    return used, majority_vote(answers[:used])[0]


def read_answer(c: Completion, q: Question, fmt: AnswerFormat) -> tuple[str | None, str, Extraction]:
    """One completion's (reasoning, answer text, extraction): a parser's split as it came, else the text split at
    the format's delimiters. An answer left empty by reasoning that never closed is unfinished_reasoning."""
    if c.reasoning is None:
        reasoning, answer = split_by_delimiters(c.text, fmt.delimiters)
        return reasoning, answer, fmt.extract(c.text, q.choices)
    if not c.text.strip():
        why = "unfinished_reasoning" if c.finish_reason == "length" else "unparseable"
        return c.reasoning, c.text, Extraction(None, why)
    return c.reasoning, c.text, fmt.extract(c.text, q.choices)


def score_row(row: dict[str, Any], q: Question, completions: list[Completion], fmt: AnswerFormat,
              adaptive: AdaptiveEvalConfig | None = None, code: CodeChecks | None = None) -> dict[str, Any]:
    """Parse, vote and check one question's sampled completions (shared by live and stored generations), and
    keep per sample what thinking cost: its reasoning and tokens, its finish reason, why it has no answer.

    Equivalent answers (\\frac{1}{2}, 0.5) are stored as one answer, the first-seen form, so that the votes
    here and maj@k recomputed from the Parquet both count them together. With `adaptive`, also the adaptive
    self-consistency columns (adaptive_stop).

    With `code` (answer_format code), each sample's program is run against the question's tests: it is correct
    when it passes, its answer is its execution class (programs that did the same on the test inputs are one
    answer: AlphaCode's clustering), and the vote is the largest class."""
    read = [read_answer(c, q, fmt) for c in completions]
    if code is not None:
        verdicts = code.verdicts(q.question_id, [c.text for c in completions], fmt)
        answers = [v.answer for v in verdicts]
        correct = [v.passed for v in verdicts]
        passes = dict(zip(answers, correct))  # one class, one outcome on the tests
        is_correct = lambda answer: answer is not None and passes.get(answer, False)  # noqa: E731
        read = [(reasoning, text, Extraction(v.answer, None if v.answer is not None else v.reason))
                for (reasoning, text, _), v in zip(read, verdicts)]
        row["sample_verdicts"] = [v.describe() for v in verdicts]
    else:
        answers = group_equivalent([extraction.answer for _, _, extraction in read], fmt)
        correct = [fmt.is_correct(a, q.gold_answer) for a in answers]
        is_correct = lambda answer: fmt.is_correct(answer, q.gold_answer)  # noqa: E731
    voted, votes = majority_vote(answers)
    row.update(
        samples=[answer for _, answer, _ in read], sample_answers=answers,
        sample_correct=correct,
        sample_tokens=sum(c.completion_tokens for c in completions),
        sample_reasonings=[reasoning for reasoning, _, _ in read],
        sample_answer_reasons=[extraction.reason for _, _, extraction in read],
        sample_finish_reasons=[c.finish_reason for c in completions],
        sample_completion_tokens=[c.completion_tokens for c in completions],
        sample_reasoning_tokens=[c.reasoning_tokens for c in completions],
        votes=[{"answer": a, "count": c} for a, c in votes], voted_answer=voted,
        voted_correct=is_correct(voted),
    )
    if adaptive is not None:
        used, answer = adaptive_stop(answers, adaptive)
        row.update(adaptive_samples=used, adaptive_answer=answer, adaptive_correct=is_correct(answer))
    return row


def evaluate_model(teacher: Teacher, questions: list[Question], template: PromptTemplate, config: RunConfig,
                   name: str, model: ModelConfig | None = None, delimiters: tuple[str, str] = THINK_DELIMITERS,
                   code: CodeChecks | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The core: one model (any teacher backend) on the questions -> per-question rows and cost figures. `model`:
    its settings (chat_template_kwargs); `delimiters`: where its reasoning ends in its text; `code`: the sandbox's
    checks, for answer_format code."""
    ev = config.evaluate
    fmt = answer_format(config, delimiters)
    kwargs = model.chat_template_kwargs if model is not None else {}
    tokenizer, context = teacher.tokenizer(), teacher.max_model_len()
    greedy_requests, sampled_requests, rows = [], [], []
    for q in questions:
        messages = template.render(question=q.question, choices=q.choices)
        text, ids = render_prompt(tokenizer, messages, kwargs) if tokenizer is not None else ("", None)
        row = {"model": name, "question_id": q.question_id, "question": q.question, "gold_answer": q.gold_answer,
               "skip_reason": prompt_too_long(len(ids), context) if ids is not None else None}
        if row["skip_reason"] is None:
            room = min(ev.max_tokens, context - len(ids)) if context and ids is not None else ev.max_tokens
            greedy_requests.append(TeacherRequest(q.question_id, messages, text, ids, Sampling(
                n=1, temperature=0.0, max_tokens=room, max_reasoning_tokens=ev.max_reasoning_tokens)))
            sampled_requests.append(TeacherRequest(q.question_id, messages, text, ids, Sampling(
                n=ev.num_samples, temperature=ev.temperature, top_p=ev.top_p, max_tokens=room,
                max_reasoning_tokens=ev.max_reasoning_tokens)))
        rows.append(row)

    def answers(requests: list[TeacherRequest]) -> tuple[dict[str, Finished], float]:
        started = time.perf_counter()
        done = {f.key: f for f in teacher.generate(requests)}
        for f in done.values():
            if f.error:  # a served model that failed after its retries: no answer, which scores as wrong
                logger.warning("evaluate: %s on question %s failed: %s", name, f.key, f.error)
        return done, time.perf_counter() - started

    if greedy_requests:  # one tiny request first: the engine's one-time start-up costs stay out of tokens/s
        warm = greedy_requests[0]
        list(teacher.generate([TeacherRequest(warm.key, warm.messages, warm.prompt_text, warm.prompt_token_ids,
                                              Sampling(n=1, temperature=0.0, max_tokens=1))]))
    greedy, greedy_seconds = answers(greedy_requests) if ev.greedy else ({}, 0.0)
    sampled, sampled_seconds = answers(sampled_requests)

    for q, row in zip(questions, rows):
        if row["skip_reason"] is not None:  # counts as wrong, with its reason in the row
            score_row(row, q, [], fmt, ev.adaptive, code).update(greedy_correct=False if ev.greedy else None,
                                                                 greedy_tokens=0)
            continue
        s = sampled[q.question_id]
        count_reasoning(s.completions, fmt.delimiters, tokenizer)
        score_row(row, q, s.completions, fmt, ev.adaptive, code)
        g = greedy.get(q.question_id)
        if g is not None:
            greedy_text = g.completions[0].text if g.completions else ""
            greedy_answer = read_answer(g.completions[0], q, fmt)[2].answer if g.completions else None
            greedy_correct = fmt.is_correct(greedy_answer, q.gold_answer)
            if code is not None:  # its program's verdict on the tests; its answer, its execution class
                (verdict,) = code.verdicts(q.question_id, [greedy_text], fmt)
                greedy_answer, greedy_correct = verdict.answer, verdict.passed
                row["greedy_verdict"] = verdict.describe()
            row.update(greedy_completion=greedy_text, greedy_answer=greedy_answer, greedy_correct=greedy_correct,
                       greedy_tokens=sum(c.completion_tokens for c in g.completions))
    cost = {
        "greedy_seconds": round(greedy_seconds, 3) if ev.greedy else None,
        "sampled_seconds": round(sampled_seconds, 3),
        "greedy_tokens": sum(r.get("greedy_tokens") or 0 for r in rows),
        "sampled_tokens": sum(r["sample_tokens"] for r in rows),
        "failed_requests": sum(bool(f.error) for f in [*greedy.values(), *sampled.values()]),
    }
    return rows, cost


def count_reasoning(completions: list[Completion], delimiters: tuple[str, str], tokenizer: Any) -> None:
    """The reasoning tokens of completions not split by a parser: their reasoning at the delimiters, counted with
    the model's tokenizer (0 when they wrote none; unknown without a tokenizer)."""
    for c in completions:
        if c.reasoning_tokens is None and c.reasoning is None and tokenizer is not None:
            reasoning = split_by_delimiters(c.text, delimiters)[0]
            c.reasoning_tokens = len(tokenizer(reasoning, add_special_tokens=False)["input_ids"]) if reasoning else 0


def stored_rows(path: Path, name: str, fmt: AnswerFormat, adaptive: AdaptiveEvalConfig | None = None,
                code: CodeChecks | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score Sample shards someone already generated: the same rows, with no greedy completion.

    Rationalized rows (generate.rationalize) are left out, with a count in the log: they were sampled with the
    gold answer given as a hint, not from the question. Shards of generate.adaptive are refused, saying so: a
    question's sampling stopped on its answers (at target_correct, the last sample is correct by construction),
    so maj@k over them would be biased, and their numbers of samples differ."""
    import pyarrow.parquet as pq

    shards = list_shards(path)
    if not shards:
        raise RuntimeError(f"evaluate.stored.{name}: no Parquet shards in {path}")
    groups: dict[str, list[dict[str, Any]]] = {}
    hinted = adaptive_rows = 0
    for shard in shards:
        columns = ["question_id", "question", "gold_answer", "choices", "rationale", "completion_tokens",
                   "sample_index"]
        present = set(pq.read_schema(shard).names)
        # absent from older shards
        columns += [c for c in ("rationalized", "round", "finish_reason", "reasoning", "reasoning_tokens")
                    if c in present]
        for r in pq.read_table(shard, columns=columns).to_pylist():
            if r.get("rationalized"):
                hinted += 1
                continue
            adaptive_rows += r.get("round") is not None
            groups.setdefault(r["question_id"], []).append(r)
    if hinted:
        logger.info("evaluate.stored.%s: left out %d rationalized rows (sampled with the gold as a hint)", name,
                    hinted)
    rows = []
    for qid, samples in groups.items():
        samples.sort(key=lambda r: r["sample_index"])
        first = samples[0]
        q = Question(qid, first["question"], first["gold_answer"], first["choices"])
        row = {"model": name, "question_id": qid, "question": q.question, "gold_answer": q.gold_answer,
               "skip_reason": None}
        completions = [Completion(text=r["rationale"] or "", finish_reason=r.get("finish_reason") or "stop",
                                  completion_tokens=r["completion_tokens"], reasoning=r.get("reasoning"),
                                  reasoning_tokens=r.get("reasoning_tokens")) for r in samples]
        rows.append(score_row(row, q, completions, fmt, adaptive, code))
    sizes = {len(r["samples"]) for r in rows}
    if adaptive_rows:
        raise RuntimeError(f"evaluate.stored.{name}: {path} was generated with generate.adaptive: each question's "
                           f"sampling stopped on its answers ({min(sizes)} to {max(sizes)} samples), which would "
                           "bias maj@k; evaluate the teacher live (evaluate.models, with evaluate.adaptive for "
                           "adaptive self-consistency)")
    if len(sizes) > 1:
        raise RuntimeError(f"evaluate.stored.{name}: questions have different sample counts {sorted(sizes)}")
    return rows, {"greedy_seconds": None, "sampled_seconds": None, "greedy_tokens": 0,
                  "sampled_tokens": sum(r["sample_tokens"] for r in rows)}


def summarize_model(rows: list[dict[str, Any]], cost: dict[str, Any], config: RunConfig) -> dict[str, Any]:
    """Every figure of one model, with 95% bootstrap intervals over questions for the headline ones."""
    ev = config.evaluate
    n = len(rows)
    k_max = min((len(r["samples"]) for r in rows if r["skip_reason"] is None), default=0)
    ci = lambda scores: bootstrap_ci(scores, seed=config.seed, resamples=ev.bootstrap_resamples)  # noqa: E731
    # Per question, for k = 1..K: the expected maj@k and pass@k (0 for a question with no samples).
    maj_by_k = [[expected_maj_at_k(r["sample_answers"], r["sample_correct"], k,
                                   seed=question_seed(config.seed, r["question_id"], k), draws=ev.maj_draws)
                 if r["samples"] else 0.0 for r in rows] for k in range(1, k_max + 1)]
    pass_by_k = [[pass_at_k(len(r["samples"]), sum(r["sample_correct"]), k) if r["samples"] else 0.0
                  for r in rows] for k in range(1, k_max + 1)]
    maj_curve = [sum(scores) / n for scores in maj_by_k]
    pass_curve = [sum(scores) / n for scores in pass_by_k]
    sampled_tokens = cost["sampled_tokens"]
    tokens_per_sample = sampled_tokens / max(1, sum(len(r["samples"]) for r in rows))
    metrics: dict[str, Any] = {
        "questions": n,
        "skipped": sum(r["skip_reason"] is not None for r in rows),
        "k": k_max,
        "greedy_accuracy": None, "greedy_accuracy_ci": None,
        "maj_at_k": maj_curve, "pass_at_k": pass_curve,
        "maj@1": maj_curve[0] if maj_curve else 0.0, "maj_at_1_ci": ci(maj_by_k[0] if maj_by_k else []),
        f"maj@{k_max}": maj_curve[-1] if maj_curve else 0.0, "maj_at_K_ci": ci(maj_by_k[-1] if maj_by_k else []),
        f"pass@{k_max}": pass_curve[-1] if pass_curve else 0.0,
        "pass_at_K_ci": ci(pass_by_k[-1] if pass_by_k else []),
        "tokens_per_sample": round(tokens_per_sample, 1),
        "sampled_tokens_per_question": round(sampled_tokens / n, 1) if n else 0.0,
        **cost,
    }
    if ev.greedy and all(r.get("greedy_correct") is not None for r in rows) and cost["greedy_seconds"] is not None:
        greedy = [float(r["greedy_correct"]) for r in rows]
        metrics["greedy_accuracy"] = accuracy(greedy)
        metrics["greedy_accuracy_ci"] = ci(greedy)
        metrics["greedy_tokens_per_question"] = round(cost["greedy_tokens"] / n, 1) if n else 0.0
    if ev.adaptive is not None:
        metrics.update(adaptive_metrics(rows, maj_by_k[-1] if maj_by_k else [0.0] * n, k_max, ci))
    metrics.update(thinking_metrics(rows, ev.max_reasoning_tokens))
    if any(r.get("sample_verdicts") for r in rows):
        metrics["code"] = code_metrics(rows)
    seconds = [s for s in (cost.get("greedy_seconds"), cost.get("sampled_seconds")) if s is not None]
    if seconds and sum(seconds) > 0:
        total_tokens = cost["greedy_tokens"] + sampled_tokens
        metrics["tokens_per_s"] = round(total_tokens / sum(seconds), 2)
        metrics["seconds_per_question"] = round(sum(seconds) / n, 3) if n else None
    else:
        metrics["tokens_per_s"] = metrics["seconds_per_question"] = None
    return metrics


def code_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """answer_format code: why the sampled programs failed (CODE_REASONS, counted over every sample), and how the
    votes were taken: by execution class, or by pass / fail where no calls could be recorded."""
    verdicts = [v for r in rows for v in r.get("sample_verdicts") or []]
    answers = [a for r in rows for a in r.get("sample_answers") or []]
    return {
        "programs": len(verdicts),
        "passed": sum(v == "passed" for v in verdicts),
        "failures": dict(Counter(v.split(" ", 1)[0] for v in verdicts if v != "passed").most_common()),
        "questions_voting_pass_fail": sum(any(a in ("pass", "fail") for a in r.get("sample_answers") or [])
                                          for r in rows),
        "execution_classes_per_question": round(
            sum(len({a for a in r.get("sample_answers") or [] if a is not None}) for r in rows) / max(1, len(rows)),
            2) if answers else 0.0,
    }


def thinking_metrics(rows: list[dict[str, Any]], budget: int | None = None) -> dict[str, Any]:
    """What thinking costs, over every sampled completion: how many have no answer (and why), how many were cut
    off by max_tokens and the share of those cut inside their reasoning, the mean reasoning and answer tokens
    (over completions whose reasoning tokens are known), the share that hit the reasoning budget, and accuracy
    against completion length (length_bins), with the lengths of right and wrong ones."""
    samples = [s for r in rows for s in zip(r.get("sample_answer_reasons") or [], r.get("sample_finish_reasons") or [],
                                            r.get("sample_completion_tokens") or [],
                                            r.get("sample_reasoning_tokens") or [], r.get("sample_correct") or [])]
    n = len(samples)
    truncated = [s for s in samples if s[1] == "length"]
    known = [s for s in samples if s[3] is not None]
    low, edges = length_bins([s[2] for s in samples])
    by_bin = [[s for s in samples if (edges[b - 1] if b else low) <= s[2] < edges[b]] for b in range(len(edges))]
    mean = lambda values: round(sum(values) / len(values), 2) if values else None  # noqa: E731
    out: dict[str, Any] = {
        "no_answer_rate": sum(s[0] is not None for s in samples) / n if n else None,
        "no_answer_reasons": dict(Counter(s[0] for s in samples if s[0] is not None)),
        "truncation_rate": len(truncated) / n if n else None,
        "truncated_in_reasoning": (sum(s[0] == "unfinished_reasoning" for s in truncated) / len(truncated)
                                   if truncated else None),
        "reasoning_tokens_mean": mean([s[3] for s in known]),
        "answer_tokens_mean": mean([s[2] - s[3] for s in known]),
        "accuracy_by_length": {
            "low": low, "edges": edges, "geometric": bool(edges) and edges[-1] > 8 * low,
            "samples": [len(b) for b in by_bin],
            "accuracy": [sum(bool(s[4]) for s in b) / len(b) if b else None for b in by_bin],
            "correct": [sum(bool(s[4]) for s in b) for b in by_bin],
            "wrong": [sum(not s[4] for s in b) for b in by_bin],
        },
    }
    if budget is not None:
        out["reasoning_budget_hit_rate"] = sum(s[3] >= budget for s in known) / len(known) if known else None
    return out


def length_bins(lengths: list[int], bins: int = 8) -> tuple[int, list[int]]:
    """Bins over the completion lengths seen: (the lowest length, each bin's upper edge, exclusive). Equal widths,
    or, when the longest run over 8 times the shortest (reasoning models' long tails), equal ratios."""
    if not lengths:
        return 0, []
    low, high = max(1, min(lengths)), max(lengths) + 1
    if high > 8 * low:
        edges = [math.ceil(low * (high / low) ** ((b + 1) / bins)) for b in range(bins)]
    else:
        step = math.ceil((high - low) / bins)
        edges = [min(high, low + step * (b + 1)) for b in range(bins)]
    return low, sorted(set(edges))


def adaptive_metrics(rows: list[dict[str, Any]], maj_at_K: list[float], k_max: int,
                     ci: Any) -> dict[str, Any]:
    """Adaptive self-consistency beside maj@K: its accuracy (a skipped question counts as wrong, as everywhere)
    with a bootstrap interval, the samples it used per sampled question and their share of K, and its gap to
    maj@K (adaptive minus maj@K, with a paired interval over questions)."""
    correct = [float(bool(r.get("adaptive_correct"))) for r in rows]
    used = [r["adaptive_samples"] or 0 for r in rows if r["skip_reason"] is None]
    mean = sum(used) / len(used) if used else 0.0
    gap = [c - m for c, m in zip(correct, maj_at_K)]
    return {
        "adaptive_accuracy": accuracy(correct), "adaptive_accuracy_ci": ci(correct),
        "adaptive_samples_mean": mean, "adaptive_sample_ratio": mean / k_max if k_max else None,
        "adaptive_gap_to_maj_at_K": sum(gap) / len(gap) if gap else 0.0, "adaptive_gap_ci": ci(gap),
    }


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
            code = CodeChecks(ev.data, config.sandbox, source) if fmt.name == "code" else None
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
                code = CodeChecks(ev.data, config.sandbox)
            rows, cost = stored_rows(Path(path), name, fmt, ev.adaptive, code)
            write_parquet_atomic(rows_to_table(rows, EVAL_SCHEMA), paths.eval_rows(name))
            write_json_atomic({**cost, "parameters": None, "weights_mb": None, "weights_format": None,
                               "fingerprint": keys[name]},
                              paths.eval_cost(name))

    all_rows = {name: pq.read_table(paths.eval_rows(name)).to_pylist() for name in names}
    metrics = {name: summarize_model(rows, read_json(paths.eval_cost(name)), config)
               for name, rows in all_rows.items()}
    add_comparisons(metrics, all_rows, fmt)
    result = {"temperature": ev.temperature, "answer_format": fmt.name,
              "tie_rule": "a tie among t answers scores 1/t when the gold is among them",
              "adaptive": vars(ev.adaptive) if ev.adaptive is not None else None, "models": metrics}
    write_text_atomic(report_markdown(config, metrics), paths.evaluate / "report.md")
    write_plots(metrics, paths.evaluate)
    write_json_atomic(result, paths.metrics)  # last: the stage is done
    logger.info("evaluate: wrote %s and report.md", paths.metrics)
    return result


def add_comparisons(metrics: dict[str, dict[str, Any]], all_rows: dict[str, list[dict[str, Any]]],
                    fmt: AnswerFormat) -> None:
    """Teacher-student agreement, and how much of the teacher's accuracy each student keeps at what cost."""
    teacher = "teacher" if "teacher" in metrics else None
    if teacher is None:
        return
    teacher_votes = {r["question_id"]: r["voted_answer"] for r in all_rows[teacher]}
    t = metrics[teacher]
    for name, m in metrics.items():
        if name == teacher:
            continue
        rows = [r for r in all_rows[name] if r["question_id"] in teacher_votes]
        m["agreement_with_teacher"] = agreement([r["voted_answer"] for r in rows],
                                                [teacher_votes[r["question_id"]] for r in rows], fmt.equal)
        k = min(m["k"], t["k"])
        if k:
            m["share_of_teacher_maj"] = (round(m["maj_at_k"][k - 1] / t["maj_at_k"][k - 1], 4)
                                         if t["maj_at_k"][k - 1] else None)
        if m.get("tokens_per_s") and t.get("tokens_per_s"):
            m["speed_vs_teacher"] = round(m["tokens_per_s"] / t["tokens_per_s"], 2)
        if m.get("parameters") and t.get("parameters"):
            m["size_vs_teacher"] = round(t["parameters"] / m["parameters"], 2)


def models_scored(config: RunConfig) -> bool:
    """Every model scored with today's settings and weights (a retrained student is evaluated again)."""
    paths = config.paths
    return all(_is_done(paths, name, key) for name, key in current_keys(config).items())


STAGE = Stage(
    name="evaluate", help="greedy and self-consistency accuracy per model -> runs/<run>/evaluate/metrics.json",
    fingerprint=fingerprint, outputs_complete=models_scored, work=evaluate_models, summary_file="metrics.json",
    on_change="keep",  # each model's cost file holds its key: only the models that changed are scored again
)
run, is_complete = STAGE.run, STAGE.is_complete
