"""Answer formats by name: how to read a gold label, how to find the final answer in a rationale, and when two
answers are equal. Pure functions, no I/O; the filter and evaluate stages both score through this registry.

An extraction returns the canonical answer or None with a reason: `unparseable` (no answer found) or `ambiguous`
(two different marked final answers). Marked answers ("The answer is ...", "#### ...", \\boxed{...}) beat the
fallback (the last number in the text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Callable, Sequence


class GoldParseError(ValueError):
    """A gold label that its declared format cannot read."""


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    reason: str | None = None  # None when an answer was found; else "unparseable" or "ambiguous"


# --- numbers ----------------------------------------------------------------------------------------------

# A number: optional sign and $, either properly grouped thousands (1,234,567) or plain digits, optional
# decimals, optional fraction (3/4) or percent.
_NUMBER = r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+)?%?|-?\$?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_BOXED_RE = re.compile(r"\\boxed\s*\{")
# "The answer is ...", "Answer: ...", "#### ...": the rest of that line holds the marked answer.
_ANSWER_LINE_RE = re.compile(
    r"(?:\banswer\s*(?:is|:|=)|####)\s*:?([^\n]{0,200}?)(?=\.\s|\.?$|\n)", re.IGNORECASE | re.MULTILINE
)
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")


def canonical_number(text: str) -> str | None:
    """'$1,234.50' -> '1234.5', '-0' -> '0', '3/4' -> '0.75', '12%' -> '12'. None if not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    cleaned = cleaned.rstrip("%")  # a percentage compares with a gold given as a plain number
    try:
        if "/" in cleaned:
            num, den = cleaned.split("/", 1)
            value = Fraction(Decimal(num)) / Fraction(Decimal(den))
            return _format_decimal(Decimal(value.numerator) / Decimal(value.denominator))
        return _format_decimal(Decimal(cleaned))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None


def _format_decimal(value: Decimal) -> str:
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every \\boxed{...}, with nested braces balanced."""
    found = []
    for match in _BOXED_RE.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, min(len(text), start + 1000)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:i])
                    break
    return found


def extract_number(text: str, choices: Sequence[str] | None = None) -> Extraction:
    marked: list[str] = []
    for content in _boxed_contents(text):
        content = _LATEX_FRAC_RE.sub(r"\1/\2", content.replace("\\!", "").replace("{,}", ","))
        numbers = _NUMBER_RE.findall(content)
        if numbers:
            marked.append(numbers[-1])
    for line in _ANSWER_LINE_RE.findall(text):
        # "The answer is 10 + 3 = 13": the result is after the last "=".
        number = _NUMBER_RE.search(line.rsplit("=", 1)[-1])
        if number:
            marked.append(number.group())
    canon = [c for c in (canonical_number(m) for m in marked) if c is not None]
    if canon:
        if len(set(canon)) > 1:
            return Extraction(None, "ambiguous")
        return Extraction(canon[0])
    numbers = _NUMBER_RE.findall(text)
    for candidate in reversed(numbers):
        value = canonical_number(candidate)
        if value is not None:
            return Extraction(value)
    return Extraction(None, "unparseable")


def numbers_equal(a: str, b: str) -> bool:
    try:
        return Fraction(a) == Fraction(b)
    except (ValueError, ZeroDivisionError):
        return a == b


# --- multiple choice -----------------------------------------------------------------------------------------

_LETTER_MARKED_RES = [
    re.compile(r"answer\s*(?:is|:)?\s*[:=]?\s*\(?\**\s*\(?([A-Za-z])\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"\\boxed\{\s*\(?([A-Za-z])\)?\s*\}"),
]
_LETTER_ANYWHERE_RE = re.compile(r"\(([A-Z])\)|(?<![A-Za-z])([A-Z])\)")


def extract_choice(text: str, choices: Sequence[str] | None = None) -> Extraction:
    n = len(choices) if choices else 26
    valid = {chr(ord("A") + i) for i in range(n)}
    marked = [m.upper() for p in _LETTER_MARKED_RES for m in p.findall(text) if m.upper() in valid]
    if marked:
        if len(set(marked)) > 1:
            return Extraction(None, "ambiguous")
        return Extraction(marked[0])
    if choices:  # the option's own text after "answer is"
        tail = text.lower().rsplit("answer", 1)[-1] if "answer" in text.lower() else ""
        hits = [chr(ord("A") + i) for i, c in enumerate(choices) if c.strip() and c.strip().lower() in tail]
        if len(hits) == 1:
            return Extraction(hits[0])
    loose = [a or b for a, b in _LETTER_ANYWHERE_RE.findall(text)]
    loose = [m for m in loose if m in valid]
    if loose:
        return Extraction(loose[-1])
    return Extraction(None, "unparseable")


# --- the registry -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerFormat:
    name: str
    extract: Callable[[str, Sequence[str] | None], Extraction]
    canonical_gold: Callable[[str], str | None]
    equal: Callable[[str, str], bool]

    def is_correct(self, answer: str | None, gold: str) -> bool:
        if answer is None:
            return False
        gold_canon = self.canonical_gold(gold)
        return gold_canon is not None and self.equal(answer, gold_canon)


def _canonical_letter(gold: str) -> str | None:
    gold = gold.strip().strip("()").upper()
    return gold if len(gold) == 1 and gold.isalpha() else None


ANSWER_FORMATS: dict[str, AnswerFormat] = {
    "number": AnswerFormat("number", extract_number, canonical_number, numbers_equal),
    "choice": AnswerFormat("choice", extract_choice, _canonical_letter, lambda a, b: a == b),
}


def get_answer_format(name: str) -> AnswerFormat:
    if name not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer format {name!r}; known: {', '.join(sorted(ANSWER_FORMATS))}")
    return ANSWER_FORMATS[name]


# --- gold labels as the source gives them ----------------------------------------------------------------------


def parse_gsm8k_gold(value: object) -> str:
    """GSM8K: the gold is the text after '####' on the last line of the worked answer."""
    text = str(value)
    if "####" not in text:
        raise GoldParseError("no '####' marker in the answer")
    gold = text.rsplit("####", 1)[1].strip()
    canon = canonical_number(gold)
    if canon is None:
        raise GoldParseError(f"the text after '####' is not a number: {gold!r}")
    return canon


def parse_plain_gold(value: object) -> str:
    text = str(value).strip()
    if not text:
        raise GoldParseError("the gold answer is empty")
    return text


def parse_choice_letter_gold(value: object) -> str:
    """A letter ('B', '(b)') or an index (1 -> 'B')."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 26:
            raise GoldParseError(f"choice index {value} out of range")
        return chr(ord("A") + value)
    letter = _canonical_letter(str(value))
    if letter is None:
        raise GoldParseError(f"not a choice letter: {value!r}")
    return letter


GOLD_PARSERS: dict[str, Callable[[object], str]] = {
    "gsm8k": parse_gsm8k_gold,
    "plain": parse_plain_gold,
    "choice_letter": parse_choice_letter_gold,
}
