"""Difficulty-aware selection (filter.difficulty) by a question's pass rate: the share of its rationales that
reach its label. Pure functions over counts.

    cap = question_cap(max_per_question, min_per_question, difficulty, passed, total)     # judge.py

  band     a question whose pass rate is above max_pass_rate is too_easy, below min_pass_rate too_hard
  weight   harder_more: a question keeps up to max(min_per_question, ceil(max_per_question * (1 - pass rate)))
           rationales, so the hard questions get the most of the corpus (OpenThoughts, Light-R1)
"""

from __future__ import annotations

import math
from typing import Iterable

from cotdistill.config import DifficultyConfig

PASS_RATE_BINS = 10  # stats.json's histogram: [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]


def pass_rate(passed: int, total: int) -> float | None:
    return passed / total if total else None


def band_reason(rate: float, difficulty: DifficultyConfig) -> str | None:
    """too_easy / too_hard for a pass rate outside [min_pass_rate, max_pass_rate], else None."""
    if rate > difficulty.max_pass_rate:
        return "too_easy"
    if rate < difficulty.min_pass_rate:
        return "too_hard"
    return None


def question_cap(max_per_question: int | None, min_per_question: int, difficulty: DifficultyConfig | None,
                 passed: int | None, total: int) -> int | None:
    """How many rationales a question may keep (None: no cap). With weight harder_more, the cap shrinks with
    the pass rate: ceil(max_per_question * (1 - passed / total)), in integers (floats would make
    ceil(10 * (1 - 0.3)) 8), but never below min_per_question. A question without a pass rate keeps the cap."""
    if max_per_question is None:
        return None
    if difficulty is None or difficulty.weight == "none" or passed is None or not total:
        return max_per_question
    weighted = -(-max_per_question * (total - passed) // total)  # ceil of the exact fraction
    return max(min_per_question, weighted)


def pass_rate_bin(rate: float) -> int:
    return min(PASS_RATE_BINS - 1, math.floor(rate * PASS_RATE_BINS + 1e-9))


def pass_rate_summary(rates: Iterable[float]) -> dict:
    """Per-question pass rates -> their count, mean and a 10-bin histogram (the bins' lower edges as keys)."""
    counts = [0] * PASS_RATE_BINS
    total, n = 0.0, 0
    for rate in rates:
        counts[pass_rate_bin(rate)] += 1
        total += rate
        n += 1
    return {"questions": n, "mean": round(total / n, 4) if n else None,
            "histogram": {f"{b / PASS_RATE_BINS:.1f}": counts[b] for b in range(PASS_RATE_BINS)}}
