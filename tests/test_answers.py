import pytest

from cotdistill.answers import (
    GoldParseError, extract_choice, extract_number, get_answer_format, parse_choice_letter_gold, parse_gsm8k_gold,
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
    with pytest.raises(ValueError, match="choice, number"):
        get_answer_format("latex")
