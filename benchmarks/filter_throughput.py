"""Filter throughput and memory on a million synthetic rationales.

    .venv/bin/python benchmarks/filter_throughput.py [--rationales 1000000] [--per-question 50] [--workers 2]
                                                     [--math-rationales 20000]
    .venv/bin/python benchmarks/filter_throughput.py --smoke     # 2,000 rationales: the same steps in seconds

Writes generate shards of synthetic rationales (50 per question: correct, wrong, truncated, unparseable,
ambiguous, exact and near duplicates, loops), then runs the filter stage with the `number` format twice in
this run: near-duplicate removal off, then on. Then the `math` format's answer check alone (extract and
is_correct, math-verify included) on --math-rationales rationales of the same kinds, in this process. Prints
rationales/s of each run, the math check's cost per rationale and the peak resident memory (this process plus
the peak of each worker, added up as if all peaked at once); the last line is a JSON object with
rationales_per_s_exact, rationales_per_s_near_dup, math_check_us_per_rationale and peak_rss_mb.
Targets on 2 cores: >= 50,000/s without near duplicates, >= 10,000/s with them, peak RSS <= 1,500 MB.
`--smoke` runs the same steps on 2,000 rationales (tests/test_benchmarks.py): its figures say only that it runs.

Rows are built as cotdistill.core.records.Sample and written with every SAMPLE_SCHEMA column, so a column added to the
schema later (with a default in Sample) cannot break this benchmark.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402

from cotdistill.stages import filter as filter_stage  # noqa: E402
from cotdistill.config.load import load_config  # noqa: E402
from cotdistill.core.fingerprints import make_fingerprint, write_fingerprint  # noqa: E402
from cotdistill.core.records import SAMPLE_SCHEMA, Sample  # noqa: E402
from cotdistill.core.shards import shard_name, write_json_atomic, write_parquet_atomic  # noqa: E402

# --smoke: 40 questions of 50 in 2 shards, 2 workers; 300 rationales for the math check
SMOKE = {"rationales": 2_000, "questions_per_shard": 20, "math_rationales": 300}
NAMES = ["Tom", "Mia", "Sam", "Ava", "Leo", "Zoe"]
ITEMS = ["apples", "pencils", "marbles", "cookies", "books"]


def synthetic_rationale(rng: random.Random, a: int, b: int, kind: int) -> tuple[str, str]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    steps = (f"{name} starts with {a} {item}. Then {name} gets {b} more {item} from a friend at school. "
             f"To find the total we add the two amounts together: {a} + {b} = {a + b}. "
             f"We check the work by counting again, step {rng.randint(1, 10**6)} of the reasoning. ")
    if kind == 0:
        return steps + f"The answer is {a + b}.", "stop"
    if kind == 1:
        return steps + f"The answer is {a + b + 1}.", "stop"
    if kind == 2:
        return steps[: len(steps) // 2], "length"
    if kind == 3:
        return f"{name} is not sure how many {item} there are in the end.", "stop"
    if kind == 4:
        return steps + f"The answer is {a + b}. No wait, the answer is {a + b - 1}.", "stop"
    return ("we add them again and " * 30) + f"The answer is {a + b}.", "stop"


def write_shards(gen_dir: Path, total: int, per_question: int, questions_per_shard: int) -> int:
    rng = random.Random(0)
    sampling = {"n": per_question, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_tokens": 256, "stop": []}
    messages = [{"role": "user", "content": "q"}]
    num_questions = total // per_question
    shards = 0
    for start in range(0, num_questions, questions_per_shard):
        samples: list[Sample] = []
        for q in range(start, min(num_questions, start + questions_per_shard)):
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            previous = ""
            for i in range(per_question):
                roll = rng.random()
                if previous and roll < 0.10:  # an exact copy of the previous rationale
                    text, finish = previous, "stop"
                elif previous and roll < 0.25:  # a near copy: one word changed
                    text, finish = previous.replace("school", "the park", 1), "stop"
                else:
                    kind = rng.choices(range(6), weights=[60, 15, 8, 7, 5, 5])[0]
                    text, finish = synthetic_rationale(rng, a, b, kind)
                previous = text
                samples.append(Sample(
                    question_id=f"q{q:07d}", sample_index=i,
                    question=f"Question {q}: {a} plus {b} things, how many?", gold_answer=str(a + b),
                    choices=None, prompt_messages=messages, prompt_text="q", rationale=text,
                    finish_reason=finish, prompt_tokens=10, completion_tokens=len(text) // 4,
                    teacher="synthetic", sampling=sampling, seed=0, run_id="bench"))  # the rest: Sample's defaults
        # Every SAMPLE_SCHEMA column, taken from the Samples (as samples_to_table writes them, without its
        # per-row asdict copies, which would add about 90 s to a million rows).
        columns = {name: [getattr(s, name) for s in samples] for name in SAMPLE_SCHEMA.names}
        write_parquet_atomic(pa.Table.from_pydict(columns, schema=SAMPLE_SCHEMA),
                             gen_dir / "samples" / shard_name(shards))
        shards += 1
    write_json_atomic({"shards": shards}, gen_dir / "stats.json")
    write_fingerprint(gen_dir, make_fingerprint({"synthetic": shards}))  # a finished generate stage
    return num_questions * per_question


def math_check_us(count: int) -> float:
    """Microseconds per rationale of the `math` format's answer check (extract, then is_correct against the gold),
    on synthetic rationales of the filter's mix, in this process (a filter worker's caches included)."""
    from cotdistill.verify.answers import get_answer_format

    fmt = get_answer_format("math")
    rng = random.Random(1)
    items = []
    for _ in range(count):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        kind = rng.choices(range(6), weights=[60, 15, 8, 7, 5, 5])[0]
        items.append((synthetic_rationale(rng, a, b, kind)[0], str(a + b)))
    fmt.is_correct(fmt.extract("The answer is $\\frac{1}{2}$.").answer, "0.5")  # math-verify's imports, once
    started = time.perf_counter()
    for text, gold in items:
        fmt.is_correct(fmt.extract(text).answer, gold)
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rationales", type=int, default=1_000_000)
    parser.add_argument("--per-question", type=int, default=50)
    parser.add_argument("--questions-per-shard", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--math-rationales", type=int, default=20_000, help="rationales for the math check's cost")
    parser.add_argument("--smoke", action="store_true", help="a tiny size (2,000 rationales): the same steps, "
                        "in seconds; explicit options still apply")
    if parser.parse_known_args()[0].smoke:
        parser.set_defaults(**SMOKE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        total = write_shards(Path(tmp) / "bench" / "generate", args.rationales, args.per_question,
                             args.questions_per_shard)
        print(f"wrote {total:,} synthetic rationales in {time.perf_counter() - started:.1f} s")
        data = Path(tmp) / "q.jsonl"
        data.write_text('{"question": "q", "answer": "1"}\n')
        results = {}
        for label, near in (("exact", False), ("near_dup", True)):
            shutil.rmtree(Path(tmp) / "bench" / "filter", ignore_errors=True)
            config = load_config(REPO / "pipelines" / "demo.yaml", [
                f"output_dir={tmp}", "run_name=bench", f"data.path={data}", "filter.answer_format=number",
                f"filter.near_duplicates={str(near).lower()}", f"filter.num_workers={args.workers}",
                "filter.max_per_question=null", "train.sft={max_length: null}",  # too_long off, as before
                "filter.audit_verifier=null",  # the demo's audit: the filter's own throughput, as before
            ])
            started = time.perf_counter()
            stats = filter_stage.STAGE.run(config)
            seconds = time.perf_counter() - started
            assert stats["rationales"] == total
            results[label] = total / seconds
            print(f"near duplicates {'on ' if near else 'off'}: {total:,} rationales in {seconds:.1f} s = "
                  f"{results[label]:,.0f} rationales/s; accepted {stats['accepted']:,}; "
                  f"rejected {{{', '.join(f'{k}: {v:,}' for k, v in stats['rejected'].items() if v)}}}")

    math_us = math_check_us(args.math_rationales)
    print(f"math answer check: {math_us:,.0f} us per rationale ({args.math_rationales:,} rationales, one process)")

    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest worker's peak
    peak_mb = self_mb + args.workers * worker_mb
    print(f"peak RSS: this process {self_mb:.0f} MB, largest worker {worker_mb:.0f} MB, "
          f"total as if all peaked at once {peak_mb:.0f} MB")
    print(json.dumps({"rationales_per_s_exact": round(results["exact"]), "rationales_per_s_near_dup":
                      round(results["near_dup"]), "math_check_us_per_rationale": round(math_us, 1),
                      "peak_rss_mb": round(peak_mb), "rationales": total, "workers": args.workers}))


if __name__ == "__main__":
    main()
