"""The ray backend on a real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`): a head and a
worker node of one CPU each, one replica on each, and the generate stage streaming questions to them. The worker
node is removed mid-run (its processes killed, as when a machine is lost):

- a new node joins a few seconds later: the replacement actor is placed there and takes chunks;
- none comes back: the replacement can never be placed, holds no work, and the survivor finishes alone.

Both runs end by themselves with every (question, sample) exactly once, and a rerun skips everything (it is run
with the cluster gone, so it could not have started an actor). The engine inside each actor is the stand-in of
tests/ray_echo.py (the real EngineActor around an engine that answers at a set pace): losing a node is the
driver's business, and a vLLM engine on these cores is too fast to lose a node in the middle of, and too slow to
start three times per test. tests/test_ray_teacher.py and test_ray_generate.py run the real engine."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

from cotdistill.config.load import load_config
from cotdistill.stages import generate
from cotdistill.teachers.ray_pool import RayPoolTeacher
from tests.conftest import tiny_config_dict
from tests.ray_echo import EchoActor, pickled_by_value

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NUM_QUESTIONS, NUM_SAMPLES = 64, 2
# Node deaths seen in about a second instead of Ray's default half a minute.
FAST_HEALTH_CHECKS = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 250,
                      "health_check_timeout_ms": 500, "health_check_failure_threshold": 4}


@pytest.fixture
def cluster(monkeypatch):
    assert not ray.is_initialized(), "a Ray left running by an earlier test"
    monkeypatch.setattr(RayPoolTeacher, "actor_class", EchoActor)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": FAST_HEALTH_CHECKS})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        with pickled_by_value():
            yield cluster, worker
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def write_config(tmp_path, tiny_model, gsm8k_rows, address: str):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[:NUM_QUESTIONS]))
    data = tiny_config_dict(tmp_path, tiny_model, questions)
    data["generate"].update(num_samples=NUM_SAMPLES, questions_per_shard=4)
    # 0.25 s per request: 16 s of work for both actors, 32 s for one
    data["teacher"].update(backend="ray", engine={**data["teacher"]["engine"], "delay": 0.25},
                           ray={"address": address, "replicas": 2, "num_cpus": 1, "chunk_size": 2,
                                "chunks_per_actor": 1, "max_actor_restarts": 2, "start_timeout_s": 120})
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def in_background(config) -> tuple[threading.Thread, dict]:
    """The generate stage in a thread (Ray's nodes are added and removed from the main thread only)."""
    out: dict = {}

    def work():
        try:
            out["stats"] = generate.STAGE.run(config)
        except BaseException as e:  # reported by the test
            out["error"] = e

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, out


def lose_node_mid_run(cluster: Cluster, worker, config, run: threading.Thread, then_add: bool) -> list[str]:
    """Once the first shard is written, remove the worker node (no grace); a new one joins 3 s later if asked."""
    events: list[str] = []
    deadline = time.monotonic() + 120
    while not list(config.paths.samples.glob("*.parquet")):
        if time.monotonic() > deadline or not run.is_alive():
            return ["no shard within 120 s, or the run ended first"]
        time.sleep(0.1)
    started = time.monotonic()
    cluster.remove_node(worker, allow_graceful=False)
    events.append("removed")
    if then_add:
        time.sleep(3)
        cluster.add_node(num_cpus=1)
        events.append("added")
    print(f"\n{events} in {time.monotonic() - started:.1f} s")
    return events


def check_every_sample_once(config) -> None:
    rows = [r for shard in sorted(config.paths.samples.glob("*.parquet"))
            for r in pq.read_table(shard, columns=["question_id", "sample_index"]).to_pylist()]
    counts = Counter((r["question_id"], r["sample_index"]) for r in rows)
    assert [k for k, c in counts.items() if c > 1] == [], "a sample written twice"
    assert len(counts) == NUM_QUESTIONS * NUM_SAMPLES, "a sample missing"


def rerun_skips(config, stats: dict) -> None:
    """With the cluster gone: a rerun that tried to reach an actor would fail."""
    assert generate.STAGE.is_complete(config)
    assert generate.STAGE.run(config) == stats


@pytest.mark.parametrize("comes_back", [True, False], ids=["new-node-joins", "none-comes-back"])
def test_lost_node(cluster, comes_back, tmp_path, tiny_model, gsm8k_rows, caplog):
    caplog.set_level(logging.INFO, logger="cotdistill.teachers.ray_pool")
    cluster, worker = cluster
    config = write_config(tmp_path, tiny_model, gsm8k_rows, cluster.address)
    started = time.monotonic()
    run, out = in_background(config)
    events = lose_node_mid_run(cluster, worker, config, run, then_add=comes_back)
    run.join(timeout=300)
    seconds = time.monotonic() - started
    assert not run.is_alive(), "the run did not end within 300 s"
    if "error" in out:
        raise out["error"]
    stats = out["stats"]
    messages = [r.getMessage() for r in caplog.records]
    print(f"\n{'new node' if comes_back else 'no node'}: run of {seconds:.1f} s; events {events}")
    print("\n".join(m for m in messages if "actor-" in m or "chunk" in m))

    assert events[:1] == ["removed"], events
    assert any("died" in m and "replaces it" in m for m in messages), "the dead actor was not replaced"
    assert any(m.startswith("re-sending chunk") for m in messages), "the dead actor's chunk was not re-sent"
    assert stats["num_failed"] == 0 and stats["questions"] == NUM_QUESTIONS
    check_every_sample_once(config)
    replacement_up = any(m.startswith("actor-2 is up") for m in messages)
    if comes_back:
        assert events == ["removed", "added"]
        assert replacement_up, "the replacement was never placed on the new node"
    else:
        assert not replacement_up  # nowhere to place it: the survivor did the rest alone

    cluster.shutdown()
    rerun_skips(config, stats)
