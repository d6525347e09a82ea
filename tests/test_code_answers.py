"""The `code` answer's pieces (cotdistill/verify/code.py): the program a rationale ends with, and its verdict
from the sandbox, for functional (HumanEval-style) and stdin/stdout tests."""

from __future__ import annotations

import pytest

from cotdistill.verify.answers import extract_program
from cotdistill.verify.code import (
    CodeTests, LocalExecutor, check_program, count_asserts, humaneval_tests, read_humaneval,
)
from cotdistill.verify.sandbox import Limits

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


@pytest.mark.slow
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


# --- tests from data rows -----------------------------------------------------------------------------------------


def test_functional_tests_are_read_as_humaneval_and_mbpp_hold_them():
    from cotdistill.verify.code import parse_code_tests

    humaneval = parse_code_tests("functional", FUNCTIONAL.test, "add")
    assert (humaneval.kind, humaneval.entry_point) == ("functional", "add")
    mbpp = parse_code_tests("functional", ["assert add(1, 2) == 3", "assert add(0, 0) == 0"])
    assert mbpp.entry_point == "add" and count_asserts(mbpp.test) == 2  # the entry point, read from the asserts
    for value, problem in (("", "missing or empty"), ("def check(c):\n  assert (", "not parseable Python"),
                           ("x = 1\n", "no assert"), (FUNCTIONAL.test, "no entry point")):
        with pytest.raises(ValueError, match=problem):
            parse_code_tests("functional", value)


def test_stdio_tests_are_read_in_the_shapes_public_datasets_use():
    import json

    from cotdistill.verify.code import parse_code_tests

    apps = parse_code_tests("stdio", json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"]}))
    contests = parse_code_tests("stdio", {"input": ["1 2\n"], "output": ["3\n"]})
    livecodebench = parse_code_tests("stdio", json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]))
    assert apps == contests == livecodebench == CodeTests(kind="stdio", inputs=("1 2\n",), outputs=("3\n",))
    # APPS' call-based problems: fn_name, each input a list of arguments -> one assert per pair
    call = parse_code_tests("stdio", json.dumps({"fn_name": "add", "inputs": [[1, 2], [0, 0]], "outputs": [[3], 0]}))
    assert (call.kind, call.entry_point, count_asserts(call.test)) == ("functional", "add", 2)
    for value, problem in (("{", "not valid JSON"), ({"inputs": [], "outputs": []}, "no input/output pairs"),
                           ({"inputs": ["1"], "outputs": []}, "1 inputs and 0 outputs"),
                           ({"inputs": [1], "outputs": [2]}, "must be strings"), ([1, 2], "expected"),
                           ({"fn_name": "a b", "inputs": [[1]], "outputs": [1]}, "not a Python identifier")):
        with pytest.raises(ValueError, match=problem):
            parse_code_tests("stdio", value)


def test_a_bad_row_is_named_by_file_row_and_field(tmp_path):
    import json

    from cotdistill.config.sections import DataConfig
    from cotdistill.questions.sources import QuestionSource, SourceError

    rows = [{"question": "add", "test": FUNCTIONAL.test, "entry": "add"},
            {"question": "broken", "test": "def check(candidate):\n    assert candidate(1 ==\n", "entry": "f"}]
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(path=str(path), answer_field=None, tests_format="functional", tests_field="test",
                     entry_point_field="entry")
    with pytest.raises(SourceError, match=rf"{path}: row 2: field 'test': test code is not parseable Python"):
        QuestionSource(cfg)
    path.write_text(json.dumps(rows[0]) + "\n")
    source = QuestionSource(cfg)
    assert source.code_tests(source.ids[0]) == CodeTests(kind="functional", test=FUNCTIONAL.test, entry_point="add")
    assert source.code_tests("not-a-question") is None


def test_humaneval_loads_as_a_data_source_from_the_installed_package():
    from cotdistill.verify.code import HUMANEVAL_PATH
    from cotdistill.config.sections import DataConfig
    from cotdistill.questions.sources import QuestionSource

    source = QuestionSource(DataConfig(path=HUMANEVAL_PATH, question_field="prompt", answer_field="canonical_solution",
                                       id_field="task_id", tests_format="functional", tests_field="test",
                                       entry_point_field="entry_point"))
    assert len(source) == 164 and source.code_tests("HumanEval/3").entry_point == "below_zero"


# --- execution equivalence: the answer of a program is what it does on the test inputs -------------------------


FIB = CodeTests(kind="functional", entry_point="fib",
                test="def check(candidate):\n    assert candidate(10) == 55\n    assert candidate(1) == 1\n")


def test_programs_that_do_the_same_on_the_test_inputs_are_one_answer(executor):
    recursive = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
    iterative = "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
    off_by_one = "def fib(n):\n    a, b = 1, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
    verdicts = [check_program(p, FIB, executor, LIMITS) for p in (recursive, iterative, off_by_one)]
    assert [v.passed for v in verdicts] == [True, True, False]
    # only the outermost calls are recorded: the recursion's inner calls do not split the class
    assert verdicts[0].answer == verdicts[1].answer != verdicts[2].answer
    assert all(v.by_execution and v.answer.startswith("x:") for v in verdicts)


def test_execution_classes_never_read_the_expected_outputs(executor):
    """The same programs on tests whose expected values are all wrong: the verdicts change, the classes do not."""
    wrong_expectations = CodeTests(kind="functional", entry_point="fib",
                                   test="def check(candidate):\n    assert candidate(10) == 0\n"
                                        "    assert candidate(1) == 0\n")
    for program in ("def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n", "def fib(n):\n    return 0\n"):
        right, wrong = (check_program(program, tests, executor, LIMITS) for tests in (FIB, wrong_expectations))
        assert right.answer == wrong.answer and right.passed != wrong.passed
    stdio_wrong = CodeTests(kind="stdio", inputs=STDIO.inputs, outputs=("0", "0"))
    program = "a, b = map(int, input().split())\nprint(a + b)\n"
    right, wrong = (check_program(program, tests, executor, LIMITS) for tests in (STDIO, stdio_wrong))
    assert right.answer == wrong.answer and right.passed and not wrong.passed
    other = check_program("a, b = map(int, input().split())\nprint(b + a)\n", STDIO, executor, LIMITS)
    assert other.answer == right.answer  # different code, same outputs: one answer


def test_without_an_entry_point_votes_fall_back_to_pass_fail(executor):
    tests = CodeTests(kind="functional", test="assert RESULT == 3\n")  # no call to record
    good, bad = (check_program(p, tests, executor, LIMITS) for p in ("RESULT = 3\n", "RESULT = 4\n"))
    assert (good.answer, good.by_execution, bad.answer, bad.reason) == ("pass", False, "fail", "tests_failed")


def test_a_rationalized_program_that_copies_its_reference_is_caught():
    from cotdistill.verify.code import copies_reference

    reference = "def add(a, b):\n    return a + b\n"
    assert copies_reference("# my own\ndef add(a, b):\n\n    return a + b  # sum\n", reference)
    assert copies_reference("import sys\n\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))\n", reference)
    assert copies_reference("def add(x, y):\n    return x + y\n", reference)  # renamed
    assert not copies_reference("def add(x, y):\n    total = 0\n    for v in (x, y):\n        total += v\n"
                                "    return total\n", reference)
    assert not copies_reference("def add(a, b):\n    for _ in range(b):\n        a += 1\n    return a\n", reference)
    assert not copies_reference(None, reference)
