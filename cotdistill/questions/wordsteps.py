"""Word problems of graded depth, written by a program with their gold answers and worked rationales: the task of
benchmarks/distill_quality.py, where reasoning matters and accuracy is measurable at CPU scale.

    python -m cotdistill.questions.wordsteps DIR        # DIR/{pretrain,train,validation,test}.jsonl, seeded

Each problem starts from one person's count of something and takes 1 to 4 steps: getting more (add), giving some
away (subtract), a count growing by a factor (multiply), another person having some more or fewer (compare), and
selling at a price (rate). The question asks for the count after the last step. Every row is in GSM8K's format
(the answer's last line is `#### N`) with its `depth`. The worked rationales come in several phrasings per step,
drawn at random: a model trained on them samples varied texts at temperature 1, as a teacher should.

The splits share no question. `pretrain` is what the benchmark's teacher learns the task from (its own
rationales, written here); `train` holds the questions the teacher is asked and the students learn from;
`validation` chooses settings; `test` is scored once.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

NAMES = ["Tom", "Mia", "Sam", "Ava", "Leo", "Zoe", "Ben", "Ivy", "Max", "Lily", "Noah", "Emma", "Jack", "Ruby"]
ITEMS = ["apples", "pencils", "marbles", "stickers", "cookies", "books", "cards", "shells", "stamps", "coins"]
MAX_VALUE = 200  # every count along the way stays at or below this
SPLITS = {"pretrain": 20000, "train": 1000, "validation": 300, "test": 600}


def _step(rng: random.Random, name: str, item: str, value: int, depth_left: int) -> tuple[str, list[str], str, str,
                                                                                              int]:
    """One step from `name` having `value` `item`: (the sentence, the rationale's phrasings, whose count it is
    now, what is counted, the new value)."""
    kinds = ["add", "subtract", "multiply", "compare"]
    if depth_left == 1 and item != "dollars":
        kinds.append("rate")  # selling ends a problem: a price is the last step
    while True:
        kind = rng.choice(kinds)
        if kind == "add":
            k = rng.randint(2, 15)
            new = value + k
            sentence = rng.choice([f"{name} gets {k} more {item}.", f"Then {name} finds {k} more {item}."])
            lines = [f"{name} has {value} + {k} = {new} {item}.", f"{value} + {k} = {new}, so {name} has {new} {item}.",
                     f"After getting {k} more, {name} has {value} + {k} = {new} {item}."]
            return sentence, lines, name, item, new
        if kind == "subtract" and value > 2:
            k = rng.randint(1, value - 1)
            new = value - k
            other = rng.choice([n for n in NAMES if n != name])
            sentence = rng.choice([f"{name} gives {k} {item} to {other}.", f"{name} loses {k} {item}."])
            lines = [f"{name} has {value} - {k} = {new} {item} left.",
                     f"{value} - {k} = {new}, so {name} has {new} left.",
                     f"Taking away {k} leaves {name} with {value} - {k} = {new} {item}."]
            return sentence, lines, name, item, new
        if kind == "multiply" and value * 2 <= MAX_VALUE:
            k = rng.choice([f for f in (2, 3, 4) if value * f <= MAX_VALUE])
            new = value * k
            word = {2: "doubles", 3: "triples", 4: "grows to four times its size"}[k]
            sentence = f"Then the number of {item} {name} has {word}."
            lines = [f"{name} has {value} * {k} = {new} {item}.", f"{value} * {k} = {new}, so {name} has {new} {item}.",
                     f"{k} times {value} is {value} * {k} = {new} {item}."]
            return sentence, lines, name, item, new
        if kind == "compare":
            other = rng.choice([n for n in NAMES if n != name])
            k = rng.randint(1, 12)
            if rng.random() < 0.5 and value + k <= MAX_VALUE:
                new, word, sign = value + k, "more", "+"
            elif value > k:
                new, word, sign = value - k, "fewer", "-"
            else:
                continue
            sentence = f"{other} has {k} {word} {item} than {name}."
            lines = [f"{other} has {value} {sign} {k} = {new} {item}.",
                     f"{value} {sign} {k} = {new}, so {other} has {new} {item}.",
                     f"{other} has {k} {word} than {value}, which is {value} {sign} {k} = {new} {item}."]
            return sentence, lines, other, item, new
        if kind == "rate" and value * 2 <= MAX_VALUE:
            k = rng.choice([p for p in range(2, 10) if value * p <= MAX_VALUE])
            new = value * k
            sentence = f"{name} sells each of the {item} for ${k}."
            lines = [f"{name} gets {value} * {k} = {new} dollars.", f"{value} * {k} = {new}, so {name} gets ${new}.",
                     f"Selling {value} {item} at ${k} each gives {value} * {k} = {new} dollars."]
            return sentence, lines, name, "dollars", new


def make_problem(rng: random.Random, depth: int) -> dict:
    """A problem of `depth` steps, with its gold answer (GSM8K's format: the worked steps, then `#### N`) and the
    phrasings of each step (`phrasings`: one list per step) that worked_rationale draws from."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, 20)
    sentences, steps = [f"{name} has {value} {item}."], []
    who, what = name, item
    for left in range(depth, 0, -1):
        sentence, lines, who, what, value = _step(rng, who, what, value, left)
        sentences.append(sentence)
        steps.append(lines)
    ask = f"How many dollars does {who} get?" if what == "dollars" else f"How many {what} does {who} have now?"
    question = " ".join(sentences + [ask])
    return {"question": question, "answer": "\n".join(lines[0] for lines in steps) + f"\n#### {value}",
            "depth": depth, "phrasings": steps}


def worked_rationale(problem: dict, rng: random.Random) -> str:
    """One worked rationale, each step in a phrasing drawn at random, ending as the number format reads it."""
    final = problem["answer"].rsplit("####", 1)[1].strip()
    return "\n".join(rng.choice(lines) for lines in problem["phrasings"]) + f"\nThe answer is {final}."


def make_splits(seed: int = 0, sizes: dict[str, int] = SPLITS) -> dict[str, list[dict]]:
    """The splits, depths 1 to 4 in equal shares, no question in two splits. Seeded: the same on every machine."""
    rng, seen, splits = random.Random(seed), set(), {}
    for split, size in sizes.items():
        rows = []
        while len(rows) < size:
            problem = make_problem(rng, depth=len(rows) % 4 + 1)
            if problem["question"] not in seen:
                seen.add(problem["question"])
                rows.append(problem)
        splits[split] = rows
    return splits


def write_splits(folder: str | Path, seed: int = 0, sizes: dict[str, int] = SPLITS) -> dict[str, Path]:
    """DIR/<split>.jsonl for every split (question, answer, depth), each written whole or not at all."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in make_splits(seed, sizes).items():
        path = folder / f"{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps({k: r[k] for k in ("question", "answer", "depth")}) + "\n" for r in rows)
        tmp.replace(path)
        paths[split] = path
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m cotdistill.questions.wordsteps DIR")
    for split, path in write_splits(sys.argv[1]).items():
        print(split, path)
