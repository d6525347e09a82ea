"""filter.audit_verifier: a second verifier judges a seeded sample of the filter's verdicts again; audit.md and
stats.json report where it disagrees, with intervals, and estimate the filter's false-negative rate. And
filter.judge: the LLM judge (its strict reply parsing, its cache, its budget) against a stub server."""

import json

import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.core.fields import ConfigError
from cotdistill.core.records import SAMPLE_SCHEMA, Sample, samples_to_table
from cotdistill.core.shards import read_json, write_parquet_atomic
from cotdistill.stages.filter.second import audit_section, summarize_audit, wilson_interval
from cotdistill.teachers.judge import parse_verdict
from cotdistill.verify.answers import math_verify_whole_text
from tests.conftest import REPO

# The number format and math-verify on the whole text disagree on these two, both ways round.
WRONG_BUT_ACCEPTED = "The answer is 12 or the answer is 13."  # number: 12 (marked); math-verify: wrong
RIGHT_BUT_REJECTED = "Three fours make $\\frac{24}{2}$ in all."  # number: 2 (last number); math-verify: 12


def sample(qid, index, rationale, gold="12"):
    return Sample(question_id=qid, sample_index=index, question="What is 3 times 4?", gold_answer=gold,
                  choices=None, prompt_messages=[], prompt_text="", rationale=rationale, finish_reason="stop",
                  prompt_tokens=1, completion_tokens=1, teacher="t", sampling={}, seed=0, run_id="r")


def test_wilson_interval():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and 0.25 < high < 0.32  # not empty at 0 successes
    low, high = wilson_interval(5, 10)
    assert low < 0.5 < high and abs((0.5 - low) - (high - 0.5)) < 1e-9
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_math_verify_whole_text_reads_with_its_own_defaults():
    assert math_verify_whole_text("3 times 4 is 12. The answer is 12.", "12") == "right"
    assert math_verify_whole_text("The answer is 13.", "12") == "wrong"
    assert math_verify_whole_text("We get twelve.", "12") == "no_answer"
    assert math_verify_whole_text(RIGHT_BUT_REJECTED, "12") == "right"
    assert math_verify_whole_text(WRONG_BUT_ACCEPTED, "12") == "wrong"


def row(qid, index, text, reason=None, extracted="12"):
    return {"question_id": qid, "sample_index": index, "teacher_name": None, "question": "q", "gold_answer": "12",
            "rationale": text, "extracted_answer": extracted, "filter_reason": reason}


def test_a_deliberate_disagreement_is_reported_both_ways():
    accepted = [row("a", i, "The answer is 12.") for i in range(9)] + [row("a", 9, WRONG_BUT_ACCEPTED)]
    rejected = ([row("b", i, "The answer is 13.", "wrong", "13") for i in range(6)]
                + [row("b", 6, RIGHT_BUT_REJECTED, "wrong", "2"), row("b", 7, "no idea", "unparseable", None),
                   row("b", 8, "x", "wrong", "3")])
    verdicts_a = ["right"] * 9 + ["wrong"]
    verdicts_r = ["wrong"] * 6 + ["right", "no_answer", "timeout"]  # the timeout is undecided
    report = summarize_audit(accepted, verdicts_a, rejected, verdicts_r, accepted_total=100,
                             rejected_by_reason={"wrong": 40, "unparseable": 10}, second="math_verify_whole_text",
                             sample=20, seed=0)
    a, r = report["accepted_but_wrong"], report["rejected_but_right"]
    assert (a["disagree"], a["decided"], a["rate"]) == (1, 10, 0.1)
    assert (r["disagree"], r["decided"], r["rate"]) == (1, 8, 0.125) and r["by_reason"] == {"wrong": 1}
    assert report["undecided"] == 1 and report["disagreement"]["disagree"] == 2
    assert a["ci"][0] < 0.1 < a["ci"][1] and r["ci"][0] < 0.125 < r["ci"][1]
    assert [e["rationale"] for e in a["examples"]] == [WRONG_BUT_ACCEPTED]
    assert [e["rationale"] for e in r["examples"]] == [RIGHT_BUT_REJECTED]
    # 0.125 of 50 rejected: 6.25 good ones dropped, of 106.25 good ones
    fnr = report["false_negative_rate"]
    assert fnr["estimate"] == pytest.approx(6.25 / 106.25, abs=1e-6)
    assert fnr["ci"][0] < fnr["estimate"] < fnr["ci"][1] and fnr["good_rationales_dropped"] == 6.2
    text = "\n".join(audit_section(report))
    assert "Second verifier: `math_verify_whole_text`" in text and "| accepted, but the second says wrong | 10.0%" in text
    assert WRONG_BUT_ACCEPTED in text and "second: right" in text


def audited_run(tmp_path, *overrides):
    """demo.yaml's settings over hand-written generate shards (no engine, no student tokenizer)."""
    config = load_config(REPO / "pipelines" / "demo.yaml", [
        f"output_dir={tmp_path / 'runs'}", "run_name=audit", "filter.num_workers=1", "filter.max_per_question=null",
        "filter.near_duplicates=false", "train.sft={max_length: null}", *overrides])
    samples = [sample(f"q{q}", i, f"Step {i}: 3 times 4 is 12. The answer is 12.") for q in range(3) for i in range(4)]
    samples += [sample("q3", 0, WRONG_BUT_ACCEPTED), sample("q4", 0, RIGHT_BUT_REJECTED),
                sample("q4", 1, "The answer is 13."), sample("q4", 2, "We get twelve.")]
    write_parquet_atomic(samples_to_table(samples[:8], SAMPLE_SCHEMA), config.paths.samples / "00000.parquet")
    write_parquet_atomic(samples_to_table(samples[8:], SAMPLE_SCHEMA), config.paths.samples / "00001.parquet")
    return config


def test_the_filter_stage_reports_the_audit(tmp_path):
    from cotdistill.stages import filter as filter_stage

    plain = audited_run(tmp_path, "filter.audit_verifier=null")  # the demo audits: here once off, once on
    off = filter_stage.fingerprint(plain)
    config = audited_run(tmp_path, "filter.audit_verifier={sample: 200}")
    on = filter_stage.fingerprint(config)
    assert "audit_verifier" not in off["settings"] and on["settings"]["audit_verifier"]["sample"] == 200
    assert on["settings"]["inputs"] == off["settings"]["inputs"]  # no shard is judged again for it
    stats = filter_stage.filter_corpus(config)
    report = read_json(config.paths.filter / "stats.json")["audit_verifier"]
    assert report == json.loads(json.dumps(stats["audit_verifier"]))
    assert report["second"] == "math_verify_whole_text"
    assert report["accepted_but_wrong"]["sampled"] == stats["accepted"] == 13
    assert report["rejected_but_right"]["sampled"] == 3  # wrong 2, unparseable 1
    assert [e["rationale"] for e in report["accepted_but_wrong"]["examples"]] == [WRONG_BUT_ACCEPTED]
    assert [e["rationale"] for e in report["rejected_but_right"]["examples"]] == [RIGHT_BUT_REJECTED]
    assert report["false_negative_rate"]["estimate"] == pytest.approx(1 / 14, abs=1e-6)
    audit = config.paths.audit.read_text()
    assert "## Audit by a second verifier" in audit and "Second verifier: `math_verify_whole_text`" in audit
    assert "Estimated false-negative rate of the filter: 7.1%" in audit


def test_the_sample_is_seeded_and_split_between_accepted_and_rejected(tmp_path):
    from cotdistill.stages.filter.second import draw

    accepted, rejected = [("a", i) for i in range(50)], [("r", i) for i in range(7)]
    first = draw(accepted, rejected, 20, seed=0)
    assert first == draw(accepted, rejected, 20, seed=0) != draw(accepted, rejected, 20, seed=1)
    assert len(first[0]) == 13 and len(first[1]) == 7  # the rejected side has only 7: the rest from the other


@pytest.mark.parametrize("settings,key,phrase", [
    ({"audit_verifier": {"sample": 200, "second": "coin_flip"}}, "filter.audit_verifier.second", "coin_flip"),
    ({"audit_verifier": {"sampel": 200}}, "filter.audit_verifier.sampel", "unknown key"),
    ({"audit_verifier": {"sample": 1}}, "filter.audit_verifier.sample", "at least 2"),
    ({"audit_verifier": {"second": "judge"}}, "filter.audit_verifier.second", "filter.judge is not set"),
    ({"answer_format": "choice", "audit_verifier": {}}, "filter.audit_verifier.second", "second: judge"),
    ({"judge": {"teacher": "nobody"}}, "filter.judge.teacher", "one `teacher`"),
    ({"judge": {"max_request": 5}}, "filter.judge.max_request", "unknown key"),
    ({"judge": {"prompt": "no_such.jinja"}}, "filter.judge.prompt", "not found"),
    ({"judge": {}, "label": "majority"}, "filter.judge.teacher", "use gold"),
    ({"answer_format": "judge"}, "filter.answer_format", "set filter.judge"),
])
def test_audit_and_judge_settings_are_refused_at_load(tmp_path, settings, key, phrase):
    from tests.test_config import BASE

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, "filter": settings}))
    with pytest.raises(ConfigError, match=rf"{key}.*{phrase}|{phrase}.*{key}"):
        load_config(path)


def test_the_judges_reply_is_read_strictly():
    assert parse_verdict("They are the same.\nVERDICT: equivalent") == "equivalent"
    assert parse_verdict("VERDICT: different\n\n  ") == "different"
    for reply in ("VERDICT: equivalent\nActually no.", "verdict: equivalent", "VERDICT: Equivalent",
                  "VERDICT: equivalent.", "VERDICT: equivalent or different", "", None,
                  "__import__('os').system('echo hi')\nVERDICT: maybe"):
        assert parse_verdict(reply) == "judge_unparseable", reply


# --- filter.judge against a stub OpenAI-compatible server (tests/servers.py) ---------------------------------

JUDGED_ROWS = [  # (question, sample, rationale): what the number format reads in each, and what the stub says
    ("q0", 0, "3 times 4 is 12. The answer is 12."),       # read: 12, right; the judge is never asked
    ("q1", 0, "Three fours make a dozen."),                 # unparseable; the stub: equivalent -> accepted
    ("q1", 1, "It is a baker's dozen, thirteen."),         # unparseable; the stub: different -> wrong
    ("q2", 0, "The answer is 12. The answer is 13."),       # ambiguous; the stub's reply is no verdict
    ("q3", 0, "We get twelve."),                            # unparseable; past max_requests 3: never asked
]


def stub_judge(body, attempt):
    prompt = body["messages"][-1]["content"]
    if "make a dozen." in prompt:
        return ("reply", "Twelve is a dozen.\nVERDICT: equivalent")
    if "baker's dozen" in prompt:
        return ("reply", "13 is not 12.\nVERDICT: different")
    return ("reply", "VERDICT: equivalent\nimport os; os.system('rm -rf /')  # never run")


def judged_run(tmp_path, url, run_name, *extra, rows=JUDGED_ROWS, gold="12"):
    from tests.test_config import QUESTIONS

    data = {"run_name": run_name, "output_dir": str(tmp_path / "runs"), "seed": 0, "data": {"path": QUESTIONS},
            "teacher": {"model": "stub-judge", "backend": "openai",
                        "openai": {"base_url": url, "api_key_env": None, "max_retries": 1, "failing_timeout_s": 5}},
            "student": {"model": "s"},
            "generate": {"cache": {"dir": str(tmp_path / "cache")}},
            "filter": {"num_workers": 1, "near_duplicates": False, "judge": {"max_requests": 3}},
            "train": {"sft": {"max_length": None}}}
    for key, value in extra:
        data["filter"][key] = value
    path = tmp_path / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    samples = [sample(q, i, text, gold) for q, i, text in rows]
    write_parquet_atomic(samples_to_table(samples, SAMPLE_SCHEMA), config.paths.samples / "00000.parquet")
    return config


def test_the_judge_decides_what_the_rules_cannot_read_and_a_rerun_hits_the_cache(tmp_path):
    from cotdistill.core.records import JUDGED_SCHEMA
    from cotdistill.core.shards import read_shards
    from cotdistill.stages import filter as filter_stage
    from tests.servers import StubOpenAI

    with StubOpenAI(stub_judge) as stub:
        config = judged_run(tmp_path, stub.url, "judged")
        stats = filter_stage.filter_corpus(config)
        assert len(stub.log) == 3  # three rationales the rules could not read, within max_requests
        rows = {(r["question_id"], r["sample_index"]): r for r in
                read_shards(config.paths.accepted).to_pylist() + read_shards(config.paths.rejected).to_pylist()}
        assert read_shards(config.paths.accepted).schema.equals(JUDGED_SCHEMA)
        got = {k: (r["filter_reason"], r["judge_verdict"], r["judge_model"]) for k, r in rows.items()}
        assert got == {("q0", 0): (None, None, None),
                       ("q1", 0): (None, "equivalent", "stub-judge"),
                       ("q1", 1): ("wrong", "different", "stub-judge"),
                       ("q2", 0): ("ambiguous", "judge_unparseable", "stub-judge"),
                       ("q3", 0): ("unparseable", "over_budget", None)}
        assert rows[("q1", 0)]["is_correct"] is True and rows[("q1", 0)]["pass_rate"] == 0.5
        assert stats["judge"] == {"verdicts": {"different": 1, "equivalent": 1, "judge_unparseable": 1,
                                               "over_budget": 1}, "asked": 3, "over_budget": 1, "cache_hits": 0}
        assert "LLM judge (filter.judge)" in config.paths.audit.read_text()

        again = judged_run(tmp_path, stub.url, "judged-again")  # another run of the same rationales
        stats = filter_stage.filter_corpus(again)
        assert len(stub.log) == 3 and stats["judge"]["cache_hits"] == 3  # nothing sent again
        assert stats["accepted"] == 2


def test_the_judge_is_the_second_verifier_of_the_audit(tmp_path):
    from cotdistill.stages import filter as filter_stage
    from tests.servers import StubOpenAI

    with StubOpenAI(stub_judge) as stub:
        config = judged_run(tmp_path, stub.url, "audited", ("audit_verifier", {"sample": 10, "second": "judge"}))
        stats = filter_stage.filter_corpus(config)
    report = stats["audit_verifier"]
    assert report["second"] == "judge (stub-judge)"
    # accepted: q0 (the stub's reply to it is no verdict: undecided) and q1/0 (equivalent: agrees); rejected as
    # wrong, unparseable or ambiguous: q1/1 (different: agrees), q2/0 (undecided), q3/0 (no verdict: undecided)
    assert report["accepted_but_wrong"]["sampled"] == 2 and report["rejected_but_right"]["sampled"] == 3
    assert report["undecided"] == 3 and report["disagreement"]["disagree"] == 0
    assert "Second verifier: `judge (stub-judge)`" in config.paths.audit.read_text()


def test_free_form_answers_are_all_judged_with_exact_rules_where_it_gives_no_verdict(tmp_path):
    from cotdistill.core.shards import read_shards
    from cotdistill.stages import filter as filter_stage
    from tests.servers import StubOpenAI

    def capital_judge(body, attempt):
        prompt = body["messages"][-1]["content"]
        if "city of Paris" in prompt:
            return ("reply", "VERDICT: equivalent")
        if "Lyon" in prompt:
            return ("reply", "VERDICT: different")
        return ("reply", "I cannot tell.")

    rows = [("c0", 0, "The capital is the city of Paris, of course."),  # exact: wrong; the judge: equivalent
            ("c0", 1, "It is Lyon."),                                    # the judge: different
            ("c0", 2, "Paris.")]                                         # no verdict: exact's rules, right
    with StubOpenAI(capital_judge) as stub:
        config = judged_run(tmp_path, stub.url, "free", ("answer_format", "judge"), rows=rows, gold="Paris")
        filter_stage.filter_corpus(config)
        assert len(stub.log) == 3
    got = {r["sample_index"]: (r["filter_reason"], r["judge_verdict"]) for r in
           read_shards(config.paths.accepted).to_pylist() + read_shards(config.paths.rejected).to_pylist()}
    assert got == {0: (None, "equivalent"), 1: ("wrong", "different"), 2: (None, "judge_unparseable")}


@pytest.mark.engine
def test_a_tiny_local_model_as_the_judge_is_read_strictly_and_cached(tmp_path, parrot_model, monkeypatch):
    """The parrot (it says PARROT_ANSWER to everything) on the local engine: its replies are no verdict, so the
    rules' verdicts stand, recorded as judge_unparseable; the rerun is answered by the cache, starting no engine."""
    from cotdistill.core.shards import read_shards
    from cotdistill.stages import filter as filter_stage
    from tests.conftest import TINY_ENGINE

    def local_run(name):
        data = {"run_name": name, "output_dir": str(tmp_path / "runs"), "seed": 0,
                "data": {"path": str(REPO / "data" / "arithmetic" / "train.jsonl")},
                "teacher": {"model": str(parrot_model), "engine": dict(TINY_ENGINE)},
                "student": {"model": str(parrot_model)},
                "generate": {"cache": {"dir": str(tmp_path / "cache")}},
                "filter": {"num_workers": 1, "near_duplicates": False, "judge": {"max_tokens": 16}},
                "train": {"sft": {"max_length": None}}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        config = load_config(path)
        write_parquet_atomic(samples_to_table([sample(q, i, t) for q, i, t in JUDGED_ROWS], SAMPLE_SCHEMA),
                             config.paths.samples / "00000.parquet")
        return config

    config = local_run("local")
    stats = filter_stage.filter_corpus(config)
    assert stats["judge"]["verdicts"] == {"judge_unparseable": 4} and stats["judge"]["cache_hits"] == 0
    rows = read_shards(config.paths.rejected).to_pylist()
    assert {r["judge_model"] for r in rows if r["judge_verdict"]} == {str(parrot_model)}
    monkeypatch.setattr("cotdistill.teachers.vllm_local.build_llm",
                        lambda *a, **k: pytest.fail("the rerun started an engine"))
    stats = filter_stage.filter_corpus(local_run("local-again"))
    assert stats["judge"]["cache_hits"] == 4
