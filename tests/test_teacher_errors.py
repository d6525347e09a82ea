"""Errors of a served teacher, against a stub OpenAI-compatible server (tests/servers.py StubOpenAI), through
`cotdistill generate` as a user runs it:

- errors no request can get past (401, 403, a 429 with `insufficient_quota`) stop the run at once, non-zero,
  one line naming the cause and the server; what was journaled stays, and the rerun finishes the rest;
- no server answering stops the run at once, before the first request, writing nothing; requests that run out of
  retries while every request is failing are held back (also at the end of a run), so the rerun sends them; a
  run whose every request is refused (400s) stops after `teacher.openai.failing_timeout_s`;
- a failed question is not done work: over generate.max_failed_fraction the stage stops non-zero, and a rerun
  sends the failed (and short) questions again, and nothing else;
- cut-off and undecodable bodies are retried; a response short of n choices is topped up, and a shortfall that
  stays is recorded with its count, never silent."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from cotdistill.cli import main
from cotdistill.config.load import load_config
from cotdistill.core.shards import read_json
from tests.conftest import tiny_config_dict
from tests.servers import StubOpenAI, free_port

NUM_QUESTIONS, NUM_SAMPLES, CONCURRENCY = 40, 3, 2


@pytest.fixture
def config_file(tmp_path, tiny_model, gsm8k_rows):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[:NUM_QUESTIONS]))
    data = tiny_config_dict(tmp_path, tiny_model, questions)
    data["teacher"].update(backend="openai", openai={"max_concurrency": CONCURRENCY, "max_retries": 2,
                                                     "failing_timeout_s": 3})
    data["generate"].update(num_samples=NUM_SAMPLES, questions_per_shard=10, seed_per_request=True)
    path = tmp_path / "stub.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def generate(config_file, base_url: str, *overrides: str) -> tuple[int, float]:
    """`cotdistill generate` against base_url: (exit code, seconds)."""
    start = time.monotonic()
    try:
        main(["generate", str(config_file), f"teacher.openai.base_url={base_url}", *overrides])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, time.monotonic() - start


def rows(config_file):
    config = load_config(config_file)
    return [(r["question_id"], r["sample_index"]) for shard in sorted(config.paths.samples.glob("*.parquet"))
            for r in pq.read_table(shard, columns=["question_id", "sample_index"]).to_pylist()]


def journaled(config_file) -> list[dict]:
    return [json.loads(line) for j in sorted(load_config(config_file).paths.journals.glob("*.jsonl"))
            for line in j.read_text().splitlines()]


def error(status: int, message: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": code or "invalid_request_error", "code": code}}


@pytest.mark.parametrize("status,body,cause", [
    (401, error(401, "Incorrect API key provided"), "authentication refused (401)"),
    (403, error(403, "Project does not have access to model"), "permission refused (403)"),
    (429, error(429, "You exceeded your current quota", "insufficient_quota"), "quota exhausted"),
])
def test_fatal_errors_stop_the_run_and_the_rerun_resumes(config_file, caplog, status, body, cause):
    # The key works for the first 12 questions' requests, then the server refuses every one.
    with StubOpenAI(lambda request, attempt: None) as stub:
        stub.behave = lambda request, attempt: ("status", status, body) if len(stub.log) >= 12 else None
        with caplog.at_level(logging.ERROR, logger="cotdistill"):
            code, seconds = generate(config_file, stub.url)
        sent = len(stub.log)
    assert code == 2
    stop = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(stop) == 1 and cause in stop[0] and stub.url in stop[0], stop
    # At once: the requests in flight when the first refusal came back, not one per question.
    assert sent <= 12 + 2 * CONCURRENCY + 1, sent
    kept = journaled(config_file) + [{"question_id": q} for q, i in rows(config_file) if i == 0]
    assert 0 < len(kept) <= 12 and not any(r.get("error") for r in kept)  # nothing recorded as failed
    logging.getLogger(__name__).info("stopped on %d after %.1f s with %d requests sent", status, seconds, sent)

    with StubOpenAI() as stub:  # the key fixed (another server, as interchangeable): only what was not journaled
        code, _ = generate(config_file, stub.url)
        resent = len(stub.log)
    assert code == 0 and resent == NUM_QUESTIONS - len({r["question_id"] for r in kept})
    keys = rows(config_file)
    assert len(keys) == len(set(keys)) == NUM_QUESTIONS * NUM_SAMPLES


def test_unreachable_servers_stop_the_run_at_once_and_lose_nothing(config_file, caplog):
    nothing_there = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    with caplog.at_level(logging.ERROR, logger="cotdistill"):
        code, seconds = generate(config_file, json.dumps(nothing_there))
    stop = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert code == 2 and len(stop) == 1
    assert all(url in stop[0] for url in nothing_there) and "no server answers" in stop[0]
    assert "APIConnectionError" in stop[0]
    assert seconds < 15  # checked before the first request: no retries, no failing_timeout_s to wait out
    paths = load_config(config_file).paths
    assert not paths.generate.exists()  # nothing written: not a journal, not a fingerprint, not the config

    with StubOpenAI() as stub:  # a server is up now: every question is sent, none was lost to the outage
        assert generate(config_file, stub.url)[0] == 0
        assert len(stub.log) == NUM_QUESTIONS
    stats = read_json(paths.generate / "stats.json")
    assert stats["num_failed"] == 0 and stats["rationales"] == NUM_QUESTIONS * NUM_SAMPLES


def test_the_default_base_url_with_no_server_stops_at_once(tmp_path, config_file, caplog):
    data = yaml.safe_load(config_file.read_text())
    data["teacher"]["openai"].pop("base_url", None)
    port = free_port()
    data["teacher"]["openai"]["base_url"] = f"http://127.0.0.1:{port}/v1"
    path = tmp_path / "default.yaml"
    path.write_text(yaml.safe_dump(data))
    start = time.monotonic()
    with pytest.raises(SystemExit) as stopped, caplog.at_level(logging.ERROR, logger="cotdistill"):
        main(["generate", str(path)])
    assert stopped.value.code == 2 and time.monotonic() - start < 15
    assert f"127.0.0.1:{port}" in caplog.text and "no server answers" in caplog.text


def test_requests_failing_when_the_run_ends_are_held_back_and_sent_again(config_file, caplog):
    """The servers go down near the end, and the run ends before failing_timeout_s: the questions that ran out of
    retries then were never recorded as failed; the run stops non-zero, and the rerun sends exactly them."""
    with StubOpenAI() as stub:
        stub.behave = lambda request, attempt: ("status", 503, error(503, "overloaded")) if len(stub.log) >= 30 \
            else None
        with caplog.at_level(logging.ERROR, logger="cotdistill"):
            code, _ = generate(config_file, stub.url, "teacher.openai.failing_timeout_s=300",
                               "teacher.openai.max_retries=1")
    assert code == 2 and "held back" in caplog.text
    assert not any(r["error"] for r in journaled(config_file))
    answered = {r["question_id"] for r in journaled(config_file)} | {q for q, _ in rows(config_file)}
    assert 0 < len(answered) < NUM_QUESTIONS
    with StubOpenAI() as stub:
        assert generate(config_file, stub.url)[0] == 0
        resent = len(stub.log)
    assert resent == NUM_QUESTIONS - len(answered)
    keys = rows(config_file)
    assert len(keys) == len(set(keys)) == NUM_QUESTIONS * NUM_SAMPLES
    assert read_json(load_config(config_file).paths.generate / "stats.json")["num_failed"] == 0


def test_failed_questions_are_sent_again_by_a_rerun(config_file, caplog):
    """A failed question is not done work: with more failures than generate.max_failed_fraction the stage stops
    non-zero and writes no summary; a rerun with the same settings sends only the failed questions and keeps the
    rest; within the fraction the stage ends well, and is still redone for them by the next rerun."""
    unlucky: set[str] = set()

    def refuse_two(request, attempt):  # two questions' prompts are refused (a 400: the request's own fault)
        question = request["messages"][-1]["content"]
        if len(unlucky) < 2 or question in unlucky:
            unlucky.add(question)
            return "status", 400, error(400, "This request was refused by a content filter")
        return None

    with StubOpenAI(refuse_two) as stub, caplog.at_level(logging.ERROR, logger="cotdistill"):
        code, _ = generate(config_file, stub.url)
    assert code == 2
    message = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR][-1]
    assert "2 of 40 questions failed" in message and "max_failed_fraction" in message
    assert "content filter" in message and "rerun" in message
    paths = load_config(config_file).paths
    assert not (paths.generate / "stats.json").exists()  # nothing downstream starts on it
    with pytest.raises(SystemExit):
        main(["filter", str(config_file)])
    assert len(rows(config_file)) == (NUM_QUESTIONS - 2) * NUM_SAMPLES

    with StubOpenAI() as stub:  # the cause fixed: only the two are sent again
        assert generate(config_file, stub.url)[0] == 0
        assert len(stub.log) == 2
    keys = rows(config_file)
    assert len(keys) == len(set(keys)) == NUM_QUESTIONS * NUM_SAMPLES
    stats = read_json(paths.generate / "stats.json")
    assert stats["num_failed"] == 0 and not list(paths.journals.glob("*.jsonl"))
    with StubOpenAI() as stub:  # done: a rerun sends nothing
        assert generate(config_file, stub.url)[0] == 0 and not stub.log


@pytest.mark.slow
def test_per_question_errors_are_recorded_until_every_request_fails_too_long(config_file, caplog):
    too_long = error(400, "This model's maximum context length is 512 tokens")
    first = {}

    def behave(request, attempt):  # one question's prompt is too long; later, every request is
        question = request["messages"][-1]["content"]
        first.setdefault("question", question)
        if question == first["question"] or len(stub.log) > 20:
            return "status", 400, too_long
        return None

    with StubOpenAI(behave, delay_s=0.2) as stub:  # 10 requests a second: the last 19 take longer than 1 s
        with caplog.at_level(logging.ERROR, logger="cotdistill"):
            code, _ = generate(config_file, stub.url, "teacher.openai.failing_timeout_s=1")
    stop = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert code == 2 and "every request has failed for over 1 s" in stop[0] and "maximum context length" in stop[0]
    paths = load_config(config_file).paths
    failed = [r["error"] for r in journaled(config_file) if r["error"]] + [
        f["reason"] for meta in paths.generate_meta.glob("*.json") for f in read_json(meta)["failed"]]
    assert len(failed) >= 2 and all("BadRequestError" in e for e in failed)  # recorded, one per question


@pytest.mark.slow
def test_cut_off_and_undecodable_bodies_are_retried(config_file):
    broken = {}

    def behave(request, attempt):  # every other question: its first answer cut off halfway, or not JSON
        question = request["messages"][-1]["content"]
        kind = broken.setdefault(question, ("cut",) if len(broken) % 3 == 0 else ("text",) if len(broken) % 3 == 1
                                 else None)
        return kind if attempt == 1 else None

    with StubOpenAI(behave) as stub:
        assert generate(config_file, stub.url)[0] == 0
        assert stub.answered("cut") >= NUM_QUESTIONS // 3 and stub.answered("text") >= NUM_QUESTIONS // 3
    stats = read_json(load_config(config_file).paths.generate / "stats.json")
    assert stats["num_failed"] == 0 and stats["rationales"] == NUM_QUESTIONS * NUM_SAMPLES
    assert stats["retries"] == stub.answered("cut") + stub.answered("text")


def test_short_responses_are_topped_up_and_a_lasting_shortfall_is_recorded(config_file):
    def behave(request, attempt):
        question = request["messages"][-1]["content"]
        if stubborn in question:
            return "choices", 0  # never any sample for this one
        return "choices", min(request["n"], 2)  # a gateway that returns 2 choices at most

    stubborn = json.loads(Path(load_config(config_file).data.path).read_text().splitlines()[5])["question"]
    with StubOpenAI(behave) as stub:  # one question of 40 short: within a max_failed_fraction of 5%
        assert generate(config_file, stub.url, "generate.max_failed_fraction=0.05")[0] == 0
    stats = read_json(load_config(config_file).paths.generate / "stats.json")
    assert stats["num_short"] == 1 and stats["short"][0]["missing"] == NUM_SAMPLES
    assert stats["short"][0]["source_row"] == 6  # the file's 6th line: rows count from 1
    assert stats["rationales"] == (NUM_QUESTIONS - 1) * NUM_SAMPLES  # every other question topped up to n
    keys = rows(config_file)
    assert len(keys) == len(set(keys))
    with StubOpenAI() as stub:  # a short question is not done work either: the rerun asks for it again
        assert generate(config_file, stub.url, "generate.max_failed_fraction=0.05")[0] == 0
        assert len(stub.log) == 1 and stubborn in stub.log[0][1]["messages"][-1]["content"]
    assert read_json(load_config(config_file).paths.generate / "stats.json")["num_short"] == 0
    assert len(rows(config_file)) == NUM_QUESTIONS * NUM_SAMPLES


@pytest.mark.slow
def test_several_servers_share_the_work_and_one_that_dies_is_left_out(config_file):
    from cotdistill.teachers.openai_server import SERVER_FAILURES_TO_REST

    with StubOpenAI(delay_s=0.05) as a, StubOpenAI(delay_s=0.05) as b:
        b.behave = lambda request, attempt: ("drop",) if len(b.log) >= 8 else None  # dies after 8 answers
        assert generate(config_file, json.dumps([a.url, b.url]))[0] == 0
        answered = {"a": a.answered("choices"), "b": b.answered("choices"), "b_dropped": b.answered("drop")}
    assert answered["b"] == 8 and answered["a"] == NUM_QUESTIONS - 8  # the fewest in flight: both took work
    # Left out after its failures in a row: not tried again by every request (its rest outlasts this run).
    assert SERVER_FAILURES_TO_REST <= answered["b_dropped"] <= SERVER_FAILURES_TO_REST + CONCURRENCY, answered
    stats = read_json(load_config(config_file).paths.generate / "stats.json")
    assert stats["num_failed"] == 0 and stats["rationales"] == NUM_QUESTIONS * NUM_SAMPLES
    keys = rows(config_file)
    assert len(keys) == len(set(keys)) == NUM_QUESTIONS * NUM_SAMPLES


def test_servers_are_left_out_of_fingerprints_and_older_runs_that_named_one_are_the_same_work(config_file):
    from cotdistill.core.fingerprints import digest, make_fingerprint, same_work
    from cotdistill.stages.generate import STAGE

    one = STAGE.fingerprint(load_config(config_file, ["teacher.openai.base_url=http://10.0.0.1:8000/v1"]))
    two = STAGE.fingerprint(load_config(config_file, ['teacher.openai.base_url=["http://a:1/v1", "http://b:2/v1"]']))
    assert one == two and "base_url" not in json.dumps(one["settings"])
    # A run folder fingerprinted before (teacher.served.base_url recorded) is resumed or skipped, not redone...
    older = json.loads(json.dumps(one["settings"]))
    older["teacher"]["served"]["base_url"] = "http://10.0.0.1:8000/v1"
    assert same_work(make_fingerprint(older), one)
    # ...but any other setting that differs still counts, and so does a stored record that was tampered with.
    older["teacher"]["served"]["endpoint"] = "completions"
    assert not same_work(make_fingerprint(older), one)
    assert not same_work({"fingerprint": digest({}), "settings": {**one["settings"], "x": 1}}, one)


@pytest.mark.parametrize("servers,phrase", [("[]", "must name one server"),
                                            ('["http://a/v1", "http://a/v1"]', "several different ones"),
                                            ('["http://a/v1", "a:8000/v1"]', "must start with http://")])
def test_bad_server_lists_are_refused_at_load_naming_the_key(config_file, servers, phrase):
    from cotdistill.core.fields import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(config_file, [f"teacher.openai.base_url={servers}"])
    assert str(caught.value).startswith(f"{config_file}: teacher.openai.base_url:") and phrase in str(caught.value)
