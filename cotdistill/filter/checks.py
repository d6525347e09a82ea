"""The filter's per-text checks: whitespace normalisation, degenerate (looping) text, and decontamination by
hashed word n-grams of the questions. Pure functions."""

from __future__ import annotations

import re
from typing import Iterable

_WORD = re.compile(r"\w+")


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


def repeated_ngram_share(text: str, n: int) -> float:
    """The share of word n-grams that repeat an earlier one: about 0 for prose, near 1 for a loop."""
    words = text.split()
    if len(words) < 2 * n:
        return 0.0
    grams = set(zip(*(words[i:] for i in range(n))))  # tuples built in C
    return 1.0 - len(grams) / (len(words) - n + 1)


def is_degenerate(text: str, n: int, max_share: float) -> bool:
    """repeated_ngram_share(text, n) > max_share, cheaply for the usual rationale: an n-gram can only repeat
    where its first word repeats, so when the share of repeated words is already at most max_share, it is not."""
    words = text.split()
    if len(words) < 2 * n:
        return False
    if (len(words) - len(set(words))) / (len(words) - n + 1) <= max_share:
        return False
    return repeated_ngram_share(text, n) > max_share


# --- decontamination ------------------------------------------------------------------------------------------


def question_ngrams(text: str, n: int) -> set[int]:
    """64-bit hashes of the lower-cased word n-grams of a question (the whole question if shorter than n).

    64 bits, not crc32's 32: with millions of evaluation n-grams, 32-bit collisions would flag clean
    training questions as contaminated."""
    import xxhash

    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {xxhash.xxh64_intdigest(" ".join(words).encode())} if words else set()
    return {xxhash.xxh64_intdigest(" ".join(words[i:i + n]).encode()) for i in range(len(words) - n + 1)}


def build_contamination_index(questions: Iterable[str], n: int) -> frozenset[int]:
    index: set[int] = set()
    for q in questions:
        index |= question_ngrams(q, n)
    return frozenset(index)
