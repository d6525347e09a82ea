"""Answer formats by name: how to read a gold label, how to find the final answer in a rationale, and when two
answers are equal. Pure functions, no I/O; the filter and evaluate stages both score through this registry.

    fmt = get_answer_format(config.filter.answer_format)
    answer = fmt.extract(rationale, choices).answer; fmt.is_correct(answer, gold)

Every format reads the answer after the reasoning: the text inside a reasoning block (`<think>...</think>` by
default; a format's `delimiters` say which) is never read, and a text whose reasoning never closes has no answer.
An extraction returns the canonical answer or None with a reason: `unparseable` (no answer found), `ambiguous`
(two different marked final answers), `timeout` (math-verify gave up) or `unfinished_reasoning` (the reasoning
block never closed). Marked answers ("The answer is ...", "#### ...", \\boxed{...}) beat the fallback (the last
number in the text; for `math`, the last number or formula). group_equivalent maps the answers of several
samples to one representative per class of equal answers, for majority votes.
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
from typing import Callable, Sequence


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
# More distinct marked answers than this is a model listing guesses: ambiguous, without parsing each one.
_MAX_MARKED_ANSWERS = 8
# The fallback reads the last formula or number from this many final characters: the answer is at the end, and
# scanning all of a 100 kB degenerate generation for formulas costs more than it can find.
_FALLBACK_TAIL_CHARS = 3000
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


# Math environments: $$...$$, \[...\], \(...\) and $...$; an inline $...$ stays on one line and does not open
# right after a digit (math-verify's rules).
_LATEX_ENV_RE = re.compile(  # no longer than _MAX_LATEX_CHARS: a longer formula would be refused anyway
    r"\$\$(?P<display>[^$]{1,500}?)\$\$"
    r"|\\\[(?P<bracket>.{1,500}?)\\\]"
    r"|\\\((?P<paren>.{1,500}?)\\\)"
    r"|(?<![\\\d])\$(?P<inline>(?:\\\$|[^$\n]){1,500}?)(?<!\\)\$",
    re.DOTALL,
)
_LATEX_WORDS_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{[^{}]*\}|\\[A-Za-z]+")
_PROSE_WORD_RE = re.compile(r"(?<![A-Za-z])[A-Za-z]{3,}")
# In plain text a word of two or more letters ends the answer ("18 dollars", "18 because ..."); one-letter
# variables and LaTeX commands do not, and an answer needs a digit or a command.
_WORD_START_RE = re.compile(r"[(\"'*]*(?:[A-Za-z]{2,}|[A-Za-z]\.[A-Za-z])")  # "dollars", "i.e."
_MATHY_RE = re.compile(r"[\d\\]")
_EQUALS_RE = re.compile(r"(?<![<>!\\])=")
_PLAIN_NUMERAL_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_ANSWER_MARKER_RE = re.compile(r"answer\s*(?:is|:|=)|####")


def _env_contents(text: str) -> list[tuple[int, str]]:
    """(end offset, content) of each math environment. An inline $...$ that holds words is prose between two
    currency signs ("pays $18 a day, so $"), not a formula."""
    found = []
    for match in _LATEX_ENV_RE.finditer(text):
        content = match.group(match.lastgroup or "inline")
        if match.lastgroup == "inline" and _PROSE_WORD_RE.search(_LATEX_WORDS_RE.sub(" ", content)):
            continue
        found.append((match.end(), content))
    return found


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


def _line_answer(line: str) -> str | None:
    """The answer in the rest of an answer line: boxed, in a math environment, or plain."""
    for _ in range(3):  # Minerva: "Final Answer: The final answer is $18$. I hope it is correct."
        inner = answer_lines(line)
        if not inner:
            break
        line = inner[-1]
    boxed = _boxed_contents(line)
    if boxed:
        return _latex_answer(boxed[-1])
    envs = _env_contents(line)
    if envs:  # the first formula: the one right after "the answer is"
        return _latex_answer(envs[0][1])
    return _plain_answer(line)


def _fallback_answer(text: str) -> str | None:
    """No marked answer: the last formula or number, whichever ends later, as math-verify does on whole text."""
    tail = text[-_FALLBACK_TAIL_CHARS:]
    envs = _env_contents(tail)
    env_end = envs[-1][0] if envs else -1
    for number in reversed(list(_NUMBER_RE.finditer(tail))):
        if number.end() <= env_end:
            break
        value = canonical_number(number.group())
        if value is not None:
            return value
    return _latex_answer(envs[-1][1]) if envs else None


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


def _math_verify_equal(a: str, b: str, timeout_s: int) -> bool:
    from math_verify import verify
    from sympy import And
    from sympy.core.relational import Relational

    parsed_a, parsed_b = _parsed(a, timeout_s), _parsed(b, timeout_s)
    if not parsed_a or not parsed_b:
        return False
    # raise_on_error=False: an error or a timeout in one comparison means "not shown equal", not a crash.
    if verify(list(parsed_a), list(parsed_b), timeout_seconds=timeout_s, raise_on_error=False):
        return True
    # verify reads its first argument as the gold and unwraps relations by it (x = 5 vs 5, 1 < x < 2 vs (1, 2));
    # trying both ways round makes equality symmetric, so that it can also group two samples' answers.
    has_relation = any(isinstance(p, (Relational, And)) for p in (*parsed_a, *parsed_b))
    return has_relation and bool(verify(list(parsed_b), list(parsed_a), timeout_seconds=timeout_s,
                                        raise_on_error=False))


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
def _math_equal_pair(a: str, b: str) -> bool:
    """math_equal for a pair in sorted order (one cache entry whichever way round it is asked); raises
    TimeoutError."""
    if a.replace(" ", "") == b.replace(" ", ""):
        return True
    if _is_int(a) and _is_int(b) and max(len(a), len(b)) < 4000:  # integers, the common case, need no sympy
        return int(a) == int(b)
    if _too_hard_for_sympy(a) or _too_hard_for_sympy(b):
        return False
    return bool(run_with_signal_timeout(_math_verify_equal, a, b))


def math_equal(a: str, b: str) -> bool:
    """Whether two answers are the same math, whichever of them is the gold: symmetric, so it also groups the
    answers of several samples (group_equivalent). Unreadable or too hard for sympy: not shown equal."""
    if a == b:
        return True
    try:
        return _math_equal_pair(*sorted((a, b)))
    except Exception:  # a timeout or a parse failure: not shown equal
        return False


def _agreed_answer(answers: tuple[str, ...], timeout_s: int) -> Extraction:
    """The first answer math-verify can read, if every other readable one equals it, else ambiguous. Marked
    spans it cannot read at all do not count. Raises TimeoutError, also when all of it takes too long."""
    deadline = time.monotonic() + 2 * timeout_s
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
        if other != answer and not _math_equal_pair(*sorted((answer, other))) and _parsed(other, timeout_s):
            return Extraction(None, "ambiguous")
        if time.monotonic() > deadline:
            raise TimeoutError("math-verify took too long over the marked answers")
    return Extraction(answer)


def _marked_spans(text: str) -> list[str]:
    """What follows each "The answer is" / "Answer:" / "####" on its line, and each \\boxed{...}."""
    return [*_boxed_contents(text), *(line.strip() for line in answer_lines(text))]


def extract_math(text: str, choices: Sequence[str] | None = None) -> Extraction:
    boxed, lines = _boxed_contents(text), answer_lines(text)
    # The last boxed answer first (the most deliberate mark), then the answer lines from the last one.
    marked = [*(_latex_answer(b) for b in reversed(boxed)), *(_line_answer(line) for line in reversed(lines))]
    answers = list(dict.fromkeys(a for a in marked if a))
    if not answers:
        if not (boxed or lines) and ("\\boxed" in text or _ANSWER_MARKER_RE.search(text.lower())):
            return Extraction(None, "unparseable")  # a marked answer too long or unclosed to read: no guess
        fallback = _fallback_answer(text)
        answers = [fallback] if fallback else []
    if not answers:
        return Extraction(None, "unparseable")
    if len(answers) > _MAX_MARKED_ANSWERS:
        return Extraction(None, "ambiguous")
    if any(_too_hard_for_sympy(a) for a in answers):
        return Extraction(None, "unparseable")
    try:
        return run_with_signal_timeout(_agreed_answer, tuple(answers))
    except TimeoutError:
        return Extraction(None, "timeout")
    except Exception:  # math-verify/sympy raise many types on nonsense input; all mean "not an answer"
        return Extraction(None, "unparseable")


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
    equal: Callable[[str, str], bool]
    delimiters: tuple[str, str] = THINK_DELIMITERS

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
    # code: a program, judged by running it against the question's tests (verify/code.CodeJudge), never by
    # comparing it with the gold (the reference solution, when the data has one: the STaR hint)
    "code": AnswerFormat("code", find_program, _canonical_reference, _same),
}


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


def get_answer_format(name: str, delimiters: tuple[str, str] | list[str] | None = None) -> AnswerFormat:
    """The format by name, reading answers after `delimiters`' reasoning block (default <think>...</think>)."""
    if name not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer format {name!r}; known: {', '.join(sorted(ANSWER_FORMATS))}")
    fmt = ANSWER_FORMATS[name]
    return replace(fmt, delimiters=tuple(delimiters)) if delimiters else fmt


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
