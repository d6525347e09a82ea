"""Programs verified per second in the code sandbox, and what the sandbox costs per program.

    .venv/bin/python benchmarks/code_sandbox.py [--workers 2]
    .venv/bin/python benchmarks/code_sandbox.py --smoke     # 8 problems: the same steps in seconds

Verifies, `--workers` sandboxes at a time (cotdistill.verify.code.check_many), HumanEval's 164 canonical
solutions (prompt + canonical_solution) and one mutant of each. The mutant rule: the entry point's body replaced
by `return None` (the prompt, which ends with the entry point's signature and docstring, then `    return None`).
Every canonical solution should pass and every mutant fail.

The overhead: the mean wall time of a trivial program (`print(1)`) in the sandbox against a bare
`python -I -c 'print(1)'` subprocess, both one at a time, in this run. And what the separate test process costs:
one functional test of a trivial function with the tests in their own process (as every verdict is made) against
the same tests in the program's own process (inline_harness, as a one-process remote executor runs them). The
last line is a JSON object with programs_per_s, canonical_passed, mutants_failed, problems, workers, sandbox_ms,
bare_ms, overhead_ms, two_process_ms, one_process_ms and test_process_ms.
Target: at least 20 programs/s with 2 workers on this 2-core machine. `--smoke` runs 8 problems: its figures say
only that it runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cotdistill.verify.code import (  # noqa: E402
    CodeTests, LocalExecutor, check_many, functional_harness, humaneval_tests, inline_harness, read_humaneval,
)
from cotdistill.verify.sandbox import Limits, isolation_problem, run_python  # noqa: E402


def mean_ms(run, times: int) -> float:
    start = time.perf_counter()
    for _ in range(times):
        run()
    return (time.perf_counter() - start) / times * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    problem = isolation_problem()
    if problem:
        raise SystemExit(f"the sandbox cannot isolate programs here: {problem}")

    problems = read_humaneval()[: 8 if args.smoke else None]
    items = [(p["prompt"] + p["canonical_solution"], humaneval_tests(p)) for p in problems]
    items += [(p["prompt"] + "    return None\n", humaneval_tests(p)) for p in problems]
    executor = LocalExecutor()
    start = time.perf_counter()
    verdicts = check_many(items, executor, workers=args.workers, limits=Limits(wall_s=20, cpu_s=20))
    seconds = time.perf_counter() - start
    canonical, mutants = verdicts[: len(problems)], verdicts[len(problems):]
    for p, v in zip(problems, canonical):
        if not v.passed:
            print(f"canonical {p['task_id']} did not pass: {v.describe()}\n{v.detail[-500:]}")
    for p, v in zip(problems, mutants):
        if v.passed:
            print(f"mutant {p['task_id']} passed")
    print(f"{len(items)} programs in {seconds:.1f} s = {len(items) / seconds:.1f} programs/s with {args.workers} "
          f"workers; canonical passed {sum(v.passed for v in canonical)} of {len(problems)}, mutants failed "
          f"{sum(not v.passed for v in mutants)} of {len(problems)} ({dict(Counter(v.reason for v in mutants))})")

    times = 5 if args.smoke else 40
    python = [sys.executable, "-I", "-c", "print(1)"]
    bare = mean_ms(lambda: subprocess.run(python, capture_output=True, check=True), times)
    sandboxed = mean_ms(lambda: run_python("print(1)", limits=Limits(wall_s=20)), times)
    print(f"one trivial program: {sandboxed:.1f} ms in the sandbox, {bare:.1f} ms as a bare subprocess "
          f"(overhead {sandboxed - bare:.1f} ms)")
    tests = CodeTests(kind="functional", test="assert add(1, 2) == 3\n", entry_point="add")
    program = "def add(a, b):\n    return a + b\n"
    limits = Limits(wall_s=20)
    two = mean_ms(lambda: executor.run_tests(program, functional_harness(tests), limits), times)
    one = mean_ms(lambda: executor.run(inline_harness(program, tests, "__marker__"), "", limits), times)
    print(f"one functional test: {two:.1f} ms with the tests in their own process, {one:.1f} ms in the program's "
          f"(the separate test process costs {two - one:.1f} ms)")
    print(json.dumps({"programs_per_s": round(len(items) / seconds, 2), "canonical_passed": sum(v.passed for v in canonical),
                      "mutants_failed": sum(not v.passed for v in mutants), "problems": len(problems),
                      "workers": args.workers, "sandbox_ms": round(sandboxed, 2), "bare_ms": round(bare, 2),
                      "overhead_ms": round(sandboxed - bare, 2), "two_process_ms": round(two, 2),
                      "one_process_ms": round(one, 2), "test_process_ms": round(two - one, 2)}))


if __name__ == "__main__":
    main()
