import pytest

from cotdistill.verify.answers import (
    Extraction, GoldParseError, extract_choice, extract_number, get_answer_format, parse_choice_letter_gold,
    parse_gsm8k_gold,
)


def test_every_gsm8k_gold_parses_and_the_worked_answer_extracts_to_it(gsm8k_rows):
    fmt = get_answer_format("number")
    for i, row in enumerate(gsm8k_rows, 1):
        gold = parse_gsm8k_gold(row["answer"])
        assert gold.lstrip("-").replace(".", "", 1).isdigit(), (i, gold)
        # The worked answer ends in "#### N": a marked answer, so extraction must find exactly the gold.
        extraction = extract_number(row["answer"])
        assert extraction.answer is not None, (i, row["answer"][-80:])
        assert fmt.is_correct(extraction.answer, gold), (i, extraction, gold)


@pytest.mark.parametrize("text, expected", [
    ("So she makes 9 * 2 = $18 every day.\nThe answer is 18", "18"),
    ("The answer is $1,234.", "1234"),
    ("The answer is -5", "-5"),
    ("The answer is 3.50 dollars.", "3.5"),
    ("Therefore, the answer is: 42", "42"),
    ("#### 1,000,000", "1000000"),
    ("The final answer is \\boxed{72}.", "72"),
    ("\\boxed{\\frac{3}{4}}", "0.75"),
    ("He pays 20% of 50, which is 10.", "10"),
    ("First 3 + 4 = 7, then 7 * 2 = 14", "14"),
    ("The answer is 10 + 3 = 13", "13"),
    ("The answer is 2 + 3 = 5.\nSo the answer is 5", "5"),
    ("Answer: 0.5", "0.5"),
    ("The answer is 3/4", "0.75"),
    ("The answer is 12.0", "12"),
    ("She has 5 apples left. The answer is 5 apples.", "5"),
    ("The total cost is $2,500.75", "2500.75"),
    ("The answer is -0", "0"),
    ("The answer is 15%", "15"),
    ("The temperature dropped to -12 degrees.", "-12"),
    ("The answer is **7**.", "7"),
    ("Final answer: $\\boxed{1,000}$", "1000"),
    ("#### -3.5", "-3.5"),
    ("The answer is .5", "0.5"),
    ("Total = 4 + 5 = 9 apples\nThe answer is: 9", "9"),
    ("The answer = 21", "21"),
    ("3 boxes of 12 eggs is 36 eggs in total", "36"),
])
def test_number_extraction(text, expected):
    assert extract_number(text).answer == expected


@pytest.mark.parametrize("text, reason", [
    ("I do not know.", "unparseable"),
    ("", "unparseable"),
    ("The answer is 5. Wait, the answer is 6.", "ambiguous"),
    ("\\boxed{4} but #### 5", "ambiguous"),
])
def test_number_extraction_failures(text, reason):
    extraction = extract_number(text)
    assert extraction.answer is None and extraction.reason == reason


def test_answer_lines_keep_their_case_and_survive_length_changing_lower_case():
    from cotdistill.verify.answers import answer_lines

    assert answer_lines("THE ANSWER IS $\\Sigma X$.") == ["$\\Sigma X$"]
    assert answer_lines("İİ The answer is 7") == ["7"]  # "İ".lower() is two characters long
    assert extract_number("İstanbul has 3 ferries. The answer is 3.").answer == "3"


def test_marked_answer_beats_a_later_number():
    assert extract_number("The answer is 7. I used 3 steps.").answer == "7"


@pytest.mark.parametrize("text, expected", [
    ("The answer is (B).", "B"),
    ("So the answer is c", "C"),
    ("Answer: D", "D"),
    ("I think (A) fits best.", "A"),
    ("The answer is blue.", "B"),
])
def test_choice_extraction(text, expected):
    assert extract_choice(text, ["red", "blue", "green", "black"]).answer == expected


@pytest.mark.parametrize("text, expected", [
    ("B) is right because the sky is blue.", "B"),
    ("The answer is: (c)", "C"),
    ("Answer: (A)", "A"),
    ("\\boxed{D}", "D"),
    ("After thinking, the answer is green.", "C"),
])
def test_choice_extraction_more_forms(text, expected):
    assert extract_choice(text, ["red", "blue", "green", "black"]).answer == expected


MATH = get_answer_format("math")


@pytest.mark.parametrize("text, gold", [
    ("So the result is \\boxed{\\frac{1}{2}}.", "0.5"),
    ("The answer is $\\sqrt{2}$", "\\sqrt 2"),
    ("\\boxed{\\frac{\\pi}{4}}", "\\pi/4"),
    ("\\boxed{(0, 1]}", "(0,1]"),
    ("\\boxed{\\{1, 2, 3\\}}", "\\{3,2,1\\}"),
    ("\\boxed{2x + 3}", "3 + 2x"),
    ("\\boxed{x^2 - 1}", "(x-1)(x+1)"),
    ("The answer is $\\dfrac{3}{4}$.", "\\frac34"),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}"),
    ("\\boxed{-\\infty}", "-\\infty"),
])
def test_math_answers_equal_to_gold(text, gold):
    extraction = MATH.extract(text, None)
    assert extraction.answer is not None, extraction
    assert MATH.is_correct(extraction.answer, gold)


@pytest.mark.parametrize("text, gold", [
    ("\\boxed{\\frac{1}{3}}", "0.5"),
    ("\\boxed{\\sqrt{3}}", "\\sqrt 2"),
    ("\\boxed{[0, 1]}", "(0,1]"),
])
def test_math_answers_not_equal_to_gold(text, gold):
    assert not MATH.is_correct(MATH.extract(text, None).answer, gold)


@pytest.mark.parametrize("text, reason", [
    ("no formula here", "unparseable"),
    ("\\boxed{1} and later \\boxed{2}", "ambiguous"),
    ("\\boxed{10^{10^{10}}}", "unparseable"),
    ("\\boxed{99999!}", "unparseable"),
])
def test_math_failures(text, reason):
    assert MATH.extract(text, None).reason == reason


@pytest.mark.parametrize("text, expected", [
    ("Birds can fly, so the answer is yes.", "yes"),
    ("The answer is No", "no"),
    ("Answer: True", "yes"),
    ("It is false that pigs fly.", "no"),
    ("Is it? Yes. Well... no.", "no"),
])
def test_yes_no(text, expected):
    assert get_answer_format("yes_no").extract(text, None).answer == expected


def test_yes_no_failures_and_gold():
    fmt = get_answer_format("yes_no")
    assert fmt.extract("The answer is yes. Actually, the answer is no.", None).reason == "ambiguous"
    assert fmt.extract("maybe", None).reason == "unparseable"
    assert fmt.is_correct("yes", "True") and not fmt.is_correct("no", "yes")


@pytest.mark.parametrize("text, gold", [
    ("The answer is The Eiffel Tower.", "eiffel tower"),
    ("Answer: Paris", "paris!"),
    ("I reason a lot.\nMount Everest", "Mount Everest"),
    ("The answer is an apple", "Apple"),
])
def test_exact(text, gold):
    fmt = get_answer_format("exact")
    assert fmt.is_correct(fmt.extract(text, None).answer, gold)


def test_choice_ambiguous_and_unparseable():
    assert extract_choice("The answer is (A). No, the answer is (B).", ["x", "y"]).reason == "ambiguous"
    assert extract_choice("no idea", ["x", "y"]).reason == "unparseable"
    assert extract_choice("The answer is (E)", ["x", "y"]).reason == "unparseable"  # no option E


def test_equality_is_numeric():
    fmt = get_answer_format("number")
    assert fmt.is_correct("18", "18.00")
    assert fmt.is_correct("1234", "1,234")
    assert not fmt.is_correct("18", "19")
    assert not fmt.is_correct(None, "18")


def test_gold_parsers_name_the_problem():
    with pytest.raises(GoldParseError, match="no '####'"):
        parse_gsm8k_gold("just text")
    with pytest.raises(GoldParseError, match="not a number"):
        parse_gsm8k_gold("x\n#### many")
    assert parse_choice_letter_gold("(b)") == "B" and parse_choice_letter_gold(2) == "C"
    with pytest.raises(GoldParseError):
        parse_choice_letter_gold("maybe")


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(ValueError, match="choice, code, exact, math, number, yes_no"):
        get_answer_format("latex")


@pytest.mark.parametrize("text", [
    "The final answer is $\\boxed{18}$.",
    "**Final Answer:** $\\boxed{18}$",
    "Final Answer: The final answer is $18$. I hope it is correct.",
    "Therefore, the final answer is \\(\\boxed{18}\\).",
])
def test_math_boxed_answer_and_its_answer_line_are_one_answer(text):
    extraction = MATH.extract(text, None)
    assert extraction == Extraction("18") and MATH.is_correct(extraction.answer, "18")


def test_math_marked_answers_agree_by_value_and_different_ones_stay_ambiguous():
    assert MATH.is_correct(MATH.extract("The answer is 0.5, so \\boxed{\\frac{1}{2}}", None).answer, "1/2")
    assert MATH.extract("The final answer is $\\boxed{18}$. Wait, the answer is 19.", None).reason == "ambiguous"


@pytest.mark.parametrize("text", [
    "The answer is 18 dollars.",
    "The answer is 18 because she sells the other 9 eggs for 2 dollars each.",
    # No marker at all: like the number format, the last number.
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day at the farmers' market.",
])
def test_math_reads_plain_answers_with_units_reasons_or_no_marker(text):
    extraction = MATH.extract(text, None)
    assert extraction.answer is not None, extraction
    assert MATH.is_correct(extraction.answer, "18") and not MATH.is_correct(extraction.answer, "19")


def test_group_equivalent_maps_equal_answers_to_the_first_seen():
    from cotdistill.verify.answers import ANSWER_FORMATS, group_equivalent

    grouped = group_equivalent(["\\frac{1}{2}", "0.5", "\\dfrac12", "3", None, "0.5"], ANSWER_FORMATS["math"])
    assert grouped == ["\\frac{1}{2}", "\\frac{1}{2}", "\\frac{1}{2}", "3", None, "\\frac{1}{2}"]
    assert group_equivalent(["18", "18.00", None, "7"], ANSWER_FORMATS["number"]) == ["18", "18", None, "7"]


@pytest.mark.parametrize("a, b", [("1 < x < 2", "(1, 2)"), ("3 + 6 = 9", "9")])
def test_math_equal_is_symmetric(a, b):
    from cotdistill.verify.answers import math_equal

    assert math_equal(a, b) and math_equal(b, a)


def test_math_verify_timeout_is_a_reason_not_an_escaping_base_exception(monkeypatch):
    import math_verify
    from math_verify.errors import TimeoutException

    from cotdistill.verify import answers

    def hang(*args, **kwargs):
        raise TimeoutException("Operation timed out!")  # a BaseException, as math-verify raises it

    monkeypatch.setattr(math_verify, "parse", hang)
    # Answers no other test reads: nothing cached for them (a timeout is never cached).
    assert MATH.extract("\\boxed{123457}", None) == Extraction(None, "timeout")
    assert not answers.math_equal("\\frac{1}{7}", "0.142857")


def test_gsm8k_gold_with_a_superscript_is_a_gold_parse_error():
    from cotdistill.verify.answers import canonical_number

    assert canonical_number("5²") is None
    with pytest.raises(GoldParseError, match="not a number"):
        parse_gsm8k_gold("5 squared\n#### 5²")


def test_numbers_too_long_for_int_are_not_numbers():
    assert extract_number("1" * 5000).reason == "unparseable"  # a degenerate generation, not a crash


# --- answers are read after the reasoning -------------------------------------------------------------------

THINK_CASES = {  # format: (a marked answer inside the block, another after it, what the second reads as)
    "number": ("The answer is 40.", "The answer is 36", "36"),
    "math": ("The final answer is $\\boxed{40}$.", "The final answer is $\\boxed{36}$.", "36"),
    "choice": ("It might be (B). The answer is (B).", "The answer is (C).", "C"),
    "yes_no": ("The answer is yes.", "The answer is no.", "no"),
    "exact": ("The answer is Paris.", "The answer is Rome.", "rome"),
}


@pytest.mark.parametrize("name", sorted(THINK_CASES))
def test_every_format_reads_only_after_the_reasoning(name):
    from cotdistill.verify.answers import get_answer_format

    inside, after, expected = THINK_CASES[name]
    fmt = get_answer_format(name)
    choices = ["red", "green", "blue"] if name == "choice" else None
    assert fmt.extract(f"<think>{inside}</think> {after}", choices).answer == expected
    assert fmt.extract(f"<think>{inside}</think>", choices).answer is None  # the block's answer never counts
    unclosed = fmt.extract(f"<think>Let me see. {inside} And then", choices)
    assert unclosed == Extraction(None, "unfinished_reasoning")  # the reasoning never closed: no answer yet
    assert fmt.extract(f"<think>{inside}</think> {after} <think>wait", choices).reason == "unfinished_reasoning"
    assert fmt.extract(after, choices).answer == expected  # no reasoning block: the whole text is the answer


def test_the_issues_examples_and_other_delimiters():
    from cotdistill.verify.answers import delimiters_of, get_answer_format

    number = get_answer_format("number")
    assert number.extract("<think>The answer is 40.</think> 36").answer == "36"
    assert number.extract("<think>Let me try 12*3 = 36 and then").answer is None
    choice = get_answer_format("choice")
    assert choice.extract("<think>It might be (B). The answer is (B).</think> The answer is (C).",
                          ["x", "y", "z"]).answer == "C"
    marked = get_answer_format("number", ["<reasoning>", "</reasoning>"])
    assert marked.extract("<reasoning>The answer is 1</reasoning> The answer is 2").answer == "2"
    assert marked.extract("<think>The answer is 1</think> 2").answer == "1"  # not its delimiters: read
    assert delimiters_of("<think>\n{reasoning}\n</think>\n\n{answer}") == ("<think>", "</think>")
    assert delimiters_of("{answer}") is None and delimiters_of("{reasoning}\n{answer}") is None


# --- math: answers of several parts, math-verify's settings, answers in prose (issue 29) -------------------------


def correct(fmt, text, gold):
    return fmt.is_correct(fmt.extract(text).answer, gold)


@pytest.mark.parametrize("text, gold", [
    ("\\boxed{1}, \\boxed{2}, \\boxed{3}", "\\{1,2,3\\}"),
    ("\\boxed{1} and \\boxed{2} and \\boxed{3}", "{3, 2, 1}"),
    ("$$\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}$$", "(6, 2), (2, 2)"),
    ("So \\boxed{k = 45} and \\boxed{n = 2}.", "k = 45, n = 2"),
    ("\\( y_1 = \\boxed{2x} \\) and \\( y_2 = \\boxed{3x} \\)", "y_1 = 2x, y_2 = 3x"),
])
def test_math_boxed_answers_that_go_together_are_one_answer_compared_as_a_set(text, gold):
    assert correct(MATH, text, gold)
    assert not correct(MATH, text, "1")


def test_math_answer_kinds_from_the_gold_or_declared():
    from cotdistill.verify.answers import answer_kind_of

    assert [answer_kind_of(g) for g in ("(1, 2)", "1, 2", "\\{1, 2\\}", "(0, 1]", "5")] == [
        "tuple", "set", "set", "single", "single"]
    assert correct(MATH, "\\boxed{3}, \\boxed{2}, \\boxed{1}", "1, 2, 3")  # a set: any order
    assert not correct(MATH, "\\boxed{3}, \\boxed{2}, \\boxed{1}", "(1, 2, 3)")  # a tuple: in order
    assert correct(MATH, "\\boxed{1}, \\boxed{2}, \\boxed{3}", "(1, 2, 3)")
    as_tuple, as_set, single = (MATH.with_answer_kind(k) for k in ("tuple", "set", "single"))
    assert correct(as_tuple, "\\boxed{1}, \\boxed{2}", "(1, 2)")
    assert not correct(as_tuple, "\\boxed{2}, \\boxed{1}", "(1, 2)")
    assert correct(as_set, "\\boxed{2}, \\boxed{1}", "1, 2") and not correct(as_set, "\\boxed{2}, \\boxed{3}", "1, 2")
    assert single.extract("\\boxed{1}, \\boxed{2}") == Extraction(None, "ambiguous")
    assert single.extract("\\boxed{1}, \\boxed{1}") == Extraction("1")
    assert MATH.with_answer_kind(None) is MATH and get_answer_format("number").with_answer_kind("set").name == "number"
    with pytest.raises(ValueError, match="answer_kind must be one of set, tuple, single"):
        MATH.with_answer_kind("list")


def test_math_compares_the_gold_first_as_math_verify_does():
    assert not correct(MATH, "$11a+c$", "$7 = 11a+c$")  # the gold's relation is not its right-hand side
    assert not correct(MATH, "$0$", "$a + 3z = 0$")
    assert correct(MATH, "so $x = 5$", "5")  # the answer's is
    assert not correct(MATH, "$-2 \\le x \\le 7$", "$x \\in [-2,7]$")


def test_math_settings_are_math_verifys_and_the_format_takes_them():
    precise = get_answer_format("math", math={"precision": 2})
    assert correct(precise, "$(0.6,2.6667]$", "$(\\frac{3}{5},\\frac{8}{3}]$")
    assert not correct(MATH, "$(0.6,2.6667]$", "$(\\frac{3}{5},\\frac{8}{3}]$")
    latex = get_answer_format("math", math={"extraction": ["latex"]})
    assert latex.extract("Answer $ \n 9 \n $").reason == "unparseable"  # an inline formula stays on one line
    assert correct(MATH, "Answer $ \n 9 \n $", "9") and correct(latex, "Answer \\[ \n 9 \n \\]", "9")
    assert correct(get_answer_format("math", math={"strict": False}), "$f(y)$", "$f(x)$")
    assert not correct(MATH, "$f(y)$", "$f(x)$")
    assert correct(get_answer_format("math", math={"set_relation": True}), "$-2 \\le x \\le 7$", "$x \\in [-2,7]$")
    expr = get_answer_format("math", math={"extraction": ["expr"]})
    assert correct(expr, "1.22", "1,22") and correct(expr, "1000,99", "1000.99")
    assert get_answer_format("math", math={"precision": 2}) is precise  # one instance per settings
    for bad, message in (({"precision": -1}, "precision"), ({"extraction": ["latex", "text"]}, "extraction"),
                         ({"answer_kind": "list"}, "answer_kind")):
        with pytest.raises(ValueError, match=message):
            get_answer_format("math", math=bad)
    with pytest.raises(ValueError, match="apply to answer format math, not number"):
        get_answer_format("number", math={"precision": 2})


@pytest.mark.parametrize("text, gold", [
    ("1 000", "1000"),
    ("Soucis : 2,74 $ a..", "2.74"),
    ("\\frac{10}{9}", "10/9"),
    ("-\\frac{10}{9}", "-10/9"),
    ("$odd$", "$\\text{odd}$"),
    ("The identity matrix is $ \\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix} $.",
     "$\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}$"),
    ("Final Answer: The largest $n$ is 34.", "34"),
    ("So $0.04 \\cdot 10,000 = \\boxed{200}$, then $\\boxed{255}$, so $10,455 in all. Final Answer: The final answer "
     "is $10,455$. I hope it is correct.", "10455"),  # boxed steps before the final answer are not answers
    ("\\boxed{14}", "We add: $5 + 9 = 14$, so the total is $\\boxed{14}$."),  # a worked gold gives its answer
])
def test_math_reads_numbers_matrices_and_final_answers_as_math_verify_does(text, gold):
    assert correct(MATH, text, gold)


def test_math_reads_no_number_out_of_a_word_and_keeps_ambiguity_after_a_final_answer():
    assert MATH.extract("AZYUK2A").reason == "unparseable"
    assert MATH.extract("Final answer: \\boxed{18}. Wait, the answer is \\boxed{19}.").reason == "ambiguous"
    assert MATH.extract("<think>\\boxed{9}</think> \\boxed{1}, \\boxed{2}") == Extraction("1, 2")
