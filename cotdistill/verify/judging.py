"""One rationale judged alone: does it reach the gold, and what is its vote? The filter's verdicts, asked also by
generate (adaptive sampling closes a question on them, rationalization opens one), so the two cannot disagree.

    rationale_reaches_gold(row["rationale"], row["finish_reason"], gold, choices, fmt)  # adaptive, label gold
    rationale_vote(row["rationale"], row["finish_reason"], choices, fmt)  # adaptive's stopping rule, majority

For answer_format code, a rationale's answer is its program's verdict from the sandbox (CodeChecks: the
question's tests, read from the data source once per question): it reaches the gold when it passes them, and its
vote is its execution-equivalence class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from cotdistill.verify.answers import AnswerFormat, get_answer_format
from cotdistill.verify.code import CodeJudge, CodeTests, CodeVerdict

if TYPE_CHECKING:
    from cotdistill.config.run import RunConfig
    from cotdistill.config.sections import SandboxConfig


def teacher_answer_format(config: RunConfig) -> AnswerFormat:
    """The format the teacher's rationales are judged with: filter.answer_format (with filter.math's settings),
    reading after the teacher's reasoning delimiters."""
    return get_answer_format(config.filter.answer_format, config.teacher.delimiters(), config.filter.math_options())


def reaches_gold(correct: bool | None, finish_reason: str) -> bool:
    """Whether a rationale counts as reaching the gold: its answer is the gold and it finished (a truncated one
    never finished, though its last number may be recorded as correct), as the majority vote counts only
    finished ones. The pass rate counts these; generate.adaptive closes a question on them."""
    return bool(correct) and finish_reason != "length"


def rationale_reaches_gold(rationale: str | None, finish_reason: str, gold: str | None, choices: list[str] | None,
                           fmt: AnswerFormat) -> bool:
    """The filter's verdict on one rationale, alone: does it reach the gold? (The filter's own steps: an empty
    text is never checked; the answer is fmt.extract's, compared by fmt.is_correct.)"""
    text = rationale or ""
    if not text.strip() or gold is None:
        return False
    return reaches_gold(fmt.is_correct(fmt.extract(text, choices).answer, gold), finish_reason)


def rationale_vote(rationale: str | None, finish_reason: str, choices: list[str] | None,
                   fmt: AnswerFormat) -> str | None:
    """One rationale's vote in the filter's majority (label majority): a finished, non-empty rationale's answer;
    None (no vote) otherwise, or when it has no answer."""
    text = rationale or ""
    if finish_reason == "length" or not text.strip():
        return None
    return fmt.extract(text, choices).answer


# --- code -------------------------------------------------------------------------------------------------------


def question_reaching_gold(question_id: str, gold: str | None, choices: list[str] | None,
                           rows: Sequence[dict[str, Any]], fmt: AnswerFormat,
                           code: CodeChecks | None = None) -> list[bool]:
    """Which of one question's rationales (rows with rationale and finish_reason) reach the gold: by the answer
    format, or with `code` by the sandbox's verdicts, all of the question's programs at once in its pool."""
    if code is None:
        return [rationale_reaches_gold(r["rationale"], r["finish_reason"], gold, choices, fmt) for r in rows]
    verdicts = code.verdicts(question_id, [r["rationale"] or "" for r in rows], fmt)
    return [code_reaches_gold(r["rationale"], r["finish_reason"], v) for r, v in zip(rows, verdicts)]


def question_votes(question_id: str, choices: list[str] | None, rows: Sequence[dict[str, Any]], fmt: AnswerFormat,
                   code: CodeChecks | None = None) -> list[str | None]:
    """One question's rationales' votes (label majority): rationale_vote's, or with `code` their execution classes."""
    if code is None:
        return [rationale_vote(r["rationale"], r["finish_reason"], choices, fmt) for r in rows]
    verdicts = code.verdicts(question_id, [r["rationale"] or "" for r in rows], fmt)
    return [code_vote(r["rationale"], r["finish_reason"], v) for r, v in zip(rows, verdicts)]


def code_reaches_gold(rationale: str | None, finish_reason: str, verdict: CodeVerdict) -> bool:
    """rationale_reaches_gold for code: a finished, non-empty rationale whose program passes its tests."""
    return bool((rationale or "").strip()) and reaches_gold(verdict.passed, finish_reason)


def code_vote(rationale: str | None, finish_reason: str, verdict: CodeVerdict) -> str | None:
    """rationale_vote for code: a finished, non-empty rationale's execution-equivalence class."""
    if finish_reason == "length" or not (rationale or "").strip():
        return None
    return verdict.answer


class CodeChecks:
    """Verdicts on code rationales: each question's tests (`tests_of`, read from its data source once per
    question: QuestionSource.code_checks), judged in the sandbox."""

    def __init__(self, tests_of: Callable[[str], CodeTests | None], judge: CodeJudge, where: str):
        self.tests_of, self.judge, self.where = tests_of, judge, where

    def verdicts(self, question_id: str, texts: Sequence[str], fmt: AnswerFormat) -> list[CodeVerdict]:
        tests = self.tests_of(question_id)
        if tests is None:
            raise RuntimeError(f"question {question_id} is not in {self.where} (or it holds no tests): its programs "
                               "cannot be judged; was the corpus generated from other data?")
        return self.judge.judge_texts(tests, texts, fmt)


def sandbox_settings(sandbox: SandboxConfig) -> dict[str, Any]:
    """What code verdicts depend on besides the programs and tests: the limits (a longer timeout passes more). The
    executor and its workers are interchangeable."""
    return {"timeout_s": sandbox.timeout_s, "cpu_s": sandbox.cpu_s, "memory_mb": sandbox.memory_mb}
