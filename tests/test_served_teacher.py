"""The generate and evaluate stages through the `openai` backend, against a real vLLM OpenAI-compatible server
on 127.0.0.1 (and a fault-injecting proxy in front of it): the same shards, schema and counts as the local
engine; faults retried and counted; the API key in no file of the run; a kill -9 resends only what is missing;
two servers of one model, one of them killed mid-run, lose and double nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.core.records import SAMPLE_SCHEMA
from cotdistill.core.shards import Journal, read_json, read_shards
from cotdistill.stages import evaluate
from cotdistill.stages import generate
from cotdistill.stages.evaluate.report import format_table
from tests.conftest import REPO, tiny_config_dict
from tests.servers import FaultProxy
from tests.test_journal import CountingTeacher

pytestmark = [pytest.mark.server]

NUM_QUESTIONS = 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory, parrot_model, gsm8k_rows):
    tmp = tmp_path_factory.mktemp("served")
    questions = tmp / "questions.jsonl"
    rows = [{"question": r["question"], "answer": "#### 7"} for r in gsm8k_rows[:3]] + gsm8k_rows[3:NUM_QUESTIONS]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tiny_config_dict(tmp, parrot_model, questions)
    data["generate"]["questions_per_shard"] = 4
    # The parrot's samples miss its answer 22 times in 600 at temperature 1.0 (0 in 600 at 0.1): asserting that
    # served rows hold it needs the low temperature, as test_adaptive_generate's parrot runs use.
    data["generate"]["temperature"] = 0.1
    data["evaluate"]["models"] = ["teacher"]
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return tmp, path


def served(path, base_url, run_name, *extra):
    return load_config(path, [f"run_name={run_name}", "teacher.backend=openai",
                              f"teacher.openai.base_url={base_url}", *extra])


def keys_of(table):
    return list(zip(table.column("question_id").to_pylist(), table.column("sample_index").to_pylist()))


@pytest.mark.engine
def test_served_teacher_writes_what_the_local_engine_writes(runs, served_parrot):
    tmp, path = runs
    local = load_config(path, ["run_name=local"])
    remote = served(path, served_parrot, "served")
    local_stats, remote_stats = generate.STAGE.run(local), generate.STAGE.run(remote)
    local_table = read_shards(local.run_dir / "generate" / "samples")
    remote_table = read_shards(remote.run_dir / "generate" / "samples")
    assert remote_table.schema.equals(SAMPLE_SCHEMA)
    assert sorted(keys_of(remote_table)) == sorted(keys_of(local_table))  # the same questions x samples
    for key in ("shards", "questions", "rationales", "num_skipped", "num_failed"):
        assert remote_stats[key] == local_stats[key], key
    # The server applies the same chat template, so it counts the same prompt tokens the local engine was sent.
    assert (dict(zip(remote_table.column("question_id").to_pylist(), remote_table.column("prompt_tokens").to_pylist()))
            == dict(zip(local_table.column("question_id").to_pylist(), local_table.column("prompt_tokens").to_pylist())))
    assert remote_stats["completion_tokens"] == sum(remote_table.column("completion_tokens").to_pylist()) > 0
    assert all("The answer is 7" in t for t in remote_table.column("rationale").to_pylist()[:3])

    result = evaluate.STAGE.run(remote)  # evaluate scores a served model through the same backend
    metrics = read_json(remote.run_dir / "evaluate" / "metrics.json")["models"]["teacher"]
    assert metrics["questions"] == NUM_QUESTIONS and metrics["k"] == 3 and metrics["sampled_tokens"] > 0
    assert "teacher" in format_table(result["models"])


def test_faults_are_retried_and_counted_and_every_sample_lands_once(runs, served_parrot):
    _, path = runs
    with FaultProxy(served_parrot, seed=7, rate_429=0.25, rate_500=0.2, rate_drop=0.1, rate_slow=0.1,
                    retry_after="0") as proxy:
        config = served(path, proxy.url, "faults", "teacher.openai.max_retries=8", "teacher.openai.timeout_s=30")
        stats = generate.STAGE.run(config)
        injected = proxy.injected()
    table = read_shards(config.run_dir / "generate" / "samples")
    assert len(keys_of(table)) == len(set(keys_of(table))) == NUM_QUESTIONS * 3
    assert set(Counter(q for q, _ in keys_of(table)).values()) == {3}
    assert injected > 0 and stats["retries"] == injected and stats["num_failed"] == 0


def test_requests_that_fail_after_their_retries_are_recorded_not_dropped(runs, served_parrot):
    _, path = runs
    with FaultProxy(served_parrot, seed=3, rate_500=0.5) as proxy:
        config = served(path, proxy.url, "failures", "teacher.openai.max_retries=1",
                        "generate.max_failed_fraction=1")  # recorded, and the run goes on
        stats = generate.STAGE.run(config)
        injected = proxy.injected()
    # Each injected fault was either retried or ended its request: the counts add up.
    assert stats["num_failed"] > 0 and stats["retries"] + stats["num_failed"] == injected
    assert stats["questions"] == NUM_QUESTIONS and stats["rationales"] == (NUM_QUESTIONS - stats["num_failed"]) * 3
    assert all(f["reason"] for f in stats["failed"]) and len({f["question_id"] for f in stats["failed"]}) == stats["num_failed"]


def test_the_api_key_is_read_from_the_environment_and_written_nowhere(runs, served_parrot):
    tmp, path = runs
    secret = "sk-cotdistill-test-5e3c1d9f"
    env = {**os.environ, "COTDISTILL_TEST_KEY": secret, "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    with FaultProxy(served_parrot) as proxy:
        result = subprocess.run([sys.executable, "-m", "cotdistill", "generate", str(path), "run_name=secret",
                                 "teacher.backend=openai", f"teacher.openai.base_url={proxy.url}",
                                 "teacher.openai.api_key_env=COTDISTILL_TEST_KEY"],
                                capture_output=True, text=True, cwd=tmp, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert proxy.authorizations and set(proxy.authorizations) == {f"Bearer {secret}"}  # it was sent
    run_dir = tmp / "runs" / "secret"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files) and len(files) >= 4
    for p in files:
        assert secret.encode() not in p.read_bytes(), f"the API key is in {p}"
    assert secret not in result.stdout + result.stderr
    assert "COTDISTILL_TEST_KEY" in (run_dir / "config.yaml").read_text()  # the variable's name, not its value


def test_kill_9_mid_shard_resends_only_the_questions_not_journaled(runs, served_parrot):
    from cotdistill.teachers.openai_server import build

    tmp, path = runs
    overrides = ["run_name=served-killed", "teacher.backend=openai", f"teacher.openai.base_url={served_parrot}",
                 "teacher.openai.max_concurrency=2"]
    killed = subprocess.run([sys.executable, str(REPO / "tests" / "kill_at.py"), "journal-append", "3", "generate",
                             str(path), *overrides], capture_output=True, text=True, cwd=tmp, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    config = load_config(path, overrides)
    out = config.run_dir / "generate"
    journaled = {r["question_id"] for r in Journal(out / "journal" / "00000.jsonl").read()}
    assert len(journaled) == 3
    teacher = CountingTeacher(build(config.teacher, config.seed))
    try:
        generate.STAGE.run(config, teacher=teacher)
    finally:
        teacher.close()
    assert len(teacher.sent) == NUM_QUESTIONS - 3 and not set(teacher.sent) & journaled
    table = read_shards(out / "samples")
    assert len(keys_of(table)) == len(set(keys_of(table))) == NUM_QUESTIONS * 3
    assert pq.read_table(out / "samples" / "00000.parquet").num_rows == 4 * 3


def test_two_servers_one_killed_mid_run_nothing_lost_or_doubled(runs, served_parrot, parrot_model, gsm8k_rows):
    """Two real vLLM servers of the same model; the second is killed once it has answered a few requests (it
    sits behind a proxy that counts them). Its requests in flight fail over to the first: every (question,
    sample) lands exactly once, and nothing is recorded as failed."""
    import signal
    import threading
    import time
    import urllib.request

    from tests.servers import start_vllm_server, stop_server

    tmp, path = runs
    questions = tmp / "questions24.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[:24]))
    process, second = start_vllm_server(parrot_model, timeout=240)
    try:
        # One request straight to the new server first: its first answer is slow, and the client, which sends to the
        # server with the fewest requests in flight, would give nearly all the run to the warm one (seen: 2 of 24).
        warm_up = urllib.request.Request(f"{second}/completions", json.dumps(
            {"model": str(parrot_model), "prompt": "1 + 1 =", "max_tokens": 4}).encode(),
            {"Content-Type": "application/json"})
        urllib.request.urlopen(warm_up, timeout=120).read()
        with FaultProxy(second) as proxy:
            def kill_after_a_few_answers():
                deadline = time.monotonic() + 300
                while len(proxy.exchanges) < 4 and time.monotonic() < deadline:
                    time.sleep(0.05)
                os.killpg(process.pid, signal.SIGKILL)  # a node lost: no graceful shutdown

            killer = threading.Thread(target=kill_after_a_few_answers, daemon=True)
            killer.start()
            config = served(path, json.dumps([served_parrot, proxy.url]), "two-servers", f"data.path={questions}",
                            "teacher.openai.max_concurrency=4", "generate.seed_per_request=true")
            stats = generate.STAGE.run(config)
            killer.join(timeout=30)
            served_by_second = sum(status == 200 for _, _, status, _ in proxy.exchanges)
    finally:
        stop_server(process)
    assert process.poll() is not None and 4 <= served_by_second < 24  # it took its share, then it was gone
    table = read_shards(config.run_dir / "generate" / "samples")
    assert len(keys_of(table)) == len(set(keys_of(table))) == 24 * 3
    assert stats["num_failed"] == 0 and stats["num_short"] == 0 and stats["rationales"] == 24 * 3
