"""Scoring one model on the test questions: its completions read, voted and checked, then summed into its figures.
Pure over what the teacher returns (the stage, __init__.py, runs the models and writes the files).

    rows, cost = evaluate_model(teacher, questions, template, config, name, model, delimiters)
    metrics = summarize_model(rows, cost, config)      # greedy, maj@k and pass@k curves, intervals, cost
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cotdistill.config.run import RunConfig
from cotdistill.config.sections import AdaptiveEvalConfig, ModelConfig
from cotdistill.core.prompts import PromptTemplate
from cotdistill.core.records import Question
from cotdistill.core.shards import list_shards
from cotdistill.stages.evaluate.metrics import (
    accuracy, bootstrap_ci, expected_maj_at_k, majority_vote, pass_at_k, question_seed,
)
from cotdistill.teachers.base import (
    Completion, Finished, Sampling, Teacher, TeacherRequest, prompt_too_long, render_prompt,
)
from cotdistill.teachers.reasoning import split_by_delimiters
from cotdistill.verify.answers import THINK_DELIMITERS, AnswerFormat, Extraction, get_answer_format, group_equivalent
from cotdistill.verify.judging import CodeChecks
from cotdistill.verify.stopping import should_stop


def answer_format(config: RunConfig, delimiters: tuple[str, str] | None = None) -> AnswerFormat:
    """evaluate.answer_format (filter.answer_format when unset), with evaluate.math's settings (filter.math's when
    unset), reading answers after `delimiters`."""
    return get_answer_format(config.evaluate.answer_format or config.filter.answer_format, delimiters,
                             config.evaluate.math_options(config))


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

logger = logging.getLogger(__name__)


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
    fmt = fmt.with_answer_kind(q.answer_kind)  # the question's own (data.answer_kind_field), if it says
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

    def answers(requests: list[TeacherRequest], what: str) -> tuple[dict[str, Finished], float]:
        from tqdm import tqdm

        started, tokens = time.perf_counter(), 0
        done = {}
        with tqdm(total=len(requests), desc=f"evaluate {name} ({what})", unit="question") as bar:
            for f in teacher.generate(requests):
                done[f.key] = f
                tokens += sum(c.completion_tokens for c in f.completions)
                bar.set_postfix_str(f"{tokens / max(time.perf_counter() - started, 1e-9):,.0f} tok/s", refresh=False)
                bar.update(1)
        for f in done.values():
            if f.error:  # a served model that failed after its retries: no answer, which scores as wrong
                logger.warning("evaluate: %s on question %s failed: %s", name, f.key, f.error)
        return done, time.perf_counter() - started

    speed = measure_speed(teacher, greedy_requests, ev.speed, name) if ev.speed is not None else {}
    greedy, greedy_seconds = answers(greedy_requests, "greedy") if ev.greedy else ({}, 0.0)
    sampled, sampled_seconds = answers(sampled_requests, f"{ev.num_samples} samples")

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
            own = fmt.with_answer_kind(q.answer_kind)
            greedy_answer = read_answer(g.completions[0], q, own)[2].answer if g.completions else None
            greedy_correct = own.is_correct(greedy_answer, q.gold_answer)
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
        **speed,
    }
    return rows, cost


def measure_speed(teacher: Teacher, requests: list[TeacherRequest], speed: Any, name: str) -> dict[str, Any]:
    """evaluate.speed: tokens/s over `speed.repeats` identical batches after a warm-up one (SpeedConfig says how),
    as {"tokens_per_s": median, "tokens_per_s_range": [min, max], "speed_batch": ...}; empty when it cannot be
    measured (no request fits the context, or a served model refuses ignore_eos)."""
    batch = [TeacherRequest(f"{r.key}/speed", r.messages, r.prompt_text, r.prompt_token_ids,
                            Sampling(n=1, temperature=0.0, max_tokens=speed.max_tokens, ignore_eos=True))
             for r in requests[:speed.prompts]]
    if not batch:
        return {}
    rates = []
    for repeat in range(speed.repeats + 1):  # the first is the warm-up: one-time costs stay out
        started = time.perf_counter()
        done = list(teacher.generate(batch))
        seconds = time.perf_counter() - started
        if any(f.error for f in done):
            logger.warning("evaluate: %s: tokens/s not measured (%s)", name, next(f.error for f in done if f.error))
            return {}
        if repeat:
            rates.append(sum(c.completion_tokens for f in done for c in f.completions) / seconds)
    rates.sort()
    return {"tokens_per_s": round(rates[len(rates) // 2], 1), "tokens_per_s_range": [round(rates[0], 1),
                                                                                    round(rates[-1], 1)],
            "speed_batch": {"prompts": len(batch), "max_tokens": speed.max_tokens, "repeats": speed.repeats}}


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


def question_maj_at_k(row: dict[str, Any], k: int, config: RunConfig) -> float:
    """One question's maj@k, as summarize_model computes it (the same seeded draws)."""
    if not row["samples"]:
        return 0.0
    return expected_maj_at_k(row["sample_answers"], row["sample_correct"], k,
                             seed=question_seed(config.seed, row["question_id"], k), draws=config.evaluate.maj_draws)


def summarize_model(rows: list[dict[str, Any]], cost: dict[str, Any], config: RunConfig) -> dict[str, Any]:
    """Every figure of one model, with 95% bootstrap intervals over questions for the headline ones."""
    ev = config.evaluate
    n = len(rows)
    k_max = min((len(r["samples"]) for r in rows if r["skip_reason"] is None), default=0)
    ci = lambda scores: bootstrap_ci(scores, seed=config.seed, resamples=ev.bootstrap_resamples)  # noqa: E731
    # Per question, for k = 1..K: the expected maj@k and pass@k (0 for a question with no samples).
    maj_by_k = [[question_maj_at_k(r, k, config) for r in rows] for k in range(1, k_max + 1)]
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
    # tokens/s: evaluate.speed's measurement (in cost, above), the same batches for every model; None without it
    metrics["tokens_per_s"] = cost.get("tokens_per_s")
    metrics["seconds_per_question"] = round(sum(seconds) / n, 3) if n and seconds and sum(seconds) > 0 else None
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
