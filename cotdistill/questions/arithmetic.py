"""Writes the project's own small demo data set: one- and two-step arithmetic word problems, in GSM8K's format
(the answer's last line is `#### N`), easy enough that a 135M-parameter teacher solves some of them.

    python -m cotdistill.questions.arithmetic            # rewrites data/arithmetic/{train,test}.jsonl and data/fewshot/

Seeded, so the files are the same on every machine.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

NAMES = ["Tom", "Mia", "Sam", "Ava", "Leo", "Zoe", "Ben", "Ivy", "Max", "Lily", "Noah", "Emma"]
ITEMS = ["apples", "pencils", "marbles", "stickers", "cookies", "books", "cards", "shells"]


def make_problem(rng: random.Random) -> dict[str, str]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(5)
    a, b = rng.randint(2, 12), rng.randint(2, 9)
    if kind == 0:
        q = f"{name} has {a} {item}. {name} gets {b} more {item}. How many {item} does {name} have now?"
        steps, answer = f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {item}.", a + b
    elif kind == 1:
        a = a + b
        q = f"{name} had {a} {item} and gave {b} of them to a friend. How many {item} does {name} have left?"
        steps, answer = f"{name} has {a} - {b} = <<{a}-{b}={a - b}>>{a - b} {item} left.", a - b
    elif kind == 2:
        q = f"{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy in total?"
        steps, answer = f"{name} buys {a} * {b} = <<{a}*{b}={a * b}>>{a * b} {item}.", a * b
    elif kind == 3:
        q = f"One notebook costs ${a}. How many dollars do {b} notebooks cost?"
        steps, answer = f"{b} notebooks cost {b} * {a} = <<{b}*{a}={a * b}>>{a * b} dollars.", a * b
    else:
        total = a * b
        q = f"{name} shares {total} {item} equally among {b} friends. How many {item} does each friend get?"
        steps, answer = f"Each friend gets {total} / {b} = <<{total}/{b}={a}>>{a} {item}.", a
    return {"question": q, "answer": f"{steps}\n#### {answer}"}


def rationale_from_answer(answer: str) -> str:
    """A few-shot rationale in the prompt's answer format, from a GSM8K-style worked answer."""
    steps, final = answer.rsplit("####", 1)
    steps = re.sub(r"<<[^>]*>>", "", steps).strip()
    return f"{steps}\nThe answer is {final.strip()}"


def fresh_problems(count: int, seed: int, exclude: set[str]) -> list[dict[str, str]]:
    """`count` more problems of the same kinds, none of whose questions is in `exclude` (e.g. the data set's), for
    measurements that need more held-out questions than data/ has. Seeded: the same list on every machine."""
    rng, problems, seen = random.Random(seed), [], set(exclude)
    while len(problems) < count:
        p = make_problem(rng)
        if p["question"] not in seen:
            seen.add(p["question"])
            problems.append(p)
    return problems


def main(root: Path = Path(__file__).resolve().parents[2] / "data") -> None:
    problems = fresh_problems(124, seed=1234, exclude=set())
    splits = {"train": problems[:96], "test": problems[96:120]}
    fewshot = [{"question": p["question"], "rationale": rationale_from_answer(p["answer"])} for p in problems[120:]]
    (root / "arithmetic").mkdir(parents=True, exist_ok=True)
    (root / "fewshot").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(root / "arithmetic" / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(root / "fewshot" / "arithmetic.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in fewshot)


if __name__ == "__main__":
    main()
