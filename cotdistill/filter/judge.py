"""Judging one question's rationales: every check in order, the label (gold or the teacher's majority), and the
per-question selection (duplicates, near duplicates, the per-question cap). Pure: rows in, verdicts out."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from cotdistill.answers import AnswerFormat, group_equivalent
from cotdistill.config import FilterConfig, TrainConfig
from cotdistill.filter.checks import is_degenerate, normalize_whitespace, question_ngrams, quotes_hint
from cotdistill.filter.dedup import near_duplicate_flags
from cotdistill.filter.difficulty import band_reason, pass_rate, question_cap
from cotdistill.records import FILTERED_SCHEMA, SAMPLE_SCHEMA, Sample, student_text

REASONS = (  # in the order they are applied; too_easy and too_hard (filter.difficulty) name whole questions
    "contaminated", "too_easy", "too_hard", "truncated", "empty", "degenerate", "too_long", "unparseable",
    "ambiguous", "timeout", "no_majority", "wrong", "quotes_hint", "duplicate", "near_duplicate",
    "over_max_per_question", "under_min_per_question",
)


def reaches_gold(correct: bool | None, finish_reason: str) -> bool:
    """Whether a rationale counts as reaching the gold: its answer is the gold and it finished (a truncated one
    never finished, though its last number may be recorded as correct), as the majority vote counts only
    finished ones. The pass rate counts these; generate.adaptive closes a question on them."""
    return bool(correct) and finish_reason != "length"


def rationale_reaches_gold(rationale: str | None, finish_reason: str, gold: str | None, choices: list[str] | None,
                           fmt: AnswerFormat) -> bool:
    """The filter's verdict on one rationale, alone: does it reach the gold? (judge_question's own steps: an
    empty text is never checked; the answer is fmt.extract's, compared by fmt.is_correct.) generate.adaptive and
    generate.rationalize ask this, so their verdict and the filter's cannot disagree."""
    text = rationale or ""
    if not text.strip() or gold is None:
        return False
    return reaches_gold(fmt.is_correct(fmt.extract(text, choices).answer, gold), finish_reason)


def rationale_vote(rationale: str | None, finish_reason: str, choices: list[str] | None,
                   fmt: AnswerFormat) -> str | None:
    """One rationale's vote in the filter's majority (label majority): a finished, non-empty rationale's answer;
    None (no vote) otherwise, or when it has no answer. generate.adaptive's stopping rule counts these."""
    text = rationale or ""
    if finish_reason == "length" or not text.strip():
        return None
    return fmt.extract(text, choices).answer


# --- judging one question -------------------------------------------------------------------------------------


@dataclass
class FilterContext:
    """What judging needs besides the rows: the settings and the things built once per worker."""

    cfg: FilterConfig
    fmt: AnswerFormat
    seed: int
    contamination: frozenset[int] = frozenset()
    count_student_tokens: Callable[[list[str], list[str], list[list[str] | None]], list[int]] | None = None
    max_student_tokens: int | None = None
    reasoning_format: str = TrainConfig.reasoning_format  # train.reasoning_format (its default here)


@dataclass
class QuestionRows:
    """One question's rationales, as parallel lists (cheap to build from Parquet columns)."""

    question_id: str
    question: str
    gold_answer: str | None
    choices: list[str] | None
    sample_indices: list[int]
    rationales: list[str | None]
    finish_reasons: list[str]
    student_texts: list[str] | None = None  # what the student trains on, when not the rationale (reasoning)
    rationalized: list[bool | None] | None = None  # generate.rationalize: written with the gold as a hint


@dataclass
class Verdicts:
    extracted_answer: list[str | None]
    is_correct: list[bool | None]
    filter_reason: list[str | None]
    pass_rate: float | None = None  # the question's (None: no label, or contaminated)


def judge_question(rows: QuestionRows, ctx: FilterContext) -> Verdicts:
    """The verdict on each of one question's rationales; filter_reason None means accepted."""
    cfg, fmt = ctx.cfg, ctx.fmt
    n = len(rows.rationales)
    extracted: list[str | None] = [None] * n
    correct: list[bool | None] = [None] * n
    reason: list[str | None] = [None] * n
    order = sorted(range(n), key=lambda i: rows.sample_indices[i])  # the lowest index is the one kept
    hinted = [bool(r) for r in rows.rationalized] if rows.rationalized is not None else [False] * n
    ordinary = [i for i in order if not hinted[i]]

    if ctx.contamination and question_ngrams(rows.question, cfg.decontamination_ngram) & ctx.contamination:
        return Verdicts(extracted, correct, ["contaminated"] * n)

    texts = [r or "" for r in rows.rationales]
    for i in order:
        if rows.finish_reasons[i] == "length":
            reason[i] = "truncated"
        elif not texts[i].strip():
            reason[i] = "empty"
        elif is_degenerate(texts[i], cfg.repetition_ngram, cfg.max_repeated_ngram_share):
            reason[i] = "degenerate"
    candidates = [i for i in order if reason[i] is None]
    if candidates and ctx.count_student_tokens is not None and ctx.max_student_tokens is not None:
        # Tokenizing is the costly check: only for the rationales still in the running.
        trained = rows.student_texts or texts
        lengths = ctx.count_student_tokens([rows.question] * len(candidates), [trained[i] for i in candidates],
                                           [rows.choices] * len(candidates))
        for i, length in zip(candidates, lengths):
            if length > ctx.max_student_tokens:
                reason[i] = "too_long"
    for i in order:
        text = texts[i]
        if reason[i] in ("truncated", "degenerate", "too_long", None) and text.strip():
            extraction = fmt.extract(text, rows.choices)
            extracted[i] = extraction.answer
            if cfg.label == "none":  # recorded, never checked
                continue
            if rows.gold_answer is not None:
                correct[i] = fmt.is_correct(extraction.answer, rows.gold_answer)
            if reason[i] is None and extraction.answer is None:
                reason[i] = extraction.reason or "unparseable"

    if cfg.label == "majority":
        # The teacher's label: a vote of every finished rationale with an answer, taken before the
        # student-side checks (degenerate, too_long) remove any, so the student's max_length can never change
        # it. Equivalent answers (\frac{1}{2}, 0.5) are one answer. A tie for first place is no majority.
        voters = [i for i in order if rows.finish_reasons[i] != "length" and extracted[i] is not None]
        grouped = dict(zip(voters, group_equivalent([extracted[i] for i in voters], fmt)))
        ranked = Counter(grouped.values()).most_common(2)
        top, top_count = ranked[0] if ranked else (None, 0)
        tied = len(ranked) > 1 and ranked[1][1] == top_count
        if not voters or tied or top_count / len(voters) < cfg.majority_min_share:
            for i in order:
                if reason[i] is None:
                    reason[i] = "no_majority"
            return Verdicts(extracted, correct, reason)
        passed: int | None = sum(grouped[i] == top for i in voters)
        for i in order:
            if reason[i] is None and grouped[i] != top:
                reason[i] = "wrong"
    elif cfg.label == "gold":
        if rows.gold_answer is None:
            raise ValueError(f"question {rows.question_id} has no gold answer; use filter.label: majority")
        # Reaching the label: a finished rationale with the gold answer (a truncated one never finished, though
        # its last number may be recorded as correct), as the majority vote counts only finished ones.
        # The pass rate is the teacher's own: rationalized rationales (written with the gold as a hint) are left out.
        passed = sum(reaches_gold(correct[i], rows.finish_reasons[i]) for i in ordinary)
        for i in order:
            if reason[i] is None and not correct[i]:
                reason[i] = "wrong"
        for i in order:
            if reason[i] is None and hinted[i] and quotes_hint(texts[i], rows.gold_answer, rows.question):
                reason[i] = "quotes_hint"
    else:  # label none: no answer is checked, so no pass rate either
        passed = None
    rate = pass_rate(passed, len(ordinary)) if passed is not None else None
    if cfg.difficulty is not None and rate is not None:
        band = band_reason(rate, cfg.difficulty)
        if band is not None:  # a question-level verdict, like contaminated: on every rationale
            return Verdicts(extracted, correct, [band] * n, rate)

    survivors = [i for i in order if reason[i] is None]
    if cfg.drop_duplicates:
        seen: set[str] = set()
        for i in survivors:
            key = normalize_whitespace(texts[i])
            if key in seen:
                reason[i] = "duplicate"
            seen.add(key)
        survivors = [i for i in survivors if reason[i] is None]
    if cfg.near_duplicates and len(survivors) > 1:
        flags = near_duplicate_flags([texts[i] for i in survivors], cfg.near_duplicate_threshold,
                                     cfg.near_duplicate_ngram, cfg.minhash_num_perm)
        for i, flag in zip(survivors, flags):
            if flag:
                reason[i] = "near_duplicate"
        survivors = [i for i in survivors if reason[i] is None]
    cap = question_cap(cfg.max_per_question, cfg.min_per_question, cfg.difficulty, passed, len(ordinary))
    if cap is not None and len(survivors) > cap:
        # Seeded by question, so the draw does not depend on shard order or the number of workers.
        rng = random.Random(f"{ctx.seed}:{rows.question_id}")
        drawn = set(rng.sample(survivors, cap))
        for i in survivors:
            if i not in drawn:
                reason[i] = "over_max_per_question"
        survivors = sorted(drawn)
    if len(survivors) < cfg.min_per_question:
        for i in survivors:
            reason[i] = "under_min_per_question"
    return Verdicts(extracted, correct, reason, rate)


def filter_samples(samples: Iterable[Sample], ctx: FilterContext) -> Iterator[Sample]:
    """The pure core over records: samples in (a question's rationales together), judged samples out."""
    group: list[Sample] = []

    def flush() -> Iterator[Sample]:
        first = group[0]
        verdicts = judge_question(QuestionRows(
            first.question_id, first.question, first.gold_answer, first.choices,
            [s.sample_index for s in group], [s.rationale for s in group], [s.finish_reason for s in group],
            rationalized=[s.rationalized for s in group],
        ), ctx)
        for s, answer, correct, reason in zip(group, verdicts.extracted_answer, verdicts.is_correct,
                                              verdicts.filter_reason):
            s.extracted_answer, s.is_correct, s.filter_reason = answer, correct, reason
            s.pass_rate = verdicts.pass_rate
            yield s

    for sample in samples:
        if group and sample.question_id != group[0].question_id:
            yield from flush()
            group = []
        group.append(sample)
    if group:
        yield from flush()


SAMPLE_COLUMNS = SAMPLE_SCHEMA.names  # the generate columns, in order; the filter appends its own (FILTERED_SCHEMA)


def with_sample_columns(table: pa.Table) -> pa.Table:
    """A generate shard written before some (nullable) Sample columns existed, with those columns as nulls."""
    for name in SAMPLE_COLUMNS:
        if name not in table.column_names:
            field = SAMPLE_SCHEMA.field(name)
            table = table.append_column(field, pa.nulls(len(table), field.type))
    return table


def judge_table(table: pa.Table, ctx: FilterContext) -> pa.Table:
    """A generate shard -> the same rows with extracted_answer, is_correct, filter_reason and pass_rate appended.

    Works on columns rather than Sample objects: the filter has to keep up with 50,000 rationales/s.
    """
    table = with_sample_columns(table)
    qids = table.column("question_id").to_pylist()
    groups: dict[str, list[int]] = {}
    for row, qid in enumerate(qids):
        groups.setdefault(qid, []).append(row)
    cols = {name: table.column(name).to_pylist() for name in
            ("question", "gold_answer", "sample_index", "rationale", "finish_reason", "reasoning", "rationalized")}
    with_reasoning = any(r is not None for r in cols["reasoning"])
    with_hints = any(cols["rationalized"])
    choices = table.column("choices")
    extracted: list[str | None] = [None] * len(qids)
    correct: list[bool | None] = [None] * len(qids)
    reasons: list[str | None] = [None] * len(qids)
    rates: list[float | None] = [None] * len(qids)
    for qid, rows in groups.items():
        first = rows[0]
        verdicts = judge_question(QuestionRows(
            qid, cols["question"][first], cols["gold_answer"][first], choices[first].as_py(),
            [cols["sample_index"][r] for r in rows], [cols["rationale"][r] for r in rows],
            [cols["finish_reason"][r] for r in rows],
            [student_text(cols["rationale"][r] or "", cols["reasoning"][r], ctx.reasoning_format) for r in rows]
            if with_reasoning else None,
            [cols["rationalized"][r] for r in rows] if with_hints else None,
        ), ctx)
        for r, a, c, why in zip(rows, verdicts.extracted_answer, verdicts.is_correct, verdicts.filter_reason):
            extracted[r], correct[r], reasons[r], rates[r] = a, c, why, verdicts.pass_rate
    table = table.select(SAMPLE_COLUMNS)
    for name, values in (("extracted_answer", extracted), ("is_correct", correct), ("filter_reason", reasons),
                         ("pass_rate", rates)):
        field = FILTERED_SCHEMA.field(name)
        table = table.append_column(field, pa.array(values, field.type))
    return table
