"""The wordsteps task (cotdistill/questions/wordsteps.py), the data of benchmarks/distill_quality.py: seeded, so the
same on every run and every machine; its splits share no question; every gold answer is what its worked steps
compute. Cheap (no model): the distill_quality smoke, in tests/test_benchmarks.py, runs the pipeline on it."""

from __future__ import annotations

import hashlib
import json
import random
import re

from cotdistill.questions.wordsteps import SPLITS, make_problem, make_splits, worked_rationale, write_splits
from cotdistill.verify.answers import get_answer_format

SMALL = {"pretrain": 400, "train": 100, "validation": 40, "test": 60}


def digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.jsonl"))}


def test_the_splits_are_written_byte_for_byte_the_same_by_two_seeded_runs(tmp_path):
    write_splits(tmp_path / "a", seed=0, sizes=SMALL)
    write_splits(tmp_path / "b", seed=0, sizes=SMALL)
    write_splits(tmp_path / "c", seed=1, sizes=SMALL)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert set(digest(tmp_path / "a")) == {f"{split}.jsonl" for split in SMALL}
    assert digest(tmp_path / "a") != digest(tmp_path / "c")  # the seed is what fixes them
    rows = [json.loads(line) for line in (tmp_path / "a" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == SMALL["test"] and set(rows[0]) == {"question", "answer", "depth"}


def test_the_full_splits_share_no_question_and_hold_every_depth_equally():
    splits = make_splits(0, SPLITS)
    assert {name: len(rows) for name, rows in splits.items()} == SPLITS
    seen: dict[str, str] = {}
    for name, rows in splits.items():
        for row in rows:
            assert seen.setdefault(row["question"], name) == name, f"{row['question']!r} in {seen[row['question']]} and {name}"
        depths = [row["depth"] for row in rows]
        assert {d: depths.count(d) for d in (1, 2, 3, 4)} == {d: len(rows) // 4 for d in (1, 2, 3, 4)}
    assert len(seen) == sum(SPLITS.values())


def test_every_gold_answer_is_what_its_steps_compute_and_every_rationale_reads_as_it():
    """Each step's `a op b = c` is right arithmetic, each chains from the one before, the last is the gold; any
    phrasing a teacher learns from ends in the answer the number format extracts."""
    rng = random.Random(7)
    number = get_answer_format("number")
    for i in range(400):
        problem = make_problem(rng, depth=i % 4 + 1)
        gold = int(problem["answer"].rsplit("####", 1)[1])
        steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", problem["answer"])
        assert len(steps) == problem["depth"]
        for a, op, b, c in steps:
            assert eval(f"{a} {op} {b}") == int(c)  # noqa: S307 (digits and one operator, matched above)
        assert int(steps[-1][3]) == gold and 0 < gold <= 200 * 9
        rationale = worked_rationale(problem, rng)
        assert rationale.endswith(f"The answer is {gold}.")
        assert number.extract(rationale).answer == str(gold)
