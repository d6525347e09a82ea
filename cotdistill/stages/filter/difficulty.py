"""Difficulty-aware selection (filter.difficulty) by a question's pass rate: the share of its rationales that
reach its label. Pure functions over counts.

    cap = question_cap(max_per_question, min_per_question, difficulty, passed, total)     # phases.py

  band     a question whose pass rate is above max_pass_rate is too_easy, below min_pass_rate too_hard
  weight   harder_more: a question keeps up to max(min_per_question, ceil(max_per_question * (1 - pass rate)))
           rationales, so the hard questions get the most of the corpus (OpenThoughts, Light-R1)
"""

from __future__ import annotations

import math
from typing import Iterable

from cotdistill.config.sections import DifficultyConfig

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


LENGTH_EDGES = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)  # completion tokens; the last bucket is open


def length_counts(rows: Iterable[tuple[float | None, bool, int]]) -> dict:
    """(pass rate, accepted, completion tokens) per rationale -> per pass-rate decile ("none": no pass rate) and
    accepted/rejected, the count, the tokens and a histogram over LENGTH_EDGES: added up across shards."""
    counts: dict = {}
    for rate, accepted, tokens in rows:
        decile = "none" if rate is None else f"{pass_rate_bin(rate) / PASS_RATE_BINS:.1f}"
        entry = counts.setdefault(decile, {}).setdefault(
            "accepted" if accepted else "rejected", {"n": 0, "tokens": 0, "histogram": [0] * (len(LENGTH_EDGES) + 1)})
        entry["n"] += 1
        entry["tokens"] += tokens or 0
        entry["histogram"][sum(tokens >= edge for edge in LENGTH_EDGES)] += 1
    return counts


def merge_length_counts(parts: Iterable[dict]) -> dict:
    merged: dict = {}
    for part in parts:
        for decile, by_status in part.items():
            for status, entry in by_status.items():
                into = merged.setdefault(decile, {}).setdefault(
                    status, {"n": 0, "tokens": 0, "histogram": [0] * (len(LENGTH_EDGES) + 1)})
                into["n"] += entry["n"]
                into["tokens"] += entry["tokens"]
                into["histogram"] = [a + b for a, b in zip(into["histogram"], entry["histogram"])]
    return {decile: merged[decile] for decile in sorted(merged)}


def length_summary(counts: dict) -> dict:
    """stats.json's lengths: per decile and accepted/rejected, the count, the mean tokens and the bucket that holds
    the median ("128-256")."""
    def median_bucket(histogram: list[int], n: int) -> str | None:
        seen = 0
        for b, count in enumerate(histogram):
            seen += count
            if n and seen * 2 >= n:
                low = LENGTH_EDGES[b - 1] if b else 0
                return f"{low}-{LENGTH_EDGES[b]}" if b < len(LENGTH_EDGES) else f"{low}+"
        return None

    return {decile: {status: {"rationales": e["n"], "mean_tokens": round(e["tokens"] / e["n"], 1) if e["n"] else None,
                              "median_bucket": median_bucket(e["histogram"], e["n"]), "histogram": e["histogram"]}
                     for status, e in by_status.items()}
            for decile, by_status in counts.items()}


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
