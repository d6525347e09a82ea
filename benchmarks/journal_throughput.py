"""Questions journaled per second on local disk, crash-safe: can the journal keep up with 64 GPUs?

    .venv/bin/python benchmarks/journal_throughput.py [--questions 4000] [--samples 16] [--chars 2000]
    .venv/bin/python benchmarks/journal_throughput.py --smoke     # 200 questions: the same steps in a second

generate appends one journal record per answered question (its samples, as the shards will hold them) and must
not lose it when the process is killed. This appends `--questions` records of `--samples` rationales of
`--chars` characters each (2,000 characters: about 500 tokens) with cotdistill.core.shards.Journal three ways, in
this run, into a temporary folder beside the repository (local disk):

- fsync_each: an fsync after every record (the journal before group commit);
- grouped: the journal as it is, flushed per record, fsynced at most every JOURNAL_SYNC_INTERVAL_S;
- no_fsync: flushed only, the ceiling the disk and JSON encoding allow.

Each is read back and checked: every record, in order. The last line is a JSON object with
questions_per_s_fsync_each, questions_per_s_grouped, questions_per_s_no_fsync, grouped_over_fsync_each and
mb_per_s_grouped. Target: grouped >= 2,000 questions/s (64 GPUs' worth of questions, say), on 2 cores.
`--smoke` runs the same steps on 200 questions (tests/test_benchmarks.py): its figures say only that it runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cotdistill.core.shards import JOURNAL_SYNC_INTERVAL_S, Journal  # noqa: E402

MODES = {"fsync_each": 0.0, "grouped": JOURNAL_SYNC_INTERVAL_S, "no_fsync": float("inf")}


def record(i: int, samples: int, chars: int) -> dict:
    """A journal record shaped as generate writes it (cotdistill.stages.generate.compaction.journal_record)."""
    text = ("Step by step: 3 + 4 = 7, then 7 * 2 = 14. " * (chars // 40 + 1))[:chars]
    return {"question_id": f"q{i:08d}", "source_row": i + 1, "prompt_tokens": 120, "seconds": 0.5, "retries": 0,
            "skipped": None, "error": None, "missing": 0, "round": 1, "rationalize": False,
            "samples": [{"question_id": f"q{i:08d}", "sample_index": k, "rationale": f"{k} {text}",
                         "finish_reason": "stop", "completion_tokens": chars // 4} for k in range(samples)]}


def run(mode: str, folder: Path, records: list[dict]) -> tuple[float, int]:
    """(seconds to append them all and close, bytes written)."""
    journal = Journal(folder / f"{mode}.jsonl", sync_interval_s=MODES[mode])
    start = time.perf_counter()
    for r in records:
        journal.append(r)
    journal.close()
    seconds = time.perf_counter() - start
    back = journal.read()
    if [r["question_id"] for r in back] != [r["question_id"] for r in records]:
        raise SystemExit(f"{mode}: the journal read back {len(back)} of {len(records)} records")
    return seconds, journal.path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="200 questions: says only that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.questions = 200
    records = [record(i, args.samples, args.chars) for i in range(args.questions)]
    folder = Path(tempfile.mkdtemp(prefix=".journal-bench-", dir=REPO))  # local disk, not a tmpfs /tmp
    try:
        result = {}
        for mode in MODES:
            seconds, size = run(mode, folder, records)
            result[f"questions_per_s_{mode}"] = round(args.questions / seconds, 1)
            if mode == "grouped":
                result["mb_per_s_grouped"] = round(size / seconds / 1e6, 1)
            print(f"{mode:>10}: {args.questions / seconds:10,.0f} questions/s  ({size / 1e6:.1f} MB in "
                  f"{seconds:.2f} s)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result["grouped_over_fsync_each"] = round(result["questions_per_s_grouped"] / result["questions_per_s_fsync_each"],
                                              2)
    result.update(questions=args.questions, samples=args.samples, chars=args.chars,
                  sync_interval_s=JOURNAL_SYNC_INTERVAL_S)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
