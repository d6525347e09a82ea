"""The `math` answer format on real GSM8K rationales ending the ways model families end them, against
math-verify's own reading of the whole text and against the `number` format.

Each of the first 40 GSM8K test rationales (its "#### N" line dropped, the <<...>> calculator notes removed) gets
every ending once with the gold and once with a wrong value; a verdict is right when the right value is judged
correct and the wrong one is not.
"""

import re

from cotdistill.verify.answers import ANSWER_FORMATS, parse_gsm8k_gold

ROWS = 40

ENDINGS = {
    "plain": "The answer is {v}.",
    "hashes": "#### {v}",
    "boxed_dollars": "The final answer is $\\boxed{{{v}}}$.",
    "boxed_parens": "Therefore, the final answer is \\(\\boxed{{{v}}}\\).",
    "boxed_brackets": "Putting it together:\n\\[\\boxed{{{v}}}\\]",
    "minerva": "Final Answer: The final answer is {v}. I hope it is correct.",
    "bold": "**Answer:** {v}",
    "bold_boxed": "**Final Answer:** $\\boxed{{{v}}}$",
    "currency": "The answer is ${v}.",
    "units": "The answer is {v} dollars.",
    "thousands": "The answer is {v:,}.",
    "trailing_zeros": "The answer is {v}.00",
    "restated": "So that makes {v} in all. The answer is {v}.",
    "explanation": "The answer is {v} because that is what the steps above add up to.",
    "no_marker": "So, all in all, that leaves {v} in the end.",
}


def corpus(gsm8k_rows):
    """(text, gold, expected verdict, ending name) for every row, ending and right/wrong value."""
    items = []
    for i, row in enumerate(gsm8k_rows[:ROWS]):
        gold = parse_gsm8k_gold(row["answer"])
        body = re.sub(r"<<[^>]*>>", "", row["answer"].rsplit("####", 1)[0]).rstrip()
        right = int(gold)
        wrong = right + 1 if i % 2 else right * 2 + 3
        assert wrong != right
        for name, ending in ENDINGS.items():
            for value, expected in ((right, True), (wrong, False)):
                items.append((f"{body}\n{ending.format(v=value)}", gold, expected, name))
    return items


def test_math_format_reads_real_endings_at_least_as_well_as_math_verify(gsm8k_rows):
    from math_verify import ExprExtractionConfig, parse, verify

    items = corpus(gsm8k_rows)
    math, number = ANSWER_FORMATS["math"], ANSWER_FORMATS["number"]
    misses: dict[str, list[str]] = {"math": [], "math-verify": [], "number": []}
    for text, gold, expected, name in items:
        if math.is_correct(math.extract(text, None).answer, gold) != expected:
            misses["math"].append(name)
        if number.is_correct(number.extract(text, None).answer, gold) != expected:
            misses["number"].append(name)
        # math-verify as its README shows it: parse(gold, extraction_config=[ExprExtractionConfig()]) for a gold
        # known to be a plain expression (no LaTeX environment), parse(prediction) with the default configs, and
        # verify(gold, prediction) in that order.
        if verify(parse(gold, extraction_config=[ExprExtractionConfig()]), parse(text)) != expected:
            misses["math-verify"].append(name)
    rates = {key: 1 - len(missed) / len(items) for key, missed in misses.items()}
    print(f"\n{len(items)} texts ({ROWS} GSM8K rationales x {len(ENDINGS)} endings x right/wrong): "
          + ", ".join(f"{key} {rate:.3f}" for key, rate in rates.items()))
    assert rates["number"] == 1.0, sorted(set(misses["number"]))
    assert rates["math"] >= rates["math-verify"], (sorted(set(misses["math"])), sorted(set(misses["math-verify"])))
