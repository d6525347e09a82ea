"""Stopping rules for adaptive sampling: is the majority answer settled, or is one more sample worth it?

    should_stop(answers_so_far, rule="beta", confidence=0.95)     # generate.adaptive and evaluate.adaptive

Both generate (`generate.adaptive`, questions without gold) and evaluate (`evaluate.adaptive`) ask the same
question after each round of samples: given the votes so far, stop? Pure functions over the answer counts.

- `beta` (Adaptive-Consistency, Aggarwal et al., EMNLP 2023, their default): with v1 votes for the leading
  answer and v2 for the runner-up, put a uniform prior on the leader's share p among those two answers; its
  posterior is Beta(v1 + 1, v2 + 1). Stop when P(p > 1/2) >= `confidence` (the paper uses 0.95).
- `window` (Early-Stopping Self-Consistency, Li et al., ICLR 2024): stop when the last `window` samples all
  gave the same answer.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

STOPPING_RULES = ("beta", "window")


def leader_beats_runner_up(leader_votes: int, runner_up_votes: int) -> float:
    """P(p > 1/2) for p ~ Beta(leader_votes + 1, runner_up_votes + 1).

    For integer a, b: P(Beta(a, b) > 1/2) = P(Binomial(a + b - 1, 1/2) <= a - 1), an exact finite sum (the
    regularized incomplete beta function at 1/2), so no special-function library is needed.
    """
    a, b = leader_votes + 1, runner_up_votes + 1
    n = a + b - 1
    return math.fsum(math.comb(n, i) for i in range(a)) / 2 ** n


def beta_should_stop(answers: Sequence[str | None], confidence: float) -> bool:
    """Adaptive-Consistency's Beta criterion over the answers so far (None: no answer, not a vote)."""
    counts = Counter(a for a in answers if a is not None).most_common(2)
    if not counts:
        return False
    leader = counts[0][1]
    runner_up = counts[1][1] if len(counts) > 1 else 0
    return leader_beats_runner_up(leader, runner_up) >= confidence


def window_should_stop(answers: Sequence[str | None], window: int) -> bool:
    """ESC: the last `window` samples all have the same (non-empty) answer."""
    if len(answers) < window:
        return False
    last = answers[-window:]
    return last[0] is not None and all(a == last[0] for a in last)


def should_stop(answers: Sequence[str | None], rule: str, confidence: float = 0.95, window: int = 4) -> bool:
    """Whether the votes in `answers` (in sample order; equivalent answers already mapped to one
    representative, e.g. by answers.group_equivalent) have settled under `rule`."""
    if rule == "beta":
        return beta_should_stop(answers, confidence)
    if rule == "window":
        return window_should_stop(answers, window)
    raise ValueError(f"unknown stopping rule {rule!r}; known: {', '.join(STOPPING_RULES)}")
