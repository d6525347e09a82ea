"""filter.audit_verifier: the filter's verdicts judged again by a second verifier, on a seeded sample.

    report = audit_verdicts(config, shards, stats)     # stats.json's "audit_verifier"; audit.md's section

Half the sample is drawn from the accepted rationales and half from those rejected as wrong, unparseable,
ambiguous or timeout (the verdicts an answer check gives; the others say nothing about the answer), with the
run's seed. The second verifier judges each on its own (`math_verify_whole_text`: math-verify reads the whole
rationale with its own defaults; `judge`: the LLM judge of filter.judge). Where it cannot decide (a timeout, a
judge reply that is not a verdict, the judge's budget spent) the row is left out of the rates and counted.

Two disagreements: accepted but the second says wrong (a false positive of one of them), and rejected but the
second says right (a good rationale the filter may have thrown away). Rates carry Wilson 95% intervals; the
filter's false-negative rate as a whole is estimated as r * R / (A + r * R), r the second's "right" rate among
the sampled rejected rows, R the rejected rows they were drawn from and A the accepted rows, its interval from
r's.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cotdistill.config.run import RunConfig

logger = logging.getLogger(__name__)

AUDITED_REASONS = ("wrong", "unparseable", "ambiguous", "timeout")  # the answer check's rejections
MAX_EXAMPLES = 10  # of each disagreement, in stats.json and audit.md
EXAMPLE_CHARS = 600  # a longer rationale is shown by its two ends
COLUMNS = ["question_id", "sample_index", "teacher_name", "question", "gold_answer", "rationale",
           "extracted_answer", "filter_reason"]
# The second verifier's verdicts: those that say right, those that say wrong; any other is undecided.
SAYS_RIGHT = frozenset({"right", "equivalent"})
SAYS_WRONG = frozenset({"wrong", "no_answer", "different"})


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion (95% by default): unlike the normal approximation it
    stays inside [0, 1] and is not empty at 0 or n successes, which small audit samples often give."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def _locations(folder: Path, shards: list[Path], reasons: tuple[str, ...] | None) -> list[tuple[Path, int]]:
    """(file, row) of every row in the folder's shards, or of those rejected for one of `reasons`; only the
    filter_reason column is read, so the draw costs little on a big corpus."""
    found: list[tuple[Path, int]] = []
    for shard in shards:
        path = folder / shard.name
        if not path.is_file():  # a shard that kept (or rejected) nothing writes no file
            continue
        if reasons is None:
            found.extend((path, i) for i in range(pq.ParquetFile(path).metadata.num_rows))
            continue
        why = pq.read_table(path, columns=["filter_reason"]).column("filter_reason")
        mask = pc.is_in(why, value_set=pa.array(list(reasons))).to_pylist()
        found.extend((path, i) for i, hit in enumerate(mask) if hit)
    return found


def _rows(chosen: list[tuple[Path, int]]) -> list[dict[str, Any]]:
    by_file: dict[Path, list[int]] = {}
    for path, i in chosen:
        by_file.setdefault(path, []).append(i)
    rows: list[dict[str, Any]] = []
    for path, indices in sorted(by_file.items()):
        rows.extend(pq.read_table(path, columns=COLUMNS).take(sorted(indices)).to_pylist())
    return rows


def draw(accepted: list[tuple[Path, int]], rejected: list[tuple[Path, int]], size: int,
         seed: int) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Half of `size` from each side, the rest from the other when one side has too few; seeded."""
    rng = random.Random(f"{seed}:audit_verifier")
    n_accepted = min(len(accepted), max(size // 2, size - len(rejected)))
    n_rejected = min(len(rejected), size - n_accepted)
    return (sorted(rng.sample(accepted, n_accepted)), sorted(rng.sample(rejected, n_rejected)))


def second_verdicts(config: RunConfig, rows: list[dict[str, Any]]) -> tuple[list[str], str]:
    """The second verifier's verdict on each row, and its name as the report shows it."""
    second = config.filter.audit_verifier.second
    if second == "judge":
        from cotdistill.teachers.judge import Judge

        judge = Judge.for_run(config)
        try:
            verdicts = judge.verdicts([(r["question"] or "", r["gold_answer"], r["rationale"] or "") for r in rows])
        finally:
            judge.close()
        return [v.verdict for v in verdicts], f"judge ({judge.model_name})"
    from cotdistill.verify.answers import math_verify_whole_text

    return [math_verify_whole_text(r["rationale"] or "", r["gold_answer"]) if r["gold_answer"] is not None
            else "no_gold" for r in rows], second


def _share(disagree: int, decided: int) -> dict[str, Any]:
    return {"decided": decided, "disagree": disagree, "rate": round(disagree / decided, 6) if decided else None,
            "ci": [round(x, 6) for x in wilson_interval(disagree, decided)] if decided else None}


def _example(row: dict[str, Any], verdict: str) -> dict[str, Any]:
    text = (row["rationale"] or "").strip()
    if len(text) > EXAMPLE_CHARS:
        text = text[:EXAMPLE_CHARS // 2] + " [...] " + text[-EXAMPLE_CHARS // 2:]
    return {"question_id": row["question_id"], "sample_index": row["sample_index"],
            "teacher_name": row["teacher_name"], "gold_answer": row["gold_answer"],
            "extracted_answer": row["extracted_answer"], "filter_reason": row["filter_reason"],
            "second_verdict": verdict, "rationale": text}


def summarize_audit(accepted_rows: list[dict[str, Any]], accepted_verdicts: list[str],
                    rejected_rows: list[dict[str, Any]], rejected_verdicts: list[str], accepted_total: int,
                    rejected_by_reason: dict[str, int], second: str, sample: int, seed: int) -> dict[str, Any]:
    """The report from the judged sample (pure: the unit tests build it from constructed rows)."""
    decided_a = [(r, v) for r, v in zip(accepted_rows, accepted_verdicts) if v in SAYS_RIGHT | SAYS_WRONG]
    decided_r = [(r, v) for r, v in zip(rejected_rows, rejected_verdicts) if v in SAYS_RIGHT | SAYS_WRONG]
    wrong_a = [(r, v) for r, v in decided_a if v in SAYS_WRONG]
    right_r = [(r, v) for r, v in decided_r if v in SAYS_RIGHT]
    rejected_total = sum(rejected_by_reason.values())
    report: dict[str, Any] = {
        "second": second, "sample": sample, "seed": seed,
        "verdicts": dict(Counter(accepted_verdicts + rejected_verdicts)),
        "undecided": len(accepted_rows) + len(rejected_rows) - len(decided_a) - len(decided_r),
        "disagreement": _share(len(wrong_a) + len(right_r), len(decided_a) + len(decided_r)),
        "accepted_but_wrong": {"population": accepted_total, "sampled": len(accepted_rows),
                               **_share(len(wrong_a), len(decided_a)),
                               "examples": [_example(r, v) for r, v in wrong_a[:MAX_EXAMPLES]]},
        "rejected_but_right": {"population": rejected_total, "population_by_reason": rejected_by_reason,
                               "sampled": len(rejected_rows), **_share(len(right_r), len(decided_r)),
                               "by_reason": dict(Counter(r["filter_reason"] for r, _ in right_r)),
                               "examples": [_example(r, v) for r, v in right_r[:MAX_EXAMPLES]]},
        "false_negative_rate": None,
    }
    if decided_r:  # r * R good rationales thrown away, of A + r * R good ones in all
        def rate(r: float) -> float:
            lost = r * rejected_total
            return lost / (accepted_total + lost) if accepted_total + lost else 0.0

        r = len(right_r) / len(decided_r)
        low, high = wilson_interval(len(right_r), len(decided_r))
        report["false_negative_rate"] = {"estimate": round(rate(r), 6), "ci": [round(rate(low), 6),
                                                                                round(rate(high), 6)],
                                         "good_rationales_dropped": round(r * rejected_total, 1)}
    return report


def audit_verdicts(config: RunConfig, shards: list[Path], stats: dict[str, Any]) -> dict[str, Any]:
    """Draw the sample from the filter's outputs, judge it with the second verifier, and report."""
    cfg, paths = config.filter.audit_verifier, config.paths
    accepted, rejected = draw(_locations(paths.accepted, shards, None),
                              _locations(paths.rejected, shards, AUDITED_REASONS), cfg.sample, config.seed)
    accepted_rows, rejected_rows = _rows(accepted), _rows(rejected)
    verdicts, name = second_verdicts(config, accepted_rows + rejected_rows)
    report = summarize_audit(accepted_rows, verdicts[:len(accepted_rows)], rejected_rows,
                             verdicts[len(accepted_rows):], stats["accepted"],
                             {r: stats["rejected"].get(r, 0) for r in AUDITED_REASONS if stats["rejected"].get(r)},
                             name, cfg.sample, config.seed)
    logger.info("filter: audit by %s: %s of %s decided rationales disagree", name,
                report["disagreement"]["disagree"], report["disagreement"]["decided"])
    return report


def _pct(share: dict[str, Any]) -> str:
    if not share["decided"]:
        return "- (none decided)"
    low, high = share["ci"]
    return f"{share['rate']:.1%} [{low:.1%}, {high:.1%}] ({share['disagree']:,} of {share['decided']:,})"


def audit_section(report: dict[str, Any]) -> list[str]:
    """audit.md's lines for the audit by the second verifier."""
    a, r = report["accepted_but_wrong"], report["rejected_but_right"]
    lines = [
        "## Audit by a second verifier", "",
        f"Second verifier: `{report['second']}`, on a sample of {a['sampled'] + r['sampled']:,} rationales (seed "
        f"{report['seed']}): {a['sampled']:,} accepted, {r['sampled']:,} rejected as "
        f"{', '.join(AUDITED_REASONS[:-1])} or {AUDITED_REASONS[-1]}. Undecided (left out of the rates): {report['undecided']:,}. Its verdicts: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(report["verdicts"].items())) + ".", "",
        "| disagreement | rate [95% interval] |", "| --- | --- |",
        f"| any | {_pct(report['disagreement'])} |",
        f"| accepted, but the second says wrong | {_pct(a)} |",
        f"| rejected as wrong or unparseable, but the second says right | {_pct(r)} |", "",
    ]
    fnr = report["false_negative_rate"]
    if fnr is not None:
        lines += [f"Estimated false-negative rate of the filter: {fnr['estimate']:.1%} [{fnr['ci'][0]:.1%}, "
                  f"{fnr['ci'][1]:.1%}] of the good rationales (about {fnr['good_rationales_dropped']:,} of the "
                  f"{r['population']:,} rejected by the answer check, beside {a['population']:,} accepted).", ""]
    for key, title in (("accepted_but_wrong", "Accepted, but the second says wrong"),
                       ("rejected_but_right", "Rejected, but the second says right")):
        examples = report[key]["examples"]
        if not examples:
            continue
        lines += [f"### {title}", ""]
        for e in examples:
            lines += [f"- question `{e['question_id']}`, sample {e['sample_index']}"
                      + (f", teacher `{e['teacher_name']}`" if e.get("teacher_name") else "")
                      + f": filter {e['filter_reason'] or 'accepted'}, extracted `{e['extracted_answer']}`, gold "
                      f"`{e['gold_answer']}`; second: {e['second_verdict']}", "",
                      "  > " + e["rationale"].replace("\n", "\n  > "), ""]
    return lines
