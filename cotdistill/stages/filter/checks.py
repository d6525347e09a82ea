"""The filter's per-text checks: whitespace normalisation, degenerate (looping) text, and decontamination by
hashed word n-grams of the questions. Pure functions.

    is_degenerate(text, n=4, max_share=0.5)      # phases.py, per rationale
"""

from __future__ import annotations

import re
from typing import Iterable

from cotdistill.verify.answers import canonical_number

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


# --- STaR rationalization: a rationale that quotes its hint ------------------------------------------------------

# Words by which a rationale gives away that it was handed the answer (matched case-insensitively).
HINT_PHRASES = re.compile(
    r"\bhint|given answer|answer (?:that )?(?:we|i) (?:were|was|are|am) given|told (?:that )?the (?:final )?answer"
    r"|the (?:final )?answer (?:is|was) given|provided answer|expected answer",
    re.IGNORECASE,
)
_NUMBER_TOKEN = re.compile(r"(?<![\w.])-?\$?\d[\d,]*(?:\.\d+)?")
# A calculation: an equals sign, or a number, an operator and a number.
_CALCULATION = re.compile(r"=|\d\s*[-+*/×÷x]\s*\$?\d")


def quotes_hint(rationale: str, gold: str | None, question: str) -> bool:
    """Whether a rationalized rationale quotes its hint instead of deriving it: it names the hint (HINT_PHRASES:
    "hint", "given answer", "we are told the answer", ..., any case), or the gold number appears in it before its
    first calculation (an "=" or number-operator-number; anywhere, if it has none), unless that number is in the
    question itself. Non-numeric golds (letters, formulas) are judged by the phrases alone."""
    if HINT_PHRASES.search(rationale):
        return True
    gold_number = canonical_number(gold) if gold else None
    if gold_number is None:
        return False
    if any(canonical_number(n) == gold_number for n in _NUMBER_TOKEN.findall(question)):
        return False  # restating the question's own numbers is not quoting
    first = _CALCULATION.search(rationale)
    before = rationale[: first.start()] if first else rationale
    return any(canonical_number(n) == gold_number for n in _NUMBER_TOKEN.findall(before))
