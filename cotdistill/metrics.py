"""Accuracy, majority vote and pass@k: pure functions over parsed answers, no I/O."""

from __future__ import annotations

from collections import Counter
from typing import Sequence


def majority_vote(answers: Sequence[str | None]) -> tuple[str | None, list[tuple[str, int]]]:
    """The most common parsed answer and all vote counts; unparseable answers (None) do not vote.

    A tie goes to the answer seen first, so the vote is deterministic for stored samples.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, []
    votes = sorted(counts.items(), key=lambda kv: -kv[1])  # sorted() is stable: first seen wins a tie
    return votes[0][0], votes


def accuracy(correct: Sequence[bool]) -> float:
    return sum(bool(c) for c in correct) / len(correct) if correct else 0.0
