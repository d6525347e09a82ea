"""Accuracy, self-consistency (maj@k), pass@k and bootstrap intervals: pure functions, no I/O.

    expected_maj_at_k(answers, correct, k)     # evaluate: maj@k for every k <= K from one pass of K samples

maj@k is the expected accuracy of a majority vote over a random k-subset of a question's K samples, not the
vote of the first k samples. Unparseable answers (None) do not vote; a subset with no votes scores 0. A tie
between t answers scores 1/t when the gold is among them (the expected value of a random tie-break).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from typing import Callable, Sequence

import numpy as np

MIN_DRAWS = 1000


def majority_vote(answers: Sequence[str | None]) -> tuple[str | None, list[tuple[str, int]]]:
    """The most common parsed answer and all vote counts; unparseable answers (None) do not vote.

    A tie goes to the answer seen first, so the recorded vote is deterministic; maj@k scores ties as 1/t.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, []
    votes = sorted(counts.items(), key=lambda kv: -kv[1])  # sorted() is stable: first seen wins a tie
    return votes[0][0], votes


def accuracy(correct: Sequence[bool]) -> float:
    return sum(bool(c) for c in correct) / len(correct) if correct else 0.0


def answer_classes(answers: Sequence[str | None], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's answer as a class index (-1 for unparseable), and which classes are correct."""
    index: dict[str, int] = {}
    classes = np.array([-1 if a is None else index.setdefault(a, len(index)) for a in answers], dtype=np.int64)
    correct_class = np.zeros(len(index), dtype=bool)
    for a, c in zip(answers, correct):
        if a is not None and c:
            correct_class[index[a]] = True
    return classes, correct_class


def _subset_scores(subsets: np.ndarray, classes: np.ndarray, correct_class: np.ndarray) -> np.ndarray:
    """The tie-credited majority-vote score of each row of sample indices."""
    num_classes = len(correct_class)
    if num_classes == 0:
        return np.zeros(len(subsets))
    chosen = classes[subsets]  # (draws, k)
    counts = (chosen[:, :, None] == np.arange(num_classes)).sum(axis=1)  # (draws, classes); -1 never matches
    top = counts.max(axis=1, keepdims=True)
    tied = (counts == top) & (top > 0)
    num_tied = tied.sum(axis=1)
    credit = (tied & correct_class).sum(axis=1)
    return np.where(num_tied > 0, credit / np.maximum(num_tied, 1), 0.0)


def expected_maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int, seed: int = 0,
                      draws: int = MIN_DRAWS) -> float:
    """maj@k for one question: exact over all k-subsets when there are at most `draws` of them, else the
    mean over `draws` seeded random k-subsets."""
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"maj@{k} needs 1 <= k <= {n} samples")
    classes, correct_class = answer_classes(answers, correct)
    if not correct_class.any():
        return 0.0
    if math.comb(n, k) <= draws:
        subsets = np.array(list(itertools.combinations(range(n), k)), dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        subsets = np.argsort(rng.random((draws, n)), axis=1)[:, :k]  # uniform k-subsets without replacement
    return float(_subset_scores(subsets, classes, correct_class).mean())


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. (2021): 1 - C(n-c, k) / C(n, k), the chance that k of n samples hold a correct one."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def bootstrap_ci(scores: Sequence[float], seed: int = 0, resamples: int = 1000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling questions with replacement."""
    values = np.asarray(scores, dtype=float)
    if len(values) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    alpha = (1.0 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_bootstrap_ci(first: Sequence[float], second: Sequence[float], statistic: str = "difference",
                        seed: int = 0, resamples: int = 1000, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of mean(first) - mean(second) (`difference`) or mean(first) / mean(second)
    (`ratio`), the same questions drawn for both in each resample: what two models scored on the same questions
    is compared question by question. None for a ratio whose denominator is 0 in any resample."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if len(a) == 0 or len(a) != len(b):
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(a), size=(resamples, len(a)))
    mean_a, mean_b = a[draws].mean(axis=1), b[draws].mean(axis=1)
    if statistic == "ratio":
        if (mean_b == 0).any():
            return None
        values = mean_a / mean_b
    else:
        values = mean_a - mean_b
    alpha = (1.0 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def agreement(first: Sequence[str | None], second: Sequence[str | None],
              equal: Callable[[str, str], bool] = lambda a, b: a == b) -> float:
    """The share of questions where two models' voted answers are the same (both unparseable counts as not)."""
    if not first:
        return 0.0
    same = [a is not None and b is not None and (a == b or equal(a, b)) for a, b in zip(first, second)]
    return sum(same) / len(same)


def question_seed(seed: int, question_id: str, k: int) -> int:
    """A draw seed per question and k, so maj@k does not depend on question order."""
    return random.Random(f"{seed}:{question_id}:{k}").randrange(2**32)
