"""The `code` answer's pieces (cotdistill/code_answers.py): the program a rationale ends with, and its verdict
from the sandbox, for functional (HumanEval-style) and stdin/stdout tests."""

from __future__ import annotations

import pytest

from cotdistill.code_answers import (
    CodeTests, LocalExecutor, check_program, count_asserts, extract_program, humaneval_tests, read_humaneval,
)
from cotdistill.sandbox import Limits

FUNCTIONAL = CodeTests(kind="functional", entry_point="add", test="""
def check(candidate):
    assert candidate(1, 2) == 3
    assert candidate(0, 0) == 0
    assert candidate(-1, 1) == 0
""")
STDIO = CodeTests(kind="stdio", inputs=("1 2\n", "5 5\n"), outputs=("3\n", "10"))
LIMITS = Limits(wall_s=3, cpu_s=3)


@pytest.fixture(scope="module")
def executor():
    return LocalExecutor()


def test_extract_takes_the_last_complete_python_block_outside_the_thinking():
    text = ("<think>```python\ndef add(a, b): return 0\n```</think>First try:\n```python\nx = 1\n```\n"
            "Better:\n```python\ndef add(a, b):\n    return a + b\n```\nDone. ```python\nunclosed")
    assert extract_program(text) == "def add(a, b):\n    return a + b\n"
    assert extract_program("```\nprint(1)\n```") == "print(1)\n"  # no language named: the fallback
    assert extract_program("```cpp\nint main(){}\n```\n```python\nprint(2)\n```\n```bash\nls\n```") == "print(2)\n"
    assert extract_program("just prose, def add(a, b): return a + b") is None
    assert extract_program("thinking opened by the prompt\n```python\nbad\n```\n</think>\n```python\nok\n```") == "ok\n"


def test_functional_verdicts(executor):
    def verdict(program):
        return check_program(program, FUNCTIONAL, executor, LIMITS)

    assert count_asserts(FUNCTIONAL.test) == 3
    good = verdict("def add(a, b):\n    return a + b\n")
    assert good.passed and (good.tests_passed, good.tests_total) == (3, 3)
    wrong = verdict("def add(a, b):\n    return a * b\n")  # right only for (0, 0)
    assert (wrong.passed, wrong.reason, wrong.tests_passed, wrong.tests_total) == (False, "tests_failed", 1, 3)
    assert wrong.describe() == "tests_failed (passed 1 of 3)"
    assert verdict(None).reason == "no_code"
    assert verdict("def add(a, b)\n    return a + b\n").reason == "syntax_error"
    assert verdict("def add(a, b):\n    return a + undefined\n").reason == "runtime_error"
    assert verdict("def add(a, b):\n    while True: pass\n").reason == "exec_timeout"
    assert verdict("def add(a, b):\n    return bytearray(4 << 30)\n").reason == "memory_limit"
    # Leaving before the tests have run is no pass.
    assert verdict("import os\nos._exit(0)\n").reason == "runtime_error"
    assert verdict("import sys\nsys.exit(0)\n").reason == "runtime_error"


def test_asserts_in_a_loop_fail_as_tests(executor):
    tests = CodeTests(kind="functional", entry_point="f", test="def check(candidate):\n"
                      "    for x in range(3):\n        assert candidate(x) == x\n")
    assert check_program("def f(x):\n    return 0\n", tests, executor, LIMITS).reason == "tests_failed"
    assert check_program("def f(x):\n    return x\n", tests, executor, LIMITS).passed


def test_stdio_verdicts(executor):
    good = "a, b = map(int, input().split())\nprint(a + b)   \n"
    verdict = check_program(good, STDIO, executor, LIMITS)
    assert verdict.passed and (verdict.tests_passed, verdict.tests_total) == (2, 2)
    half = check_program("a, b = map(int, input().split())\nprint(3)\n", STDIO, executor, LIMITS)
    assert (half.reason, half.tests_passed, half.tests_total) == ("tests_failed", 1, 2)
    assert check_program("print(1/0)", STDIO, executor, LIMITS).reason == "runtime_error"
    assert check_program("print('x' * (1 << 22))", STDIO, executor,
                         Limits(wall_s=3, output_bytes=1 << 20)).reason == "output_limit"


def test_humaneval_is_read_from_the_installed_package(executor):
    problems = read_humaneval()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    first = problems[0]
    assert check_program(first["prompt"] + first["canonical_solution"], humaneval_tests(first), executor).passed
    assert not check_program(first["prompt"] + "    return None\n", humaneval_tests(first), executor).passed
