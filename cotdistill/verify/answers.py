"""Answer formats by name: how to read a gold label, how to find the final answer in a rationale, and when two
answers are equal. Pure functions, no I/O; the filter and evaluate stages both score through this registry.

    fmt = get_answer_format(config.filter.answer_format)   # math: also math={"precision": 2, ...} (MathOptions)
    answer = fmt.extract(rationale, choices).answer; fmt.is_correct(answer, gold)

Every format reads the answer after the reasoning: the text inside a reasoning block (`<think>...</think>` by
default; a format's `delimiters` say which) is never read, and a text whose reasoning never closes has no answer.
An extraction returns the canonical answer or None with a reason: `unparseable` (no answer found), `ambiguous`
(two different marked final answers), `timeout` (math-verify gave up) or `unfinished_reasoning` (the reasoning
block never closed). Marked answers ("The answer is ...", "#### ...", \\boxed{...}) beat the fallback (the last
number in the text; for `math`, what math-verify reads at the end of the text). group_equivalent maps the answers
of several samples to one representative per class of equal answers, for majority votes.

`math` reads and compares with math-verify (its extraction configs, parse and verify, the gold first), with its
settings (MathOptions: precision, latex/expr extraction, strict, set_relation) and what it lacks: the reasoning
block, `ambiguous`, a time limit on every call, and answers of several parts (several boxed answers that go
together), compared as a set, or in order as a tuple, as the gold or the question's answer kind says.
"""

from __future__ import annotations

import functools
import multiprocessing
import re
import string
import threading
import time
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Callable, Sequence


class GoldParseError(ValueError):
    """A gold label that its declared format cannot read."""


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    # None when an answer was found; else "unparseable", "ambiguous", "timeout" or "unfinished_reasoning"
    reason: str | None = None


# What the formats read changes their verdicts on finished corpora: the filter's and evaluate's fingerprints hold
# this, so a change here judges them again. 2: the answer is read after the reasoning block, never inside it.
ANSWER_RULES = 2
# The math format's own rules, beside ANSWER_RULES, in the fingerprints of runs that use it (format_settings):
# 1: math-verify reads the answers and golds it finds, several boxed answers are one answer of several parts.
MATH_RULES = 1
THINK_DELIMITERS = ("<think>", "</think>")  # a reasoning block's opening and closing, unless a model says otherwise


def after_reasoning(text: str, delimiters: tuple[str, str] = THINK_DELIMITERS) -> str | None:
    """The text after the reasoning: after the last closing delimiter; all of it when no block was opened; None
    while a block is open (opened and never closed, or opened again after the last close): no answer yet."""
    start, end = delimiters
    close = text.rfind(end)
    if text.rfind(start) > close:
        return None
    return text[close + len(end):] if close >= 0 else text


def delimiters_of(reasoning_format: str) -> tuple[str, str] | None:
    """The delimiters train.reasoning_format writes around the reasoning ("<think>\\n{reasoning}\\n</think>..." ->
    ("<think>", "</think>")), or None when it writes none."""
    if "{reasoning}" not in reasoning_format or "{answer}" not in reasoning_format:
        return None
    start, rest = reasoning_format.split("{reasoning}", 1)
    end = rest.split("{answer}", 1)[0]
    return (start.strip(), end.strip()) if start.strip() and end.strip() else None


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
    # ASCII only: str.isdigit() is also true of superscripts ("5²"), which int() refuses.
    return text.isascii() and (text.isdigit() or (text[:1] == "-" and text[1:].isdigit()))


def canonical_number(text: str) -> str | None:
    """'$1,234.50' -> '1234.5', '-0' -> '0', '3/4' -> '0.75', '12%' -> '12'. None if not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    cleaned = cleaned.rstrip("%")  # a percentage compares with a gold given as a plain number
    if _is_int(cleaned) and len(cleaned) < 4000:  # the common case, without Decimal; int() refuses 4,300+ digits
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
    return [content for _, _, content in _boxed_spans(text)]


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
# More distinct marked answers than this is a model listing guesses: ambiguous, without parsing each one.
_MAX_MARKED_ANSWERS = 8
# The fallback reads the last formula or number from this many final characters: the answer is at the end, and
# scanning all of a 100 kB degenerate generation for formulas costs more than it can find.
_FALLBACK_TAIL_CHARS = 3000
# Power towers (a^{b^c}, a^b^c), exponents of 4+ digits, numbers of 200+ digits, large factorials.
_BIG_EXPONENT_RE = re.compile(
    r"\^\s*\{?\s*[-+]?\d{4,}|\^\s*\{[^{}]*\^|\^\s*\{?\s*\w+\s*\}?\s*\^|\d{200,}|!\s*!|\d{3,}\s*!"
)

ANSWER_KINDS = ("set", "tuple", "single")  # how an answer of several parts compares (MathOptions.answer_kind)
EXTRACTION_TARGETS = ("latex", "expr")  # math-verify's LatexExtractionConfig and ExprExtractionConfig


@dataclass(frozen=True)
class MathOptions:
    """The `math` format's settings: math-verify's own, by its names where it has one, and how an answer of
    several parts compares. The defaults are math-verify's."""

    # decimal places both numbers are rounded to before comparing (math-verify's float_rounding)
    precision: int = 6
    # what reads an answer: latex (\\boxed{}, $...$, \\[...\\]) and expr (plain numbers and sums, "1 000", "2,74")
    extraction: tuple[str, ...] = EXTRACTION_TARGETS
    # variables must match: f(x) is not f(y) (math-verify's strict)
    strict: bool = True
    # a gold set x \\in [a, b] also equals the relation a \\le x \\le b (math-verify's allow_set_relation_comp)
    set_relation: bool = False
    # an answer of several parts (several boxed answers, a listed answer line) against the gold: as a set, as a
    # tuple (in order), or single (several different parts are ambiguous); None: inferred from the gold
    answer_kind: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.precision, int) or isinstance(self.precision, bool) or not 0 <= self.precision <= 15:
            raise ValueError(f"math precision must be an integer from 0 to 15, got {self.precision!r}")
        targets = tuple(self.extraction)
        if not targets or not set(targets) <= set(EXTRACTION_TARGETS) or len(set(targets)) != len(targets):
            raise ValueError(f"math extraction must name one or both of {', '.join(EXTRACTION_TARGETS)}, got "
                             f"{list(self.extraction)}")
        object.__setattr__(self, "extraction", targets)  # a list from a config: hashable, for the caches
        if self.answer_kind is not None and self.answer_kind not in ANSWER_KINDS:
            raise ValueError(f"answer_kind must be one of {', '.join(ANSWER_KINDS)}, got {self.answer_kind!r}")

    def settings(self) -> dict[str, object]:
        """The settings that differ from the defaults (fingerprints: runs on the defaults keep theirs)."""
        default = MathOptions()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items() if v != getattr(default, k)}


DEFAULT_MATH = MathOptions()


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


# Math environments: $$...$$, \[...\], \(...\) and $...$; an inline $...$ stays on one line and does not open
# right after a digit (math-verify's rules).
_LATEX_ENV_RE = re.compile(  # no longer than _MAX_LATEX_CHARS: a longer formula would be refused anyway
    r"\$\$(?P<display>[^$]{1,500}?)\$\$"
    r"|\\\[(?P<bracket>.{1,500}?)\\\]"
    r"|\\\((?P<paren>.{1,500}?)\\\)"
    r"|(?<![\\\d])\$(?P<inline>(?:\\\$|[^$\n]){1,500}?)(?<!\\)\$",
    re.DOTALL,
)
_LATEX_WORDS_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|begin|end)\s*\{[^{}]*\}|\\[A-Za-z]+")
_PROSE_WORD_RE = re.compile(r"(?<![A-Za-z])[A-Za-z]{3,}")
_LIST_WORDS_RE = re.compile(r"(?<![A-Za-z])(?:and|or)(?![A-Za-z])")
# In plain text a word of two or more letters ends the answer ("18 dollars", "18 because ..."); one-letter
# variables and LaTeX commands do not, and an answer needs a digit or a command.
_WORD_START_RE = re.compile(r"[(\"'*]*(?:[A-Za-z]{2,}|[A-Za-z]\.[A-Za-z])")  # "dollars", "i.e."
_MATHY_RE = re.compile(r"[\d\\]")
_EQUALS_RE = re.compile(r"(?<![<>!\\])=")
_PLAIN_NUMERAL_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_ANSWER_MARKER_RE = re.compile(r"answer\s*(?:is|:|=)|####")
# What may stand between two boxed answers that together are one answer: \\boxed{1}, \\boxed{2} and \\boxed{3};
# \\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}; \\( y_1 = \\boxed{..} \\) and \\( y_2 = \\boxed{..} \\).
_JOINER_RE = re.compile(
    r"(?:\s|[,;~]|\$|\\[()\[\]]|\\q?quad\b|\\[,;:! ]|and\b|or\b"
    r"|\\(?:text|mbox|mathrm)\s*\{\s*(?:,?\s*(?:and|or))?\s*\}"  # \\text{ and }
    r"|[A-Za-z](?:_\{?\w{1,3}\}?)?\s*=)*"  # a label: y_2 =
)
_JOINER_MAX_CHARS = 80
# Golds of digits alone that math-verify reads as numbers: thousands grouped by commas or spaces ("7,425,000",
# "1 000"), and a decimal comma ("1,22"), which LaTeX reads as a list of two: a decimal only where the format
# reads plain numbers alone (extraction [expr]).
_GROUPED_NUMBER_RE = re.compile(r"-?[1-9]\d{0,2}(?:[ ,]\d{3})+(?:\.\d+)?")
_DECIMAL_COMMA_RE = re.compile(r"-?\d+,\d+")


def _prose_inline(content: str) -> bool:
    """An inline $...$ holding words is prose between two currency signs ("pays $18 a day, so $"), not a formula;
    a single word ($odd$, $\\text{Even}$) is a formula."""
    bare = _LIST_WORDS_RE.sub(" ", _LATEX_WORDS_RE.sub(" ", content))  # $19, 46, and 82$ is a list
    return bool(_PROSE_WORD_RE.search(bare)) and len(bare.split()) > 1


def _env_contents(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of each math environment, leaving out prose between currency signs."""
    found = []
    for match in _LATEX_ENV_RE.finditer(text):
        content = match.group(match.lastgroup or "inline")
        if match.lastgroup == "inline" and _prose_inline(content):
            continue
        found.append((match.start(), match.end(), content))
    return found


def _without_prose_dollars(text: str) -> str:
    """The text with the dollar signs around prose made spaces, so that math-verify reads "$18 a day, so $2" as
    two amounts and not as one formula."""
    if "$" not in text:
        return text
    chars = None
    for match in _LATEX_ENV_RE.finditer(text):
        if match.lastgroup == "inline" and _prose_inline(match.group("inline")):
            chars = chars if chars is not None else list(text)
            chars[match.start()] = chars[match.end() - 1] = " "
    return "".join(chars) if chars is not None else text


def _numeral_or_same(math: str) -> str:
    """A plain numeral in canonical form ('1,234.00' -> '1234'): equal numbers become equal strings."""
    if _PLAIN_NUMERAL_RE.fullmatch(math):
        return canonical_number(math) or math
    return math


def _latex_answer(latex: str) -> str | None:
    """A boxed or $...$ answer as is: math-verify reads LaTeX units (18 \\text{ dollars}, \\$18) itself."""
    latex = latex.strip().strip("$").strip().rstrip(".").strip()
    return _numeral_or_same(latex) if latex else None


def _plain_answer(text: str) -> str | None:
    """The first stretch of math in prose: '18 dollars' -> '18', '18 because ...' -> '18', '$1,234' -> '1234',
    '10 + 3 = 13' -> '13' (the result of a worked sum), 'that she has 18 apples' -> '18'."""
    run: list[str] = []
    for token in text.replace("$", "").replace("**", " ").split():
        if not _WORD_START_RE.match(token):
            run.append(token)
        elif any(_MATHY_RE.search(t) for t in run):
            break
        else:
            run = []
    if not any(_MATHY_RE.search(t) for t in run):
        return None
    math = _EQUALS_RE.split(" ".join(run))[-1].strip().rstrip(".,;:!?").strip()
    math = re.sub(r"(?<!\\)%", r"\\%", math)  # % starts a comment in LaTeX
    return _numeral_or_same(math) if math else None


def _boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every \\boxed{...}, with nested braces balanced."""
    found = []
    for match in _BOXED_RE.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, min(len(text), start + 1000)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    found.append((match.start(), i + 1, text[start:i]))
                    break
    return found


def _boxed_groups(text: str) -> list[list[str]]:
    """The boxed answers, grouped: boxed answers in one math environment, or with only joiners between them
    (commas, "and", \\quad, y_2 =), are the parts of one answer (math-verify reads them so)."""
    spans = _boxed_spans(text)
    if len(spans) < 2:
        return [[content] for _, _, content in spans]
    envs = [(start, end) for start, end, _ in _env_contents(text)] if "$" in text or "\\" in text else []

    def env_of(position: int) -> int | None:
        return next((i for i, (start, end) in enumerate(envs) if start <= position < end), None)

    groups = [[spans[0][2]]]
    for (_, end, _), (start, _, content) in zip(spans, spans[1:]):
        between = text[end:start]
        same_env = env_of(start) is not None and env_of(start) == env_of(end - 1)
        if same_env or (len(between) <= _JOINER_MAX_CHARS and _JOINER_RE.fullmatch(between)):
            groups[-1].append(content)
        else:
            groups.append([content])
    return groups


def _group_answers(group: list[str], kind: str | None) -> list[str]:
    """One answer of the group's parts ("1, 2, 3"); with answer_kind single, each part is an answer of its own."""
    parts = list(dict.fromkeys(a for a in (_latex_answer(c) for c in group) if a))
    if kind == "single" or len(parts) < 2:
        return parts
    return [", ".join(parts)]


@dataclass(frozen=True)
class _Read:
    """A span math-verify reads (an answer line with formulas in it, or the tail of a text without a marked
    answer): resolved inside the time limit."""

    text: str


Candidate = str | _Read


def _line_answers(line: str, options: MathOptions) -> list[Candidate]:
    """The answer in the rest of an answer line: its boxed answers, else what math-verify reads in it when it
    holds a formula ("The largest $n$ is 34" -> 34), else its plain answer."""
    for _ in range(3):  # Minerva: "Final Answer: The final answer is $18$. I hope it is correct."
        inner = answer_lines(line)
        if not inner:
            break
        line = inner[-1]
    latex, expr = "latex" in options.extraction, "expr" in options.extraction
    groups = _boxed_groups(line) if latex else []
    if groups:
        return _group_answers(groups[-1], options.answer_kind)
    if latex and _env_contents(line):
        return [_Read(f"Answer: {line}")]  # math-verify's answer anchor: the line's first formula or number
    plain = _plain_answer(line) if expr else None
    return [plain] if plain else []


def _marked_answers(text: str, options: MathOptions) -> tuple[list[Candidate], bool]:
    """The marked answers, the last first (boxed before answer lines), and whether the text marks an answer at
    all. After a "final answer" statement only what follows it counts."""
    lowered = text.lower()
    final = lowered.rfind("final answer") if "final answer" in lowered else -1
    for scope in ([text[final:], text] if final > 0 else [text]):
        boxed = _boxed_groups(scope) if "latex" in options.extraction else []
        lines = answer_lines(scope)
        marked: list[Candidate] = [a for group in reversed(boxed) for a in _group_answers(group, options.answer_kind)]
        marked += [a for line in reversed(lines) for a in _line_answers(line, options)]
        if marked:
            return list(dict.fromkeys(marked)), True
    return [], bool(_BOXED_RE.search(text) or _ANSWER_MARKER_RE.search(lowered))


def _extraction_configs(extraction: tuple[str, ...]) -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # boxed_match_priority 0: a boxed answer ranks with "final answer is" (as math-verify's own tests read them)
    return [LatexExtractionConfig(boxed_match_priority=0) if target == "latex" else ExprExtractionConfig()
            for target in extraction]


@functools.lru_cache(maxsize=8192)
def _read(text: str, extraction: tuple[str, ...], timeout_s: int) -> str | None:
    """The answer math-verify reads in a text, as the string it read (its normalized LaTeX, or the number as
    digits: "2,74 $" -> "2.74"), also when sympy cannot parse that string (then only the same string equals it,
    as math-verify compares them); None when it finds nothing. Raises TimeoutError."""
    from math_verify import parse
    from math_verify.errors import TimeoutException

    try:
        # first_match: the string comes from the match math-verify tried first (with any_match it would be the
        # first tried, not the one that parsed)
        found = parse(_without_prose_dollars(text), _extraction_configs(extraction), fallback_mode="first_match",
                      extraction_mode="first_match", parsing_timeout=timeout_s, raise_on_error=True)
    except TimeoutException:
        raise TimeoutError("math-verify gave up reading") from None
    except Exception:  # math-verify/sympy raise many types on nonsense input; all mean "not an answer"
        return None
    if not found or not isinstance(found[-1], str):
        return None
    answer = _as_written(found[-1], text).strip().rstrip(".").strip()  # "2/3." at the end of a sentence
    return None if not answer or _too_hard_for_sympy(answer) else _numeral_or_same(answer)


def _as_written(read: str, text: str) -> str:
    """What math-verify read, as the text writes it: it normalizes the formulas it reads ($0.5$ -> \\frac{1}{2}),
    and an answer is stored, and voted for, in the model's own form. Its own string when no single formula of the
    text is what it read (numbers in prose, formulas joined by "and")."""
    from latex2sympy2_extended.latex2sympy2 import normalize_latex
    from math_verify import LatexExtractionConfig

    envs = [content for _, _, content in reversed(_env_contents(text))]
    written = next((c for c in envs if c.strip() == read.strip()), None)
    if written is None:
        config = LatexExtractionConfig().normalization_config
        written = next((c for c in envs if normalize_latex(c, config).strip() == read.strip()), None)
    return (_latex_answer(written) or read) if written is not None else read


@functools.lru_cache(maxsize=8192)
def _parsed(latex: str, timeout_s: int) -> tuple:
    """math-verify's reading of one answer, () if none; each distinct answer is parsed once per process. Raises
    TimeoutError: math-verify's own TimeoutException is a BaseException, which `except Exception` would miss."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
    from math_verify.errors import TimeoutException

    try:
        return tuple(parse(f"${latex}$", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                           parsing_timeout=timeout_s, raise_on_error=True))
    except TimeoutException:
        raise TimeoutError("math-verify gave up parsing") from None
    except Exception:  # math-verify/sympy raise many types on nonsense input; all mean "not an answer"
        return ()


def _verify(gold: str, answer: str, options: MathOptions, timeout_s: int) -> bool:
    """math-verify's verdict, the gold first as it expects (it unwraps the answer's relation by the gold's:
    x = 5 vs 5 is right, but a gold 7 = 11a + c is not the answer 11a + c)."""
    from math_verify import verify

    parsed_gold, parsed_answer = _parsed(gold, timeout_s), _parsed(answer, timeout_s)
    if not parsed_gold or not parsed_answer:
        return False
    # raise_on_error=False: an error or a timeout in one comparison means "not shown equal", not a crash.
    return bool(verify(list(parsed_gold), list(parsed_answer), float_rounding=options.precision,
                       strict=options.strict, allow_set_relation_comp=options.set_relation,
                       timeout_seconds=timeout_s, raise_on_error=False))


def _math_verify_equal(a: str, b: str, options: MathOptions, timeout_s: int) -> bool:
    """Equal whichever is read as the gold: verify reads its first argument as the gold and unwraps relations by
    it (x = 5 vs 5, 1 < x < 2 vs (1, 2)); trying both ways round makes equality symmetric, so that it can also
    group two samples' answers."""
    from sympy import And
    from sympy.core.relational import Relational

    if _verify(a, b, options, timeout_s):
        return True
    has_relation = any(isinstance(p, (Relational, And)) for p in (*_parsed(a, timeout_s), *_parsed(b, timeout_s)))
    return has_relation and _verify(b, a, options, timeout_s)


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


@functools.lru_cache(maxsize=65536)
def _math_equal_pair(a: str, b: str, options: MathOptions = DEFAULT_MATH) -> bool:
    """math_equal for a pair in sorted order (one cache entry whichever way round it is asked); raises
    TimeoutError."""
    if a.replace(" ", "") == b.replace(" ", ""):
        return True
    if _is_int(a) and _is_int(b) and max(len(a), len(b)) < 4000:  # integers, the common case, need no sympy
        return int(a) == int(b)
    if _too_hard_for_sympy(a) or _too_hard_for_sympy(b):
        return False
    return bool(run_with_signal_timeout(_math_verify_equal, a, b, options))


def math_equal(a: str, b: str, options: MathOptions = DEFAULT_MATH) -> bool:
    """Whether two answers are the same math, whichever of them is the gold: symmetric, so it also groups the
    answers of several samples (group_equivalent). Unreadable or too hard for sympy: not shown equal."""
    if a == b:
        return True
    try:
        return _math_equal_pair(*sorted((a, b)), options)
    except Exception:  # a timeout or a parse failure: not shown equal
        return False


# --- a second opinion: math-verify alone, on the whole text ---

SECOND_VERDICTS = ("right", "wrong", "no_answer", "timeout")  # math_verify_whole_text's verdicts


def _whole_text_verdict(text: str, gold: str, timeout_s: int) -> str:
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    gold_text = gold if "$" in gold or "\\boxed" in gold else f"${gold}$"
    try:
        parsed_gold = parse(gold_text, parsing_timeout=timeout_s, raise_on_error=True)
        # math-verify's defaults throughout: none of this format's own reading (the reasoning block, answer lines)
        parsed = parse(text, parsing_timeout=timeout_s, raise_on_error=True)
    except TimeoutException:
        return "timeout"
    except Exception:  # math-verify/sympy raise many types on nonsense input; all mean "nothing read"
        return "no_answer"
    if not parsed or not parsed_gold:
        return "no_answer"
    return "right" if verify(parsed_gold, parsed, timeout_seconds=timeout_s, raise_on_error=False) else "wrong"


def math_verify_whole_text(text: str, gold: str) -> str:
    """math-verify's own verdict on a whole rationale against the gold (its default extraction and verify, the
    reasoning block included), independent of the format's reading: right, wrong, no_answer or timeout. Bounded
    in time as every math-verify call here is."""
    try:
        return str(run_with_signal_timeout(_whole_text_verdict, text, gold))
    except TimeoutError:
        return "timeout"


# --- answers of several parts ---

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_SIZING_RE = re.compile(r"\\+(?:left|right)(?![A-Za-z])\s*|\\!|\\[,;: ]")  # \left( ... \right), thin spaces


def _parts(latex: str) -> tuple[str, list[str]]:
    """(bracket, parts) of an answer: '(1, 2)' -> ('(', ['1', '2']), '\\{1, 2\\}' -> ('{', ['1', '2']), '1, 2' ->
    ('', ['1', '2']); '(0, 1]' (an interval) and '5' are one part. Commas and semicolons at the top level part."""
    text = _SIZING_RE.sub("", latex.strip()).replace("\\{", "{").replace("\\}", "}")
    bracket = ""
    if text[:1] in _OPENERS and text[-1:] == _OPENERS[text[0]] and _closing(text, 0) == len(text) - 1:
        bracket, text = text[0], text[1:-1]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch in ",;" and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    parts = [p for p in parts if p]
    return (bracket, parts) if len(parts) > 1 else ("", [latex.strip()])


def _closing(text: str, opening: int) -> int:
    """Where the bracket opened at `opening` closes (any bracket type counts), or -1."""
    depth = 0
    for i in range(opening, len(text)):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def answer_kind_of(gold: str) -> str:
    """The kind a gold implies: tuple for '(a, b, ...)' (ordered), set for other answers of several parts
    ('1, 2, 3', '\\{1, 2\\}'), single for the rest."""
    bracket, parts = _parts(gold)
    if len(parts) < 2:
        return "single"
    return "tuple" if bracket == "(" else "set"


def _parts_equal(gold: list[str], answer: list[str], ordered: bool, options: MathOptions, timeout_s: int) -> bool:
    if len(gold) != len(answer):
        return False
    if ordered:
        return all(g == a or _verify(g, a, options, timeout_s) for g, a in zip(gold, answer))
    unmatched = list(answer)
    for g in gold:  # each gold part takes an equal answer part of its own
        match = next((i for i, a in enumerate(unmatched) if g == a or _verify(g, a, options, timeout_s)), None)
        if match is None:
            return False
        unmatched.pop(match)
    return True


def _math_correct(answer: str, gold: str, options: MathOptions, kind: str | None, timeout_s: int) -> bool:
    """Whether an answer is the gold: math-verify's verdict, the gold first; an answer of several parts against
    a gold of several parts also part by part, in order for a tuple, in any order for a set. A declared tuple is
    compared in order only (math-verify takes a set for a tuple written in the same order)."""
    answer_bracket, answer_parts = _parts(answer)
    gold_bracket, gold_parts = _parts(gold)
    several = len(answer_parts) > 1 and len(gold_parts) > 1
    if kind == "tuple" and several:
        return answer_bracket in ("", gold_bracket) and _parts_equal(gold_parts, answer_parts, True, options,
                                                                      timeout_s)
    if _verify(gold, answer, options, timeout_s):
        return True
    kind = kind or answer_kind_of(gold)
    if not several or kind == "single":
        return False
    if kind == "tuple":
        return answer_bracket in ("", gold_bracket) and _parts_equal(gold_parts, answer_parts, True, options,
                                                                      timeout_s)
    return {answer_bracket, gold_bracket} <= {"", "{"} and _parts_equal(gold_parts, answer_parts, False, options,
                                                                        timeout_s)


@functools.lru_cache(maxsize=65536)
def _math_correct_cached(answer: str, gold: str, options: MathOptions, kind: str | None) -> bool:
    if answer.replace(" ", "") == gold.replace(" ", ""):
        return True
    if _is_int(answer) and _is_int(gold) and max(len(answer), len(gold)) < 4000:  # the common case, no sympy
        return int(answer) == int(gold)
    if _too_hard_for_sympy(answer) or _too_hard_for_sympy(gold):
        return False
    return bool(run_with_signal_timeout(_math_correct, answer, gold, options, kind))


def math_correct(answer: str, gold: str, options: MathOptions = DEFAULT_MATH, kind: str | None = None) -> bool:
    """The math format's verdict on an answer against a canonical gold (is_correct's). Not symmetric, as
    math-verify's is not: a gold 7 = 11a + c is not the answer 11a + c, while the answer x = 5 is the gold 5."""
    try:
        return _math_correct_cached(answer, gold, options, kind or options.answer_kind)
    except Exception:  # a timeout or a parse failure: not shown correct
        return False


# --- finding the answer ---


def _resolve(candidates: tuple[Candidate, ...], options: MathOptions, timeout_s: int, deadline: float) -> list[str]:
    """The candidates as answers: the spans math-verify is to read, read. Raises TimeoutError past `deadline`."""
    answers = []
    for candidate in candidates:
        answer = _read(candidate.text, options.extraction, timeout_s) if isinstance(candidate, _Read) else candidate
        if answer:
            answers.append(answer)
        if time.monotonic() > deadline:
            raise TimeoutError("math-verify took too long over the marked answers")
    return list(dict.fromkeys(answers))


def _agreed_answer(candidates: tuple[Candidate, ...], options: MathOptions, timeout_s: int) -> Extraction:
    """The first answer math-verify can read, if every other readable one equals it, else ambiguous. Marked
    spans it cannot read at all do not count. Raises TimeoutError, also when all of it takes too long."""
    deadline = time.monotonic() + 2 * timeout_s
    answers = _resolve(candidates, options, timeout_s, deadline)
    answer = None
    for candidate in answers:
        if _parsed(candidate, timeout_s):
            answer = candidate
            break
        if time.monotonic() > deadline:
            raise TimeoutError("math-verify took too long over the marked answers")
    if answer is None:
        return Extraction(None, "unparseable")
    for other in answers:
        if other != answer and not _math_equal_pair(*sorted((answer, other)), options) and _parsed(other, timeout_s):
            return Extraction(None, "ambiguous")
        if time.monotonic() > deadline:
            raise TimeoutError("math-verify took too long over the marked answers")
    return Extraction(answer)


def _marked_spans(text: str) -> list[str]:
    """What follows each "The answer is" / "Answer:" / "####" on its line, and each \\boxed{...}."""
    return [*_boxed_contents(text), *(line.strip() for line in answer_lines(text))]


def extract_math(text: str, choices: Sequence[str] | None = None, options: MathOptions = DEFAULT_MATH) -> Extraction:
    """The final answer: the marked ones (boxed, answer lines) if they agree, else what math-verify reads in the
    text's last characters; several boxed answers that go together are one answer of several parts."""
    candidates, any_marked = _marked_answers(text, options)
    if not candidates:
        if any_marked:
            return Extraction(None, "unparseable")  # a marked answer too long or unclosed to read: no guess
        tail = text[-_FALLBACK_TAIL_CHARS:]
        if not tail.strip():
            return Extraction(None, "unparseable")
        candidates = [_Read(tail)]
    if len(candidates) > _MAX_MARKED_ANSWERS:
        return Extraction(None, "ambiguous")
    if any(isinstance(c, str) and _too_hard_for_sympy(c) for c in candidates):
        return Extraction(None, "unparseable")
    try:
        return run_with_signal_timeout(_agreed_answer, tuple(candidates), options)
    except TimeoutError:
        return Extraction(None, "timeout")
    except Exception:  # math-verify/sympy raise many types on nonsense input; all mean "not an answer"
        return Extraction(None, "unparseable")


def canonical_math_gold(gold: str, options: MathOptions = DEFAULT_MATH) -> str | None:
    """A gold as the math format compares it: a text with formulas ($...$, \\boxed{}) is read as an answer is (a
    worked solution gives its final answer; what math-verify reads in it when that finds none); grouped digits
    as math-verify reads numbers ('1 000'); any other text is one formula ('3 + 2x', '\\sqrt 2', '1, 2')."""
    text = str(gold).strip()
    if not text:
        return None
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        answer = extract_math(text, None, options).answer
        if answer is None:  # what math-verify reads in it, as it reads golds (\\boxed{1} and \\boxed{2} bins)
            try:
                answer = run_with_signal_timeout(_read, text, options.extraction)
            except Exception:
                return None
        return answer
    if _GROUPED_NUMBER_RE.fullmatch(text) or ("latex" not in options.extraction and _DECIMAL_COMMA_RE.fullmatch(text)):
        try:
            return run_with_signal_timeout(_read, text, ("expr",)) or text
        except Exception:
            return text
    return text


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


# --- programs ------------------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"^```[ \t]*([\w+#.-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL)


def extract_program(text: str, language: str = "python") -> str | None:
    """The last complete fenced block in `language` (or with no language named); text in a <think> block is not
    the answer. None when there is none (no_code)."""
    text = _THINK_RE.sub("", text)
    if "</think>" in text:  # a reasoning block opened by the prompt: what precedes its end is reasoning
        text = text.rsplit("</think>", 1)[1]
    blocks = [(lang.lower(), body) for lang, body in _FENCE_RE.findall(text)]
    for wanted in ({language, "py"} if language == "python" else {language}, {""}):
        chosen = [body for lang, body in blocks if lang in wanted]
        if chosen:
            return chosen[-1]
    return None


def find_program(text: str, choices: Sequence[str] | None = None) -> Extraction:
    """The code format's extraction: the program (not yet its verdict: verify/code.CodeJudge runs it against
    the question's tests, and its answer for votes is what it did on them)."""
    program = extract_program(text)
    return Extraction(program, None if program and program.strip() else "no_code")


def _canonical_reference(gold: str) -> str | None:
    return gold if gold.strip() else None


# --- the registry -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerFormat:
    name: str
    find: Callable[[str, Sequence[str] | None], Extraction]  # the final answer in a text without reasoning
    canonical_gold: Callable[[str], str | None]
    equal: Callable[[str, str], bool]  # symmetric: two samples' answers are one vote (group_equivalent)
    delimiters: tuple[str, str] = THINK_DELIMITERS
    # an answer against a canonical gold, when that is not `equal` (math: the gold first, as math-verify reads it)
    correct: Callable[[str, str], bool] | None = None
    math: MathOptions | None = None  # the math format's settings

    def extract(self, text: str, choices: Sequence[str] | None = None) -> Extraction:
        """The final answer, read after the reasoning block; none while the reasoning is unfinished."""
        answer_text = after_reasoning(text, self.delimiters)
        if answer_text is None:
            return Extraction(None, "unfinished_reasoning")
        return self.find(answer_text, choices)

    def is_correct(self, answer: str | None, gold: str | None) -> bool:
        if answer is None or gold is None:
            return False
        gold_canon = _cached_gold(self.canonical_gold, gold)  # the same gold is checked N times per question
        return gold_canon is not None and (self.correct or self.equal)(answer, gold_canon)

    def with_answer_kind(self, kind: str | None) -> AnswerFormat:
        """This format for a question that declares its answer kind (set | tuple | single; None: the format's
        own). Only math answers have parts: other formats are returned as they are."""
        if self.math is None or kind is None or kind == self.math.answer_kind:
            return self
        return _math_format(self.delimiters, replace(self.math, answer_kind=kind))


@functools.lru_cache(maxsize=4096)
def _cached_gold(canonical_gold: Callable[[str], str | None], gold: str) -> str | None:
    return canonical_gold(gold)


@functools.lru_cache(maxsize=64)
def _math_format(delimiters: tuple[str, str], options: MathOptions) -> AnswerFormat:
    """The math format with these settings; one instance each, so that its gold cache is shared."""
    return AnswerFormat("math", functools.partial(extract_math, options=options),
                        functools.partial(canonical_math_gold, options=options),
                        functools.partial(math_equal, options=options), delimiters,
                        correct=functools.partial(math_correct, options=options), math=options)


def _canonical_letter(gold: str) -> str | None:
    gold = gold.strip().strip("()").upper()
    return gold if len(gold) == 1 and gold.isalpha() else None


def _same(a: str, b: str) -> bool:
    return a == b


ANSWER_FORMATS: dict[str, AnswerFormat] = {
    "number": AnswerFormat("number", extract_number, canonical_number, numbers_equal),
    "math": _math_format(THINK_DELIMITERS, DEFAULT_MATH),
    "choice": AnswerFormat("choice", extract_choice, _canonical_letter, _same),
    "yes_no": AnswerFormat("yes_no", extract_yes_no, _canonical_yes_no, _same),
    "exact": AnswerFormat("exact", extract_exact, normalize_exact, _same),
    # code: a program, judged by running it against the question's tests (verify/code.CodeJudge), never by
    # comparing it with the gold (the reference solution, when the data has one: the STaR hint)
    "code": AnswerFormat("code", find_program, _canonical_reference, _same),
}


# filter.answer_format judge: free-form answers, each judged by the filter's LLM judge (filter.judge); where it
# gives no verdict, and wherever no judge is asked (evaluate, generate's answer checks), exact's rules. Not a format
# the rules decide alone, so apart from ANSWER_FORMATS.
JUDGE_FORMAT = AnswerFormat("judge", extract_exact, normalize_exact, _same)


def group_equivalent(answers: Sequence[str | None], fmt: AnswerFormat) -> list[str | None]:
    """Each answer replaced by the first-seen answer equal to it under fmt (None stays None), so that votes count
    '\\frac{1}{2}', '0.5' and '\\dfrac12' as one answer. Each distinct string is compared once, and only with the
    classes found so far: a question's 64 samples hold a handful of distinct strings."""
    representatives: list[str] = []
    seen: dict[str, str] = {}
    grouped: list[str | None] = []
    for answer in answers:
        if answer is not None and answer not in seen:
            representative = next((r for r in representatives if fmt.equal(answer, r)), None)
            if representative is None:
                representatives.append(answer)
            seen[answer] = answer if representative is None else representative
        grouped.append(None if answer is None else seen[answer])
    return grouped


def get_answer_format(name: str, delimiters: tuple[str, str] | list[str] | None = None,
                      math: MathOptions | dict[str, Any] | None = None) -> AnswerFormat:
    """The format by name, reading answers after `delimiters`' reasoning block (default <think>...</think>);
    `math`: the math format's settings (MathOptions, or a dict of its fields, as a config writes them)."""
    if name not in ANSWER_FORMATS and name != JUDGE_FORMAT.name:
        raise ValueError(f"unknown answer format {name!r}; known: {', '.join(sorted(ANSWER_FORMATS))}; and "
                         f"{JUDGE_FORMAT.name} (the filter's LLM judge)")
    delimiters = tuple(delimiters) if delimiters else THINK_DELIMITERS
    if name == "math":
        options = math if isinstance(math, MathOptions) else MathOptions(**(math or {}))
        return _math_format(delimiters, options)
    if math:
        raise ValueError(f"math settings ({', '.join(sorted(vars(math) if isinstance(math, MathOptions) else math))})"
                         f" apply to answer format math, not {name}")
    fmt = ANSWER_FORMATS.get(name, JUDGE_FORMAT)
    return replace(fmt, delimiters=delimiters) if delimiters != fmt.delimiters else fmt


def format_settings(fmt: AnswerFormat) -> dict[str, Any]:
    """What a format's verdicts depend on besides its name and ANSWER_RULES, for the fingerprints of the stages that
    judge with it: the math format's rules and its settings that are not the defaults; nothing for the other
    formats, so their runs keep their fingerprints."""
    if fmt.math is None:
        return {}
    settings = fmt.math.settings()
    return {"math_rules": MATH_RULES, **({"math": settings} if settings else {})}


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
