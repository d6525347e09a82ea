"""Extraction never raises and never hangs, whatever the teacher wrote; math-verify's timeouts work outside the
main thread too."""

import concurrent.futures
import multiprocessing
import time

from hypothesis import HealthCheck, given, settings, strategies as st

from cotdistill.verify.answers import ANSWER_FORMATS, extract_math, math_equal

LIMIT_S = 5.0
FORMATS = sorted(ANSWER_FORMATS)

latex_atoms = st.sampled_from([
    "\\boxed{", "}", "{", "\\frac{", "^{", "^", "_", "\\sqrt{", "10", "9", "x", "(", ")", "[", "]", "!", "\\pi",
    "\\infty", "+", "-", "*", "/", "=", "The answer is ", "$", "\\left(", "\\right)", "e", "99999", " ", "\\\\",
])
latex_text = st.lists(latex_atoms, max_size=300).map("".join)
# Mostly short arbitrary text, sometimes repeated up to about 100 kB.
unicode_text = st.tuples(st.text(max_size=2000), st.integers(1, 50)).map(lambda t: t[0] * t[1])


def timed_extract(name, text):
    started = time.perf_counter()
    extraction = ANSWER_FORMATS[name].extract(text, ["alpha", "beta", "gamma"])
    return extraction, time.perf_counter() - started


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=unicode_text, name=st.sampled_from(FORMATS))
def test_any_text_extracts_without_error_within_the_limit(text, name):
    extraction, seconds = timed_extract(name, text)
    assert seconds < LIMIT_S
    assert (extraction.answer is None) == (extraction.reason is not None)
    # no_code: the code format's "unparseable" (no fenced program)
    assert extraction.reason in (None, "unparseable", "ambiguous", "timeout") + (("no_code",) if name == "code" else ())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=latex_text)
def test_random_latex_ends_as_an_answer_or_a_reason(text):
    extraction, seconds = timed_extract("math", text)
    assert seconds < LIMIT_S
    assert extraction.reason in (None, "unparseable", "ambiguous", "timeout")


ADVERSARIAL = [
    "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
    "\\boxed{10^{10^{10^{10}}}}",
    "\\boxed{2^{99999999}}",
    "\\boxed{9^9^9^9^9}",
    "\\boxed{999999999!}",
    "\\boxed{" + "(" * 400 + "x" + ")" * 400 + "}",
    "\\boxed{" + "\\sqrt{" * 200 + "2" + "}" * 200 + "}",
    "\\boxed{" + "1" * 100000 + "}",
    "The answer is $" + "x^" * 2000 + "2$",
]


def test_adversarial_latex_is_unparseable_or_timeout_never_a_hang():
    for text in ADVERSARIAL:
        extraction, seconds = timed_extract("math", text)
        assert seconds < LIMIT_S, text[:60]
        assert extraction.answer is None and extraction.reason in ("unparseable", "timeout"), (text[:60], extraction)


def _extract_in_worker(text):
    return extract_math(text).answer, math_equal("\\frac{1}{2}", "0.5")


def test_math_verify_works_in_worker_processes_and_threads():
    text = "so \\boxed{\\frac{1}{2}}"
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert list(pool.map(_extract_in_worker, [text, text])) == [("\\frac{1}{2}", True)] * 2
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # signal.alarm is refused off the main thread
        assert list(pool.map(_extract_in_worker, [text])) == [("\\frac{1}{2}", True)]
