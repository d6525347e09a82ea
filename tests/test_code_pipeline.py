"""answer_format code through the stages: the filter's verdicts from the sandbox (label gold and majority by
execution class), and generate, filter and evaluate on the real engine, with stored hand-written programs whose
verdicts are known (pass@k, maj@k by execution, failure reasons in the report)."""

from __future__ import annotations

import dataclasses
import json

import pyarrow.parquet as pq
import pytest
import yaml

from cotdistill.config.load import load_config
from tests.conftest import REPO, tiny_config_dict

PROBLEMS = REPO / "data" / "code" / "functional.jsonl"  # the project's own: add, subtract, ... (tests and solutions)
CODE_DATA = {"path": str(PROBLEMS), "id_field": "task_id", "question_field": "question", "answer_field": "solution",
             "tests_format": "functional", "tests_field": "test", "entry_point_field": "entry_point", "limit": 2}


def block(body: str) -> str:
    return f"Here it is.\n```python\n{body}```"


ADD, ADD_LOOP = block("def add(a, b):\n    return a + b\n"), block("def add(a, b):\n    for _ in range(b if b > 0 else 0):\n"
                                                              "        a += 1\n    return a if b >= 0 else a + b\n")
ADD_WRONG, NO_CODE = block("def add(a, b):\n    return a * b\n"), "The sum is a + b."
SUB, SUB_WRONG, SUB_WRONG_TOO = (block("def subtract(a, b):\n    return a - b\n"),
                                 block("def subtract(a, b):\n    return a + b\n"),
                                 block("def subtract(a, b):\n    return b + a\n"))
SUB_RAISES = block("def subtract(a, b):\n    return a - c\n")


def code_config(tmp_path, model, **filter_settings):
    data = tiny_config_dict(tmp_path, model, PROBLEMS)
    data["data"] = dict(CODE_DATA)
    data["filter"] = {"answer_format": "code", "label": "gold", **filter_settings}
    data["sandbox"] = {"timeout_s": 3, "cpu_s": 3}  # the looping program waits this long
    data["generate"].update(num_samples=2, max_tokens=24)
    data["evaluate"] = {"data": dict(CODE_DATA), "models": ["teacher"], "num_samples": 4, "max_tokens": 24,
                        "stored": {"hand": str(tmp_path / "stored")}, "bootstrap_resamples": 50,
                        "adaptive": {"rule": "window", "window": 2}}
    (tmp_path / "stored").mkdir(exist_ok=True)
    path = tmp_path / "code.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@pytest.mark.slow
def test_the_filter_judges_programs_by_running_them(tmp_path, tiny_model):
    from cotdistill.stages.filter import make_context
    from cotdistill.stages.filter.phases import QuestionRows, judge_question

    config = code_config(tmp_path, tiny_model, max_per_question=None)
    ctx = make_context(config, frozenset())
    texts = [ADD, ADD_LOOP, ADD_WRONG, NO_CODE, block("def add(a, b)\n    return a\n"), ADD, block("def add(a, b):\n"
             "    return b + a\n"), block("def add(a, b):\n    while True:\n        pass\n")]
    # two rationalized ones (STaR, written with the reference as a hint): one copies it, one is its own
    texts += [block("# the sum\ndef add(a, b):\n\n    return a + b  # done\n"), block("def add(a, b):\n    total = a\n    total += b\n    return total\n")]
    rows = QuestionRows("cotdistill/add", "add", "def add(a, b):\n    return a + b\n", None, list(range(len(texts))),
                        texts, ["stop"] * len(texts), rationalized=[False] * 8 + [True, True])
    v = judge_question(rows, ctx)
    assert v.filter_reason == [None, None, "tests_failed", "no_code", "syntax_error", "duplicate", None,
                               "exec_timeout", "quotes_hint", None]
    assert v.code[2].describe() == "tests_failed (passed 1 of 3)"
    assert v.pass_rate == 4 / 8  # ADD, ADD_LOOP, ADD again and b + a pass
    # label majority: the largest execution class (four programs that add) is the label, without the tests' say
    majority = dataclasses.replace(ctx, cfg=dataclasses.replace(ctx.cfg, label="majority"))
    unlabelled = dataclasses.replace(rows, gold_answer=None, rationales=texts[:8], finish_reasons=["stop"] * 8,
                                     sample_indices=list(range(8)), rationalized=None)
    v = judge_question(unlabelled, majority)
    assert v.filter_reason == [None, None, "wrong", "no_code", "syntax_error", "duplicate", None, "wrong"]
    assert len({v.extracted_answer[i] for i in (0, 1, 5, 6)}) == 1 and v.extracted_answer[7] is None
    assert v.pass_rate == 4 / 8


@pytest.mark.engine
def test_generate_filter_and_evaluate_run_code_on_the_real_engine(tmp_path, parrot_model):
    from cotdistill.stages import evaluate
    from cotdistill.stages import filter as filter_stage
    from cotdistill.stages import generate
    from cotdistill.core.records import EVAL_SCHEMA, SAMPLE_SCHEMA, Sample, samples_to_table
    from cotdistill.core.shards import read_json, write_parquet_atomic

    stored = {"cotdistill/add": [ADD, ADD_LOOP, ADD_WRONG, NO_CODE],
              "cotdistill/subtract": [SUB_WRONG, SUB_WRONG_TOO, SUB, SUB_RAISES]}
    samples = [Sample(question_id=q, sample_index=i, question=q, gold_answer=None, choices=None, prompt_messages=[],
                      prompt_text="", rationale=text, finish_reason="stop", prompt_tokens=1, completion_tokens=5,
                      teacher="hand", sampling={}, seed=0, run_id="r")
               for q, texts in stored.items() for i, text in enumerate(texts)]
    write_parquet_atomic(samples_to_table(samples, SAMPLE_SCHEMA), tmp_path / "stored" / "00000.parquet")
    config = code_config(tmp_path, parrot_model)

    generate.STAGE.run(config)
    stats = filter_stage.STAGE.run(config)  # the parrot writes prose, never a program: every rationale is no_code
    assert stats["rationales"] == 4 and stats["accepted"] == 0 and stats["rejected"]["no_code"] == 4
    assert stats["code"] == {"programs_passed": 0, "programs_failed": 4, "questions_voting_pass_fail": 0}
    assert "no_code" in (config.paths.audit).read_text()

    evaluate.STAGE.run(config)
    metrics = read_json(config.paths.metrics)["models"]
    hand = metrics["hand"]
    # add: 2 of 4 pass, and its vote (the two adding programs, one class) is right; subtract: 1 of 4 passes, and
    # the two that add instead are the larger class, so its vote is wrong.
    assert hand["pass_at_k"][0] == pytest.approx((2 / 4 + 1 / 4) / 2) and hand["pass@4"] == 1.0
    assert hand["maj@4"] == 0.5
    assert hand["code"]["failures"] == {"tests_failed": 3, "no_code": 1, "runtime_error": 1}
    assert hand["code"]["passed"] == 3 and hand["code"]["programs"] == 8
    rows = {r["question_id"]: r for r in pq.read_table(config.paths.eval_rows("hand")).to_pylist()}
    add, sub = rows["cotdistill/add"], rows["cotdistill/subtract"]
    assert add["sample_answers"][0] == add["sample_answers"][1] != add["sample_answers"][2]
    assert add["voted_correct"] and not sub["voted_correct"]
    assert sub["voted_answer"] == sub["sample_answers"][0] == sub["sample_answers"][1]
    # adaptive self-consistency on the classes: add's first two programs are one class (settled after 2);
    # subtract's first two as well, on the wrong class
    assert (add["adaptive_samples"], add["adaptive_correct"]) == (2, True)
    assert (sub["adaptive_samples"], sub["adaptive_answer"], sub["adaptive_correct"]) == (2, sub["voted_answer"], False)
    assert sub["sample_verdicts"] == ["tests_failed (passed 0 of 3)"] * 2 + ["passed", "runtime_error (passed 0 of 3)"]
    teacher = pq.read_table(config.paths.eval_rows("teacher"))
    assert teacher.schema.equals(EVAL_SCHEMA)
    assert metrics["teacher"]["code"]["failures"] == {"no_code": 8} and metrics["teacher"]["pass@4"] == 0.0
    assert {r["greedy_verdict"] for r in teacher.to_pylist()} == {"no_code"}
    report = (config.paths.evaluate / "report.md").read_text()
    assert "## Code: verdicts by execution" in report and "| hand | 8 | 37.5% |" in report


@pytest.mark.parametrize("change, key", [
    ({"data": {"tests_format": None, "tests_field": None, "entry_point_field": None}}, "filter.answer_format"),
    ({"data": {"tests_field": None}}, "data.tests_field"),
    ({"data": {"tests_format": "doctest"}}, "data.tests_format"),
    ({"evaluate": {"data": {"path": str(PROBLEMS)}}}, "evaluate.answer_format"),
    ({"sandbox": {"executor": "piston"}}, "sandbox.url"),
    ({"sandbox": {"timeout_s": 0}}, "sandbox.timeout_s"),
])
def test_code_settings_are_checked_at_load(tmp_path, change, key):
    from cotdistill.core.fields import ConfigError

    data = tiny_config_dict(tmp_path, tmp_path, PROBLEMS)
    data.update(data={**CODE_DATA}, filter={"answer_format": "code"}, evaluate={"data": dict(CODE_DATA)})
    for section, values in change.items():
        data[section] = {**data.get(section, {}), **values}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"bad.yaml: {key}:"):
        load_config(tmp_path / "bad.yaml")


def test_without_isolation_programs_run_only_on_explicit_opt_in(tmp_path, monkeypatch):
    from cotdistill.verify import sandbox
    from cotdistill.core.fields import ConfigError

    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "unshare: Operation not permitted")
    data = tiny_config_dict(tmp_path, tmp_path, PROBLEMS)
    data.update(data={**CODE_DATA}, filter={"answer_format": "code"}, evaluate={"data": dict(CODE_DATA)})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="sandbox: model-written programs cannot be isolated here .unshare"):
        load_config(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml", ["sandbox.allow_unisolated=true"]).sandbox.allow_unisolated


def test_adaptive_sampling_and_rationalization_close_on_passing_programs(tmp_path, tiny_model):
    """generate's Policy asks the same sandbox: a question closes once target_correct programs pass its tests, a
    question left with none is rationalized, and under label majority the stopping rule votes by execution class."""
    from cotdistill.stages.generate.progress import Policy, Progress
    from cotdistill.stages.generate.compaction import journal_record
    from cotdistill.core.records import Question

    data = tiny_config_dict(tmp_path, tiny_model, PROBLEMS)
    data.update(data=dict(CODE_DATA), filter={"answer_format": "code"}, evaluate={"data": dict(CODE_DATA)})
    data["generate"].update(num_samples=4, rationalize=True, rationalize_prompt="code_rationalize.jinja",
                            adaptive={"target_correct": 2, "round_size": 2})
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(data))
    policy = Policy(load_config(tmp_path / "a.yaml"))
    q = Question("cotdistill/add", "add", "def add(a, b):\n    return a + b\n")

    def absorb(p, texts, round_number):
        rows = [{"rationale": t, "finish_reason": "stop"} for t in texts]
        assert policy.absorb(p, journal_record(q, round=round_number, rationalize=False, samples=rows), q)

    solved = Progress()
    absorb(solved, [ADD, ADD_WRONG], 1)
    assert (solved.correct, solved.closed) == (1, None)
    absorb(solved, [NO_CODE, ADD_LOOP], 2)
    assert (solved.correct, solved.closed) == (2, "target") and not policy.needs_hint(solved)
    unsolved = Progress()
    absorb(unsolved, [ADD_WRONG, NO_CODE], 1)
    absorb(unsolved, [ADD_WRONG, ADD_WRONG], 2)
    assert (unsolved.correct, unsolved.closed) == (0, "cap") and policy.needs_hint(unsolved)
    assert policy.next(unsolved) == ("hint", 4)

    data["filter"]["label"] = "majority"
    data["generate"].update(rationalize=False, adaptive={"rule": "window", "window": 3, "round_size": 1})
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data))
    policy = Policy(load_config(tmp_path / "m.yaml"))
    voting = Progress()
    for i, text in enumerate([ADD, ADD_LOOP, block("def add(a, b):\n    return b + a\n")]):
        absorb(voting, [text], i + 1)
    assert len(set(voting.answers)) == 1 and voting.closed == "rule"  # three programs, one class: settled


def test_decontamination_reads_code_problems_as_text():
    from cotdistill.verify.code import HUMANEVAL_PATH, read_humaneval
    from cotdistill.config.sections import DataConfig
    from cotdistill.stages.filter.checks import build_contamination_index, question_ngrams
    from cotdistill.questions.sources import load_question_texts

    index = build_contamination_index(load_question_texts(DataConfig(path=HUMANEVAL_PATH, question_field="prompt")),
                                      13)
    leaked = "Solve this one:\n" + read_humaneval()[5]["prompt"]
    assert question_ngrams(leaked, 13) & index
    assert not question_ngrams(json.loads(PROBLEMS.read_text().splitlines()[0])["question"], 13) & index


@pytest.mark.parametrize("name, tests_format, tests_field, entry_point_field", [
    ("functional.jsonl", "functional", "test", "entry_point"), ("stdio.jsonl", "stdio", "input_output", None)])
def test_the_projects_own_problems_load_and_their_solutions_pass(name, tests_format, tests_field, entry_point_field):
    from cotdistill.verify.code import LocalExecutor, check_many
    from cotdistill.config.sections import DataConfig
    from cotdistill.questions.sources import QuestionSource

    source = QuestionSource(DataConfig(path=str(PROBLEMS.parent / name), answer_field="solution",
                                       tests_format=tests_format, tests_field=tests_field,
                                       entry_point_field=entry_point_field))
    questions = list(source.questions())
    assert len(questions) == {"functional.jsonl": 24, "stdio.jsonl": 8}[name]
    verdicts = check_many([(q.gold_answer, source.code_tests(q.question_id)) for q in questions], LocalExecutor())
    assert [v.describe() for v in verdicts] == ["passed"] * len(questions)
