"""Judging one question's rationales, in phases: per-rationale checks, the label's verdicts, the selection. Each
phase declares the reasons it can give, in the order it applies them; REASONS, the order of stats.json and the
audit, is derived from them. Pure: rows in, verdicts out.

    judged = judge_table(pq.read_table(shard), ctx)     # a generate shard -> the same rows with their verdicts

A question-level verdict (contaminated, too_easy, too_hard) names every rationale of the question, whatever else
it fails; contamination is checked first, the difficulty band once the label's pass rate is known.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from cotdistill.config.sections import FilterConfig, TrainConfig
from cotdistill.core.prompts import PromptTemplate
from cotdistill.core.records import FILTERED_SCHEMA, JUDGED_SCHEMA, SAMPLE_SCHEMA, student_text
from cotdistill.stages.filter.checks import is_degenerate, normalize_whitespace, question_ngrams, quotes_hint
from cotdistill.stages.filter.dedup import near_duplicate_flags
from cotdistill.stages.filter.difficulty import band_reason, pass_rate, question_cap
from cotdistill.verify.answers import AnswerFormat, after_reasoning, group_equivalent
from cotdistill.verify.code import CodeVerdict, copies_reference
from cotdistill.verify.judging import CodeChecks, reaches_gold


@dataclass(frozen=True)
class Phase:
    name: str
    reasons: dict[str, str]  # the reasons it can give, in the order it applies them -> what each means


QUESTION_VERDICTS = Phase("question", {
    "contaminated": "the question shares a word n-gram with a question of an evaluation set (filter.decontaminate)",
    "too_easy": "(filter.difficulty) the question's pass rate is above max_pass_rate",
    "too_hard": "(filter.difficulty) the question's pass rate is below min_pass_rate",
})
RATIONALE_CHECKS = Phase("rationale", {
    "unfinished_reasoning": "its reasoning never closed, so it has no answer: cut off by max_tokens inside it, or "
                            "ended without closing it",
    "truncated": 'cut off by max_tokens (finish reason "length") after its reasoning, or with none',
    "empty": "no text",
    "degenerate": "too large a share of repeated word n-grams (a looping rationale)",
    "too_long": "over the student's max_length, counted with the student's tokenizer as training counts",
    "unparseable": "no final answer",
    "ambiguous": "two different marked answers",
    "timeout": "the answer check (math-verify) gave up",
    "no_code": "(answer_format code) no complete fenced program after the reasoning",
    "syntax_error": "(answer_format code) the program does not compile",
})
LABEL_VERDICTS = Phase("label", {
    "no_majority": "(label majority) no answer won majority_min_share of the question's votes, or a tie",
    "wrong": "the answer is not the label (the gold, or the teacher's majority answer; for code, its majority "
             "execution class)",
    "tests_failed": "(answer_format code, label gold) the program ran and failed some of the question's tests",
    "runtime_error": "(answer_format code, label gold) the program raised, or exited before its tests had run",
    "exec_timeout": "(answer_format code, label gold) the program ran past sandbox.timeout_s or cpu_s",
    "memory_limit": "(answer_format code, label gold) the program ran out of sandbox.memory_mb",
    "output_limit": "(answer_format code, label gold) the program printed more than the sandbox keeps",
    "quotes_hint": "(generate.rationalize) a rationalized rationale that names its hint or states the gold number "
                   "before its first calculation (checks.quotes_hint); for code, a program that copies the "
                   "reference solution it was given, or nearly (verify/code.copies_reference)",
})
SELECTION = Phase("selection", {
    "overlong": "(filter.max_length_ratio) longer than that many times the median length of the question's "
                "rationales that reach the label",
    "duplicate": "the same text as a lower sample index, after whitespace normalisation",
    "near_duplicate": "MinHash Jaccard >= near_duplicate_threshold with a kept lower sample index",
    "over_max_per_question": "not among the max_per_question survivors kept (filter.select: a seeded uniform "
                             "draw, SCoTD's balance, or the shortest or longest; with difficulty weight "
                             "harder_more, the question's own smaller cap)",
    "under_min_per_question": "the question kept fewer than min_per_question rationales",
})
PHASES = (QUESTION_VERDICTS, RATIONALE_CHECKS, LABEL_VERDICTS, SELECTION)  # in order of precedence
REASONS = tuple(reason for phase in PHASES for reason in phase.reasons)


JudgeKey = tuple[str, "str | None", int]  # (question_id, teacher_name, sample_index): one rationale
JUDGED_REASONS = ("unparseable", "ambiguous")  # the rules' verdicts the LLM judge may overturn


@dataclass
class FilterContext:
    """What judging needs besides the rows: the settings and the things built once per worker."""

    cfg: FilterConfig
    fmt: AnswerFormat
    seed: int
    contamination: frozenset[int] = frozenset()
    count_student_tokens: Callable[[list[str], list[str], list[list[str] | None]], list[int]] | None = None
    max_student_tokens: int | None = None
    count_text_tokens: Callable[[list[str]], list[int]] | None = None  # a student text's tokens (by length)
    reasoning_format: str = TrainConfig.reasoning_format  # train.reasoning_format (its default here)
    code: CodeChecks | None = None  # answer_format code: the sandbox's verdicts against each question's tests
    student_prompt: PromptTemplate | None = None  # filter.preference_pairs: the pairs' prompt (train.prompt)
    answer_kinds: dict[str, str] = field(default_factory=dict)  # data.answer_kind_field's, by question id
    # filter.judge: the LLM judge's verdicts by row key (judge_key), each with whether the cache answered it,
    # asked in the main process before the shards are judged; None: no judge. judge_wanted: while that pass
    # collects what to ask, the rows the rules could not read (key, question, gold, text) are appended here.
    judged: dict[JudgeKey, tuple[str, bool]] | None = None
    judge_model: str | None = None
    judge_wanted: list[tuple[JudgeKey, str, str, str]] | None = None


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
    reasonings: list[str | None] | None = None  # the reasoning kept apart from the rationale (a reasoning model)
    teacher_names: list[str | None] | None = None  # with several teachers: which one wrote each


@dataclass
class Verdicts:
    """Where one question's rationales stand, phase after phase; filter_reason None means still accepted."""

    rows: QuestionRows
    pass_rate: float | None = None  # the question's (None: no label, no majority, or contaminated)
    extracted_answer: list[str | None] = field(init=False)
    is_correct: list[bool | None] = field(init=False)
    filter_reason: list[str | None] = field(init=False)
    order: list[int] = field(init=False)  # by sample index: of two duplicates, the lower index is kept
    texts: list[str] = field(init=False)
    hinted: list[bool] = field(init=False)  # rationalized (written with the gold as a hint)
    ordinary: list[int] = field(init=False)  # the teacher's own rationales: the pass rate counts these
    code: list[CodeVerdict | None] = field(init=False)  # answer_format code: each program's verdict
    judge_verdict: list[str | None] = field(init=False)  # filter.judge: its verdict, where it was asked

    def __post_init__(self) -> None:
        n = len(self.rows.rationales)
        self.extracted_answer, self.is_correct, self.filter_reason = [None] * n, [None] * n, [None] * n
        self.order = sorted(range(n), key=lambda i: self.rows.sample_indices[i])
        self.texts = [r or "" for r in self.rows.rationales]
        self.hinted = [bool(h) for h in self.rows.rationalized] if self.rows.rationalized else [False] * n
        self.ordinary = [i for i in self.order if not self.hinted[i]]
        self.code = [None] * n
        self.judge_verdict = [None] * n

    def running(self) -> list[int]:
        """The rationales no phase has rejected yet, by sample index."""
        return [i for i in self.order if self.filter_reason[i] is None]

    def reject(self, i: int, reason: str, phase: Phase) -> None:
        if reason not in phase.reasons:
            raise ValueError(f"the {phase.name} phase declares no reason {reason!r}")
        self.filter_reason[i] = reason

    def whole_question(self, reason: str) -> Verdicts:
        """A question-level verdict: every rationale gets it, whatever else it failed."""
        for i in self.order:
            self.reject(i, reason, QUESTION_VERDICTS)
        return self


def judge_question(rows: QuestionRows, ctx: FilterContext) -> Verdicts:
    """The verdict on each of one question's rationales; filter_reason None means accepted."""
    v = Verdicts(rows)
    if ctx.contamination and question_ngrams(rows.question, ctx.cfg.decontamination_ngram) & ctx.contamination:
        return v.whole_question("contaminated")
    check_rationales(v, ctx)
    passed = judge_label(v, ctx)
    if ctx.cfg.label == "majority" and passed is None:
        return v  # no majority: no label, so no pass rate and nothing to select among
    v.pass_rate = pass_rate(passed, len(v.ordinary)) if passed is not None else None
    if ctx.cfg.difficulty is not None and v.pass_rate is not None:
        band = band_reason(v.pass_rate, ctx.cfg.difficulty)
        if band is not None:
            return v.whole_question(band)
    select(v, ctx, passed)
    return v


def check_rationales(v: Verdicts, ctx: FilterContext) -> None:
    """RATIONALE_CHECKS: each rationale on its own; its answer extracted (and checked against the gold) even when
    it fails a check, for the audit, but only a rationale still running can be unparseable."""
    cfg, rows = ctx.cfg, v.rows
    for i in v.order:
        if rows.finish_reasons[i] == "length":
            v.reject(i, "unfinished_reasoning" if still_reasoning(v, i, ctx) else "truncated", RATIONALE_CHECKS)
        elif not v.texts[i].strip():
            v.reject(i, "empty", RATIONALE_CHECKS)
        elif is_degenerate(v.texts[i], cfg.repetition_ngram, cfg.max_repeated_ngram_share):
            v.reject(i, "degenerate", RATIONALE_CHECKS)
    candidates = v.running()
    if candidates and ctx.count_student_tokens is not None and ctx.max_student_tokens is not None:
        # Tokenizing is the costly check: only for the rationales still in the running.
        trained = rows.student_texts or v.texts
        lengths = ctx.count_student_tokens([rows.question] * len(candidates), [trained[i] for i in candidates],
                                           [rows.choices] * len(candidates))
        for i, length in zip(candidates, lengths):
            if length > ctx.max_student_tokens:
                v.reject(i, "too_long", RATIONALE_CHECKS)
    if ctx.code is not None:
        check_programs(v, ctx)
        return
    fmt = ctx.fmt.with_answer_kind(ctx.answer_kinds.get(rows.question_id))  # the question's own, if it says
    for i in v.order:
        if v.filter_reason[i] in ("truncated", "degenerate", "too_long", None) and v.texts[i].strip():
            extraction = fmt.extract(v.texts[i], rows.choices)
            v.extracted_answer[i] = extraction.answer
            if cfg.label == "none":  # recorded, never checked
                continue
            if rows.gold_answer is not None:
                v.is_correct[i] = fmt.is_correct(extraction.answer, rows.gold_answer)
            # filter.judge: where the rules cannot read an answer, or every answer of answer_format judge
            if v.filter_reason[i] is None and rows.gold_answer is not None and (
                    fmt.name == "judge" or extraction.reason in JUDGED_REASONS) and ask_judge(v, i, ctx):
                continue  # the judge decided: equivalent stays in the running, different is wrong
            if v.filter_reason[i] is None and extraction.answer is None:
                v.reject(i, extraction.reason or "unparseable", RATIONALE_CHECKS)


def ask_judge(v: Verdicts, i: int, ctx: FilterContext) -> bool:
    """filter.judge on a rationale the rules could not read: True when its verdict decides (equivalent: correct;
    different: not, and the label phase rejects it as wrong); False leaves the rules' verdict (no judge, its reply
    unparseable, a failed request, its budget spent)."""
    rows = v.rows
    key = (rows.question_id, rows.teacher_names[i] if rows.teacher_names else None, rows.sample_indices[i])
    if ctx.judge_wanted is not None:
        ctx.judge_wanted.append((key, rows.question, rows.gold_answer, v.texts[i]))
    if ctx.judged is None:
        return False
    verdict = ctx.judged.get(key, ("over_budget", False))[0]
    v.judge_verdict[i] = verdict
    if verdict not in ("equivalent", "different"):
        return False
    v.is_correct[i] = verdict == "equivalent"
    return True


CODE_LABEL_REASONS = ("tests_failed", "runtime_error", "exec_timeout", "memory_limit", "output_limit")


def check_programs(v: Verdicts, ctx: FilterContext) -> None:
    """RATIONALE_CHECKS for code: each program run against the question's tests in the sandbox (all of the
    question's programs at once, in the sandbox's pool). Its answer is its execution class, correct when it
    passes; a rationale still running with no program, one that does not compile, or one whose reasoning never
    closed is rejected here (the failures of programs that ran are the label's verdicts)."""
    judged = [i for i in v.order
              if v.filter_reason[i] in ("truncated", "degenerate", "too_long", None) and v.texts[i].strip()]
    verdicts = ctx.code.verdicts(v.rows.question_id, [v.texts[i] for i in judged], ctx.fmt)
    for i, verdict in zip(judged, verdicts):
        v.code[i], v.extracted_answer[i], v.is_correct[i] = verdict, verdict.answer, verdict.passed
        if v.filter_reason[i] is None and verdict.reason in ("no_code", "syntax_error", "unfinished_reasoning"):
            v.reject(i, verdict.reason, RATIONALE_CHECKS)


def still_reasoning(v: Verdicts, i: int, ctx: FilterContext) -> bool:
    """Whether rationale i stopped inside its reasoning: kept apart with no answer after it, or a text whose
    reasoning block never closed."""
    reasoning = v.rows.reasonings[i] if v.rows.reasonings is not None else None
    if reasoning is not None:
        return not v.texts[i].strip()
    return after_reasoning(v.texts[i], ctx.fmt.delimiters) is None


def judge_label(v: Verdicts, ctx: FilterContext) -> int | None:
    """LABEL_VERDICTS against the gold or the teacher's majority; returns how many of the question's own
    (not rationalized) rationales reach the label: None without a label (label none) or without a majority."""
    cfg, rows = ctx.cfg, v.rows
    if cfg.label == "majority":
        # The teacher's label: a vote of every finished rationale with an answer, taken before the
        # student-side checks (degenerate, too_long) remove any, so the student's max_length can never change
        # it. Equivalent answers (\frac{1}{2}, 0.5) are one answer. A tie for first place is no majority.
        voters = [i for i in v.order if rows.finish_reasons[i] != "length" and v.extracted_answer[i] is not None]
        grouped = dict(zip(voters, group_equivalent([v.extracted_answer[i] for i in voters], ctx.fmt)))
        ranked = Counter(grouped.values()).most_common(2)
        top, top_count = ranked[0] if ranked else (None, 0)
        tied = len(ranked) > 1 and ranked[1][1] == top_count
        if not voters or tied or top_count / len(voters) < cfg.majority_min_share:
            for i in v.running():
                v.reject(i, "no_majority", LABEL_VERDICTS)
            return None
        for i in v.running():
            if grouped.get(i) != top:  # a program stopped by a limit has no class of its own: not the label
                v.reject(i, "wrong", LABEL_VERDICTS)
        return sum(grouped[i] == top for i in voters)
    if cfg.label == "gold":
        if rows.gold_answer is None and ctx.code is None:
            raise ValueError(f"question {rows.question_id} has no gold answer; use filter.label: majority")
        for i in v.running():
            if not v.is_correct[i]:  # for code: why its program failed its tests
                verdict = v.code[i]
                v.reject(i, verdict.reason if verdict is not None and verdict.reason in CODE_LABEL_REASONS
                         else "wrong", LABEL_VERDICTS)
        for i in v.running():
            if v.hinted[i] and rows.gold_answer is not None and copies_hint(v, i, ctx):
                v.reject(i, "quotes_hint", LABEL_VERDICTS)
        # Reaching the label: a finished rationale with the gold answer (a truncated one never finished, though
        # its last number may be recorded as correct), as the majority vote counts only finished ones.
        return sum(reaches_gold(v.is_correct[i], rows.finish_reasons[i]) for i in v.ordinary)
    return None  # label none: no answer is checked, so no pass rate either


def copies_hint(v: Verdicts, i: int, ctx: FilterContext) -> bool:
    """A rationalized rationale that gives its hint away: names the gold, or for code copies the reference."""
    rows = v.rows
    if ctx.code is not None:
        return copies_reference(ctx.fmt.extract(v.texts[i]).answer, rows.gold_answer)
    return quotes_hint(v.texts[i], rows.gold_answer, rows.question)


def select(v: Verdicts, ctx: FilterContext, passed: int | None) -> None:
    """SELECTION among the survivors: overlong ones, exact and near duplicates (the lowest sample index kept), the
    question's cap (a seeded draw, or by length), and the minimum a question must keep."""
    cfg = ctx.cfg
    lengths = student_lengths(v, ctx)
    if cfg.max_length_ratio is not None and lengths:
        # Against the question's own rationales that reach the label: the running ones, after the label phase.
        median = statistics.median(lengths.values())
        for i in v.running():
            if lengths[i] > cfg.max_length_ratio * median:
                v.reject(i, "overlong", SELECTION)
    if cfg.drop_duplicates:
        seen: set[str] = set()
        for i in v.running():
            key = normalize_whitespace(v.texts[i])
            if key in seen:
                v.reject(i, "duplicate", SELECTION)
            seen.add(key)
    survivors = v.running()
    if cfg.near_duplicates and len(survivors) > 1:
        flags = near_duplicate_flags([v.texts[i] for i in survivors], cfg.near_duplicate_threshold,
                                     cfg.near_duplicate_ngram, cfg.minhash_num_perm)
        for i, flag in zip(survivors, flags):
            if flag:
                v.reject(i, "near_duplicate", SELECTION)
    survivors = v.running()
    cap = question_cap(cfg.max_per_question, cfg.min_per_question, cfg.difficulty, passed, len(v.ordinary))
    # filter.per_teacher: the cap applies to each teacher's survivors; else to all of them together
    names = v.rows.teacher_names if cfg.per_teacher and v.rows.teacher_names else None
    pools = ({name: [i for i in survivors if names[i] == name] for name in dict.fromkeys(names[i] for i in survivors)}
             if names else {None: survivors})
    for teacher, pool in pools.items():
        if cap is None or len(pool) <= cap:
            continue
        if cfg.select == "random":  # seeded by question: the draw depends on no shard order nor worker count
            seed = f"{ctx.seed}:{v.rows.question_id}" + (f":{teacher}" if teacher is not None else "")
            drawn = set(random.Random(seed).sample(pool, cap))
        else:  # by length, ties to the lower sample index
            ranked = sorted(pool, key=lambda i: (lengths[i] * (1 if cfg.select == "shortest" else -1),
                                                 v.rows.sample_indices[i]))
            drawn = set(ranked[:cap])
        for i in pool:
            if i not in drawn:
                v.reject(i, "over_max_per_question", SELECTION)
    survivors = v.running()
    if len(survivors) < cfg.min_per_question:
        for i in survivors:
            v.reject(i, "under_min_per_question", SELECTION)


def student_lengths(v: Verdicts, ctx: FilterContext) -> dict[int, int]:
    """The running rationales' lengths in tokens of the student's text, when the filter compares lengths (else
    empty): counted only for these, as too_long counts only the rationales still in the running."""
    running = v.running()
    if ctx.count_text_tokens is None or not running or (ctx.cfg.select == "random"
                                                         and ctx.cfg.max_length_ratio is None):
        return {}
    trained = v.rows.student_texts or v.texts
    return dict(zip(running, ctx.count_text_tokens([trained[i] for i in running])))


# --- one shard ------------------------------------------------------------------------------------------------


SAMPLE_COLUMNS = SAMPLE_SCHEMA.names  # the generate columns, in order; the filter appends its own (FILTERED_SCHEMA)


def with_sample_columns(table: pa.Table) -> pa.Table:
    """A generate shard written before some (nullable) Sample columns existed, with those columns as nulls."""
    for name in SAMPLE_COLUMNS:
        if name not in table.column_names:
            column = SAMPLE_SCHEMA.field(name)
            table = table.append_column(column, pa.nulls(len(table), column.type))
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
            ("question", "gold_answer", "sample_index", "rationale", "finish_reason", "reasoning", "rationalized",
             "teacher_name")}
    with_reasoning = any(r is not None for r in cols["reasoning"])
    with_hints = any(cols["rationalized"])
    with_teachers = any(name is not None for name in cols["teacher_name"])
    choices = table.column("choices")
    extracted: list[str | None] = [None] * len(qids)
    correct: list[bool | None] = [None] * len(qids)
    reasons: list[str | None] = [None] * len(qids)
    rates: list[float | None] = [None] * len(qids)
    judge_verdicts: list[str | None] = [None] * len(qids)
    for qid, rows in groups.items():
        first = rows[0]
        verdicts = judge_question(QuestionRows(
            qid, cols["question"][first], cols["gold_answer"][first], choices[first].as_py(),
            [cols["sample_index"][r] for r in rows], [cols["rationale"][r] for r in rows],
            [cols["finish_reason"][r] for r in rows],
            [student_text(cols["rationale"][r] or "", cols["reasoning"][r], ctx.reasoning_format) for r in rows]
            if with_reasoning else None,
            [cols["rationalized"][r] for r in rows] if with_hints else None,
            [cols["reasoning"][r] for r in rows] if with_reasoning else None,
            [cols["teacher_name"][r] for r in rows] if with_teachers else None,
        ), ctx)
        for r, a, c, why, jv in zip(rows, verdicts.extracted_answer, verdicts.is_correct, verdicts.filter_reason,
                                    verdicts.judge_verdict):
            extracted[r], correct[r], reasons[r], rates[r], judge_verdicts[r] = a, c, why, verdicts.pass_rate, jv
    table = table.select(SAMPLE_COLUMNS)
    for name, values in (("extracted_answer", extracted), ("is_correct", correct), ("filter_reason", reasons),
                         ("pass_rate", rates)):
        column = FILTERED_SCHEMA.field(name)
        table = table.append_column(column, pa.array(values, column.type))
    if ctx.judged is not None:  # filter.judge: its columns (JUDGED_SCHEMA); the model where it gave a verdict
        asked = [ctx.judge_model if jv not in (None, "over_budget") else None for jv in judge_verdicts]
        for name, values in (("judge_verdict", judge_verdicts), ("judge_model", asked)):
            table = table.append_column(JUDGED_SCHEMA.field(name), pa.array(values, pa.string()))
    return table
