"""kill -9 at several moments of `cotdistill run`, then rerun until it finishes: nothing lost, nothing doubled.

Each kill is a real SIGKILL of the CLI's process (tests/kill_at.py) at a known point: while a generate shard
is half on disk, between two filter files, while the trainer writes a checkpoint, between a model's evaluation
rows and its completion marker. A fresh `cotdistill run` after each must go on from there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from cotdistill.core.shards import read_json, read_shards
from tests.conftest import REPO, tiny_config_dict

pytestmark = [pytest.mark.engine, pytest.mark.slow]

ENV_KEYS = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def run(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **ENV_KEYS}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=900)


def test_kill_9_at_every_stage_then_rerun_loses_and_doubles_nothing(tmp_path, parrot_model, gsm8k_rows):
    rows = [{"question": r["question"], "answer": "#### 7"} for r in gsm8k_rows[:3]] + gsm8k_rows[3:6]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test_questions = tmp_path / "test.jsonl"
    test_questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[100:103]))
    data = tiny_config_dict(tmp_path, parrot_model, questions, test_questions)
    data["generate"]["max_tokens"] = 24
    data["train"]["sft"].update(max_steps=4, save_steps=2, per_device_train_batch_size=1)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "runs" / "tiny"
    kill_at = str(REPO / "tests" / "kill_at.py")

    kills = [("generate-shard", 2, []), ("filter-shard", 3, ["filter.num_workers=1"]),
             ("train-checkpoint", 2, []), ("evaluate-model", 2, [])]
    for point, n, extra in kills:
        result = run([kill_at, point, str(n), "run", str(config), *extra], tmp_path)
        assert result.returncode == -9, f"{point}: not killed (exit {result.returncode}): {result.stderr[-3000:]}"
    assert any((run_dir / "train" / "checkpoints" / "checkpoint-2").glob("trainer_state.json"))

    for _ in range(2):  # reruns until it finishes; one should do
        result = run(["-m", "cotdistill", "run", str(config)], tmp_path)
        if result.returncode == 0:
            break
    assert result.returncode == 0, result.stderr[-3000:]

    generated = read_shards(run_dir / "generate" / "samples")
    keys = list(zip(generated.column("question_id").to_pylist(), generated.column("sample_index").to_pylist()))
    assert len(keys) == len(set(keys)) == 6 * 3  # every (question, sample) exactly once
    assert set(Counter(q for q, _ in keys).values()) == {3}
    assert not list((run_dir / "generate" / "samples").glob(".*"))  # no temporary file left behind

    accepted = read_shards(run_dir / "filter" / "accepted")
    rejected = read_shards(run_dir / "filter" / "rejected")
    judged = [(r["question_id"], r["sample_index"]) for t in (accepted, rejected)
              for r in t.select(["question_id", "sample_index"]).to_pylist()]
    assert sorted(judged) == sorted(keys) and len(accepted) > 0

    stats = read_json(run_dir / "train" / "stats.json")
    assert (run_dir / "train" / "model" / "config.json").exists()
    assert stats["global_steps"] == 4 and stats["resumed_from_step"] == 2 and stats["steps_this_run"] == 2
    assert [p.name.split(".")[0] for p in (run_dir / "train" / "checkpoints" / "partial").iterdir()] == ["checkpoint-4"]

    metrics = read_json(run_dir / "evaluate" / "metrics.json")
    assert set(metrics["models"]) == {"teacher", "base_student", "student"}
    assert all(m["questions"] == 3 for m in metrics["models"].values())

    again = run(["-m", "cotdistill", "run", str(config)], tmp_path)  # finished: every stage skipped
    assert again.returncode == 0 and again.stderr.count("up to date, skipping") == 4, again.stderr[-2000:]


def test_kill_9_in_prune_and_score_then_rerun_scores_every_rationale_once(tmp_path, parrot_model, gsm8k_rows):
    """The optional steps: killed while the pruned model is still in its temporary folder, then after the
    first scored file; the reruns prune again, score only the file not yet written, and train with kd."""
    rows = [{"question": r["question"], "answer": "#### 7"} for r in gsm8k_rows[:4]]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tiny_config_dict(tmp_path, parrot_model, questions)
    data["student"]["prune"] = {"num_layers": 1, "calibration_samples": 4}
    data["score"] = {"logprobs": 4, "context": "student", "batch_size": 1}
    data["train"]["loss"] = "kd"
    data["train"]["sft"].update(max_steps=2, save_steps=50)
    data["evaluate"].update(models=["student"], num_samples=2, max_tokens=8)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "runs" / "tiny"
    kill_at = str(REPO / "tests" / "kill_at.py")

    result = run([kill_at, "prune-save", "1", "run", str(config)], tmp_path)
    assert result.returncode == -9, result.stderr[-3000:]
    assert not (run_dir / "prune" / "model").exists() and not (run_dir / "prune" / "stats.json").exists()
    result = run([kill_at, "score-shard", "1", "run", str(config)], tmp_path)
    assert result.returncode == -9, result.stderr[-3000:]
    accepted_files = read_json(run_dir / "filter" / "stats.json")["accepted_files"]
    assert len(accepted_files) == 2, "the test needs two accepted files to kill between them"
    first = run_dir / "score" / "accepted" / accepted_files[0]
    assert first.exists() and not (run_dir / "score" / "accepted" / accepted_files[1]).exists()
    written = first.stat().st_mtime_ns

    result = run(["-m", "cotdistill", "run", str(config)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert first.stat().st_mtime_ns == written  # finished work is not redone
    scored = read_shards(run_dir / "score" / "accepted")
    accepted = read_shards(run_dir / "filter" / "accepted")
    key = lambda t: sorted(zip(t.column("question_id").to_pylist(), t.column("sample_index").to_pylist()))  # noqa
    assert key(scored) == key(accepted) and len(set(key(scored))) == len(key(scored)) > 0
    assert all(ids for ids in scored.column("teacher_topk_ids").to_pylist())
    assert read_json(run_dir / "train" / "stats.json")["loss"] == "kd"
    assert read_json(run_dir / "prune" / "stats.json")["parameters_after"] > 0


def test_ctrl_c_and_sigterm_stop_generate_in_one_line_and_the_rerun_resumes(tmp_path, tiny_model, gsm8k_rows):
    """Ctrl-C (SIGINT) and a scheduler's SIGTERM during generate: one line, exit 130 / 143, no traceback, the engine
    shut down; the journaled questions are kept and the rerun sends only the others."""
    import os
    import signal
    import time

    import pyarrow.parquet as pq

    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[:240]))
    data = tiny_config_dict(tmp_path, tiny_model, questions)
    data["generate"].update(num_samples=4, max_tokens=64, questions_per_shard=40, seed_per_request=True)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    journals = tmp_path / "runs" / "tiny" / "generate" / "journal"

    def progress() -> int:  # questions journaled or in finished shards; journals go once their shard is written
        journaled = sum(len(j.read_bytes().splitlines()) for j in journals.glob("*.jsonl"))
        return journaled + 40 * len(list((journals.parent / "samples").glob("*.parquet")))

    def interrupted(signum: int) -> subprocess.CompletedProcess:
        before = progress()
        process = subprocess.Popen([sys.executable, "-m", "cotdistill", "generate", str(config)], cwd=tmp_path,
                                   env={**os.environ, **ENV_KEYS}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:  # until some questions are journaled
            if progress() >= before + 3:  # past start-up: the handlers are in place and work is under way
                break
            time.sleep(0.05)
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    for signum, code, word in ((signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")):
        result = interrupted(signum)
        assert result.returncode == code, result.stderr[:3000] + "\n...\n" + result.stderr[-1500:]
        assert f"{word}; journaled work is kept, rerun to resume" in result.stderr
        assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-3000:]
    kept = sum(len(j.read_bytes().splitlines()) for j in journals.glob("*.jsonl"))
    assert kept >= 3

    result = run(["-m", "cotdistill", "generate", str(config)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # The console shows cotdistill's lines; vLLM's go to the run's log, with the rest.
    assert not [line for line in result.stderr.splitlines() if " INFO vllm" in line]
    log = (tmp_path / "runs" / "tiny" / "logs" / "generate.log").read_text()
    assert " INFO vllm" in log and "generate: starting" in log
    samples = tmp_path / "runs" / "tiny" / "generate" / "samples"
    keys = [(r["question_id"], r["sample_index"]) for shard in sorted(samples.glob("*.parquet"))
            for r in pq.read_table(shard, columns=["question_id", "sample_index"]).to_pylist()]
    assert len(keys) == len(set(keys)) == 240 * 4
