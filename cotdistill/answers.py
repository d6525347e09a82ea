"""Answer formats by name: how to read a gold label, how to find the final answer in a rationale, and when two
answers are equal. Pure functions, no I/O; the filter and evaluate stages both score through this registry.

An extraction returns the canonical answer or None with a reason: `unparseable` (no answer found) or `ambiguous`
(two different marked final answers) or `timeout` (math-verify gave up). Marked answers ("The answer is ...", "#### ...", \\boxed{...}) beat the
fallback (the last number in the text).
"""

from __future__ import annotations

import functools
import multiprocessing
import re
import string
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Callable, Sequence


class GoldParseError(ValueError):
    """A gold label that its declared format cannot read."""


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    reason: str | None = None  # None when an answer was found; else "unparseable", "ambiguous" or "timeout"


# --- numbers ----------------------------------------------------------------------------------------------

# A number: optional sign and $, either properly grouped thousands (1,234,567) or plain digits, optional
# decimals, optional fraction (3/4) or percent.
_NUMBER = r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+)?%?|-?\$?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_BOXED_RE = re.compile(r"\\boxed\s*\{")
# "The answer is ...", "Answer: ...", "#### ...": the rest of that line holds the marked answer.
# Matched against the lower-cased text, without IGNORECASE or a leading \b: a literal prefix lets the regex
# engine skip ahead, four times faster, and the filter runs this on every rationale.
_ANSWER_LINE_RE = re.compile(r"(?:answer\s*(?:is|:|=)|####)\s*:?([^\n]{0,200}?)(?=\.\s|\.?$|\n)", re.MULTILINE)
_ANSWER_LINE_ANY_CASE_RE = re.compile(_ANSWER_LINE_RE.pattern, re.MULTILINE | re.IGNORECASE)


def answer_lines(text: str) -> list[str]:
    """The rest of the line after each "The answer is", "Answer:", "Answer =" or "####", in the original case."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters lower-case to two ("İ"): offsets would not line up
        return _ANSWER_LINE_ANY_CASE_RE.findall(text)
    return [text[m.start(1):m.end(1)] for m in _ANSWER_LINE_RE.finditer(lowered)]
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")


def _is_int(text: str) -> bool:
    return text.isdigit() or (text[:1] == "-" and text[1:].isdigit())


def canonical_number(text: str) -> str | None:
    """'$1,234.50' -> '1234.5', '-0' -> '0', '3/4' -> '0.75', '12%' -> '12'. None if not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    cleaned = cleaned.rstrip("%")  # a percentage compares with a gold given as a plain number
    if _is_int(cleaned):  # the common case, without Decimal
        return str(int(cleaned))
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


def _one_answer(marked: list[str]) -> Extraction:
    """Marked final answers that all agree give that answer; two different ones are ambiguous, not a guess."""
    return Extraction(marked[0]) if len(set(marked)) == 1 else Extraction(None, "ambiguous")


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
    for line in answer_lines(text):
        # "The answer is 10 + 3 = 13": the result is after the last "=".
        number = _NUMBER_RE.search(line.rsplit("=", 1)[-1])
        if number:
            marked.append(number.group())
    canon = [c for c in (canonical_number(m) for m in marked) if c is not None]
    if canon:
        return _one_answer(canon)
    numbers = _NUMBER_RE.findall(text)
    for candidate in reversed(numbers):
        value = canonical_number(candidate)
        if value is not None:
            return Extraction(value)
    return Extraction(None, "unparseable")


def numbers_equal(a: str, b: str) -> bool:
    if a == b:  # both canonical: the common case needs no Fraction
        return True
    if _is_int(a) and _is_int(b):  # two different canonical integers
        return False
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
        return _one_answer(marked)
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


# --- LaTeX and symbolic math, with math-verify ------------------------------------------------------------------

MATH_TIMEOUT_S = 2
_MAX_LATEX_CHARS = 500
# Power towers (a^{b^c}, a^b^c), exponents of 4+ digits, numbers of 200+ digits, large factorials.
_BIG_EXPONENT_RE = re.compile(
    r"\^\s*\{?\s*[-+]?\d{4,}|\^\s*\{[^{}]*\^|\^\s*\{?\s*\w+\s*\}?\s*\^|\d{200,}|!\s*!|\d{3,}\s*!"
)


def _too_hard_for_sympy(latex: str) -> bool:
    """Inputs that make sympy compute for minutes (10^{10^{10}}, 99999!) or recurse deeply: refuse them."""
    depth = max_depth = 0
    for ch in latex:
        if ch in "{([":
            depth += 1
            max_depth = max(max_depth, depth)
        elif ch in "})]":
            depth -= 1
    return len(latex) > _MAX_LATEX_CHARS or max_depth > 20 or bool(_BIG_EXPONENT_RE.search(latex))


def _math_verify_parse(latex: str, timeout_s: int) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(f"${latex}$", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                 parsing_timeout=timeout_s, raise_on_error=True)


def _math_verify_equal(gold: str, answer: str, timeout_s: int) -> bool:
    from math_verify import verify

    gold_parsed, answer_parsed = _math_verify_parse(gold, timeout_s), _math_verify_parse(answer, timeout_s)
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=timeout_s, raise_on_error=True))


def run_with_signal_timeout(fn: Callable, *args: object) -> object:
    """math-verify times out with signal.alarm, which only works in a process's main thread. There (the CLI, and
    each worker process of the filter) it runs as is; from any other thread, in a one-off process whose main
    thread has the signal. Raises TimeoutError when math-verify gives up."""
    if threading.current_thread() is threading.main_thread():
        return fn(*args, MATH_TIMEOUT_S)
    # multiprocessing.Pool, not ProcessPoolExecutor: leaving the executor's `with` waits for a hung worker,
    # while terminate() ends it.
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return pool.apply_async(fn, (*args, MATH_TIMEOUT_S)).get(timeout=MATH_TIMEOUT_S * 4 + 30)
    except multiprocessing.TimeoutError:
        raise TimeoutError("math-verify did not return in time") from None
    finally:
        pool.terminate()


def _marked_spans(text: str) -> list[str]:
    """What follows each "The answer is" / "Answer:" / "####" on its line, and each \\boxed{...}."""
    return [*_boxed_contents(text), *(line.strip() for line in answer_lines(text))]


def extract_math(text: str, choices: Sequence[str] | None = None) -> Extraction:
    spans = [s.strip().strip("$").strip() for s in _marked_spans(text)]
    spans = [s for s in spans if s]
    if not spans:
        inline = re.findall(r"\$([^$]{1,200})\$", text)  # fallback: the last inline formula
        spans = inline[-1:]
    if not spans:
        return Extraction(None, "unparseable")
    if len({re.sub(r"\s+", "", s) for s in spans}) > 1:
        return Extraction(None, "ambiguous")
    answer = spans[-1]
    if _too_hard_for_sympy(answer):
        return Extraction(None, "unparseable")
    try:
        parsed = run_with_signal_timeout(_math_verify_parse, answer)
    except TimeoutError:
        return Extraction(None, "timeout")
    except Exception:  # math-verify/sympy raise many types on nonsense input; all mean "not an answer"
        return Extraction(None, "unparseable")
    return Extraction(answer) if parsed else Extraction(None, "unparseable")


@functools.lru_cache(maxsize=65536)
def math_equal(answer: str, gold: str) -> bool:
    if answer.replace(" ", "") == gold.replace(" ", ""):
        return True
    if _too_hard_for_sympy(answer) or _too_hard_for_sympy(gold):
        return False
    try:
        return bool(run_with_signal_timeout(_math_verify_equal, gold, answer))
    except Exception:  # a timeout or a parse failure: not shown equal
        return False


def _canonical_math_gold(gold: str) -> str | None:
    boxed = _boxed_contents(gold)
    gold = (boxed[-1] if boxed else gold).strip().strip("$").strip()
    return gold or None


# --- yes / no and exact strings -------------------------------------------------------------------------------

_YES_NO_RE = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_YES_NO = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}


def extract_yes_no(text: str, choices: Sequence[str] | None = None) -> Extraction:
    marked = []
    for span in _marked_spans(text):
        word = _YES_NO_RE.search(span)
        if word:
            marked.append(_YES_NO[word.group(1).lower()])
    if marked:
        return _one_answer(marked)
    words = _YES_NO_RE.findall(text)
    return Extraction(_YES_NO[words[-1].lower()]) if words else Extraction(None, "unparseable")


def _canonical_yes_no(gold: str) -> str | None:
    return _YES_NO.get(str(gold).strip().lower().rstrip("."))


_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


def normalize_exact(text: str) -> str | None:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    text = _ARTICLES_RE.sub(" ", str(text).lower().translate(_PUNCTUATION))
    text = " ".join(text.split())
    return text or None


def extract_exact(text: str, choices: Sequence[str] | None = None) -> Extraction:
    marked = [n for n in (normalize_exact(s) for s in _marked_spans(text)) if n]
    if marked:
        return _one_answer(marked)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = normalize_exact(lines[-1]) if lines else None
    return Extraction(last) if last else Extraction(None, "unparseable")


# --- the registry -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerFormat:
    name: str
    extract: Callable[[str, Sequence[str] | None], Extraction]
    canonical_gold: Callable[[str], str | None]
    equal: Callable[[str, str], bool]

    def is_correct(self, answer: str | None, gold: str | None) -> bool:
        if answer is None or gold is None:
            return False
        gold_canon = _cached_gold(self.canonical_gold, gold)  # the same gold is checked N times per question
        return gold_canon is not None and self.equal(answer, gold_canon)


@functools.lru_cache(maxsize=4096)
def _cached_gold(canonical_gold: Callable[[str], str | None], gold: str) -> str | None:
    return canonical_gold(gold)


def _canonical_letter(gold: str) -> str | None:
    gold = gold.strip().strip("()").upper()
    return gold if len(gold) == 1 and gold.isalpha() else None


def _same(a: str, b: str) -> bool:
    return a == b


ANSWER_FORMATS: dict[str, AnswerFormat] = {
    "number": AnswerFormat("number", extract_number, canonical_number, numbers_equal),
    "math": AnswerFormat("math", extract_math, _canonical_math_gold, math_equal),
    "choice": AnswerFormat("choice", extract_choice, _canonical_letter, _same),
    "yes_no": AnswerFormat("yes_no", extract_yes_no, _canonical_yes_no, _same),
    "exact": AnswerFormat("exact", extract_exact, normalize_exact, _same),
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
