"""One rationale judged alone: does it reach the gold, and what is its vote? The filter's verdicts, asked also by
generate (adaptive sampling closes a question on them, rationalization opens one), so the two cannot disagree.

    rationale_reaches_gold(row["rationale"], row["finish_reason"], gold, choices, fmt)  # adaptive, label gold
    rationale_vote(row["rationale"], row["finish_reason"], choices, fmt)  # adaptive's stopping rule, majority
"""

from __future__ import annotations

from cotdistill.answers import AnswerFormat, get_answer_format
from cotdistill.config import RunConfig


def teacher_answer_format(config: RunConfig) -> AnswerFormat:
    """The format the teacher's rationales are judged with: filter.answer_format, reading after the teacher's
    reasoning delimiters."""
    return get_answer_format(config.filter.answer_format, config.teacher.delimiters())


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
