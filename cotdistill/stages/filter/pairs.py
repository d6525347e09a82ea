"""Preference pairs from one judged shard: what the filter already knows (which rationales of a question reached
its label and which did not) as chosen/rejected pairs for DPO, in TRL's conversational preference format.

    pairs = preference_pairs(judged, reasons=["wrong"], per_question=1, seed=0, prompt=render, as_student=join)

Per question, chosen is an accepted rationale and rejected a rationale of the same question whose filter_reason
is one of `reasons`; up to `per_question` pairs are drawn uniformly from all such (chosen, rejected) combinations,
seeded by the run's seed and the question, so the draw depends on no shard order nor worker count. A question
without both sides gives no pair. Pure: a table in, rows of records.PAIR_SCHEMA out.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import pyarrow as pa


def preference_pairs(judged: pa.Table, reasons: list[str], per_question: int, seed: int,
                     prompt: Callable[[str, list[str] | None], list[dict[str, str]]],
                     as_student: Callable[[str, str | None], str]) -> list[dict[str, Any]]:
    """`judged`: a shard with the filter's columns (judge.judge_table). `prompt(question, choices)`: the student's
    prompt messages; `as_student(rationale, reasoning)`: the text the student learns (records.student_text)."""
    wanted = set(reasons)
    cols = {name: judged.column(name).to_pylist() for name in
            ("question_id", "question", "choices", "sample_index", "rationale", "reasoning", "filter_reason")}
    chosen: dict[str, list[int]] = {}
    rejected: dict[str, list[int]] = {}
    for row, (qid, why) in enumerate(zip(cols["question_id"], cols["filter_reason"])):
        if why is None:
            chosen.setdefault(qid, []).append(row)
        elif why in wanted:
            rejected.setdefault(qid, []).append(row)

    def in_order(rows: list[int]) -> list[int]:  # by sample index: the draw never depends on the rows' order
        return sorted(rows, key=cols["sample_index"].__getitem__)

    pairs = []
    for qid in sorted(set(chosen) & set(rejected)):
        combos = [(c, r) for c in in_order(chosen[qid]) for r in in_order(rejected[qid])]
        drawn = random.Random(f"{seed}:{qid}:pairs").sample(combos, min(per_question, len(combos)))
        for c, r in sorted(drawn, key=lambda cr: (cols["sample_index"][cr[0]], cols["sample_index"][cr[1]])):
            pairs.append({
                "prompt": prompt(cols["question"][c], cols["choices"][c]),
                "chosen": [{"role": "assistant", "content": as_student(cols["rationale"][c] or "",
                                                                         cols["reasoning"][c])}],
                "rejected": [{"role": "assistant", "content": as_student(cols["rationale"][r] or "",
                                                                           cols["reasoning"][r])}],
                "question_id": qid,
                "chosen_sample_index": cols["sample_index"][c],
                "rejected_sample_index": cols["sample_index"][r],
                "rejected_reason": cols["filter_reason"][r],
            })
    return pairs
