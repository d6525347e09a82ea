"""The ray teacher backend (teachers/ray_pool.py) on a local Ray with two one-core replicas of the parrot model:
every request back exactly once, the same results as the single-engine backend, and an actor killed mid-run
(its chunks re-sent, a replacement started). A stand-in actor without vLLM (EchoActor: the real EngineActor
around a fake engine) checks what a real engine is too slow to show here: chunks share one engine run, a chunk
re-sent until max_actor_restarts is used up comes back as errors, a hung actor is killed by chunk_timeout_s, an
engine's exception counts as its actor's death, and a pool with no actors left raises. Every pool starts its own Ray and
shuts it down."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from pathlib import Path

import pytest
import ray

from cotdistill.config.sections import ModelConfig
from cotdistill.teachers.base import Finished, TeacherRequest
from cotdistill.teachers.ray_actor import ACTOR_ENV
from cotdistill.teachers.ray_pool import RayConfig
from cotdistill.teachers.ray_pool import RayPoolTeacher
from tests.conftest import PARROT_ANSWER, TINY_ENGINE
from tests.ray_echo import EchoPool, echo_requests, pickled_by_value
from tests.teacher_requests import zero_shot_requests

pytestmark = [pytest.mark.ray]

RAY_LOGGER = "cotdistill.teachers.ray_pool"


@pytest.fixture(scope="module")
def questions(gsm8k_rows) -> list[str]:
    return sorted((r["question"] for r in gsm8k_rows[:300]), key=len)[:24]  # short: prompts well within 512


def parrot_config(model_dir: Path, **ray_options) -> ModelConfig:
    return ModelConfig(model=str(model_dir), backend="ray", engine=dict(TINY_ENGINE),
                       settings=RayConfig(replicas=2, num_cpus=1, num_gpus=0, **ray_options))


@pytest.fixture(scope="class")
def parrot_pool(parrot_model: Path):
    """One pool for the tests of TestParrotPool (engine starts are the slow part): 24 requests make 8 chunks of 3,
    two out on each actor at a time."""
    assert not ray.is_initialized(), "a Ray left running by an earlier test"
    started = time.monotonic()
    pool = RayPoolTeacher(parrot_config(parrot_model, max_actor_restarts=3, chunk_size=3, chunks_per_actor=2,
                                        chunk_timeout_s=150), seed=0)
    print(f"\nRay and 2 engines up in {time.monotonic() - started:.1f} s")
    try:
        yield pool
    finally:
        pool.close()
        assert not ray.is_initialized(), "close() must shut down the Ray it started"


@pytest.fixture
def own_ray():
    """For the tests whose pool starts its own Ray: none before, none left after, also on failure."""
    assert not ray.is_initialized(), "a Ray left running by an earlier test"
    yield
    if ray.is_initialized():
        ray.shutdown()
        pytest.fail("the test left Ray running")


def make_requests(tokenizer, questions: list[str], n: int = 2, max_tokens: int = 24) -> list[TeacherRequest]:
    # top_k=1: every sample is the argmax, so the pool and a single engine must agree token for token
    return zero_shot_requests(tokenizer, questions, n=n, temperature=1.0, top_k=1, max_tokens=max_tokens)


def check_all_back(results: list[Finished], requests: list[TeacherRequest], n: int) -> None:
    counts = Counter(f.key for f in results)
    assert [k for k, c in counts.items() if c > 1] == [], "a request came back twice"
    assert set(counts) == {r.key for r in requests}, "a request never came back"
    by_key = {r.key: r for r in requests}
    for f in results:
        assert f.error is None, f.error
        assert len(f.completions) == n
        assert f.prompt_tokens == len(by_key[f.key].prompt_token_ids)
        for c in f.completions:
            assert "The answer is 7" in c.text, c.text
            assert c.completion_tokens > 0


@pytest.mark.engine
class TestParrotPool:
    """Two one-core replicas of the parrot model on a local Ray, shared by these tests in this order."""

    def test_two_replicas_match_the_single_engine(self, parrot_pool: RayPoolTeacher, parrot_model: Path,
                                                  questions: list[str]):
        pool = parrot_pool
        assert pool.name == str(parrot_model)
        assert len(pool.actors) == 2
        assert pool.max_model_len() == TINY_ENGINE["max_model_len"]
        tokenizer = pool.tokenizer()  # loaded on the driver, no engine here
        requests = make_requests(tokenizer, questions)
        assert len(requests) == 24
        # A prompt longer than max_model_len: vLLM refuses it, and that is its own error, not the actor's death.
        too_long = dataclasses.replace(requests[0], key="too-long", prompt_token_ids=requests[0].prompt_token_ids * 40)
        started = time.monotonic()
        results = list(pool.generate(iter(requests + [too_long])))  # one pass, as the generate stage hands over
        print(f"\n24 requests x 2 samples in {time.monotonic() - started:.2f} s")
        refused = [f for f in results if f.key == "too-long"]
        assert len(refused) == 1 and refused[0].completions == [] and "refused by the engine" in refused[0].error
        assert pool.restarts_used == 0
        results = [f for f in results if f.key != "too-long"]
        check_all_back(results, requests, n=2)
        assert all(f.retries == 0 for f in results)
        assert any(c.text.strip() == PARROT_ANSWER for f in results for c in f.completions)

        # The single-engine backend on the same requests: the same Finished objects.
        from cotdistill.teachers.vllm_local import build

        single = build(ModelConfig(model=str(parrot_model), engine=dict(TINY_ENGINE)), seed=0)
        try:
            expected = {f.key: f for f in single.generate(requests + [too_long])}
        finally:
            single.close()
        assert expected.pop("too-long") == refused[0]
        assert {f.key: f for f in results} == expected

    def test_killed_actor_chunks_are_resent_once(self, parrot_pool: RayPoolTeacher, questions: list[str], caplog):
        caplog.set_level(logging.WARNING, logger=RAY_LOGGER)
        pool = parrot_pool
        requests = make_requests(pool.tokenizer(), questions)
        victim = pool.actors[1]
        results: list[Finished] = []
        for done in pool.generate(requests):
            if not results:  # the first chunk is back; 4 of 8 chunks are out, the rest not yet pulled
                ray.kill(victim)
            results.append(done)
        assert pool.restarts_used == 1
        assert pool.resent_chunks >= 1
        assert victim not in pool.actors and len(pool.actors) == 2  # the survivor and the replacement
        check_all_back(results, requests, n=2)
        resent = [r.getMessage() for r in caplog.records if r.getMessage().startswith("re-sending chunk")]
        assert resent, "the pool did not log which chunk it re-sent"
        print("\n" + "\n".join(resent))
        assert "actor-1" in resent[0]
        assert any("replaces it" in r.getMessage() for r in caplog.records)
        # The re-sent chunks' results say so; the others are untouched.
        assert 0 < sum(f.retries == 1 for f in results) < len(results)
        assert all(f.retries in (0, 1) for f in results)


# --- the bookkeeping, with a stand-in engine -----------------------------------------------------------------


@pytest.fixture
def echo_model(own_ray):
    with pickled_by_value():
        yield lambda **ray_options: ModelConfig(model="echo", backend="ray", engine={"delay": 0.05},
                                                settings=RayConfig(**{"replicas": 2, "num_cpus": 0, **ray_options}))


def test_chunks_share_one_engine_run(echo_model):
    """An actor's chunks all go into its engine at once, and chunks arriving later join the running ones: one
    VLLMTeacher.generate call for the whole stream, never drained at a chunk's end while more are queued."""
    with EchoPool(echo_model(replicas=1, chunk_size=4, chunks_per_actor=3), seed=0) as pool:
        results = list(pool.generate(echo_requests(40)))
        stats = ray.get(pool.actors[0].stats.remote(), timeout=30)
    assert sorted(f.key for f in results) == sorted(f"e{i}" for i in range(40))
    assert stats["max_held"] > 8, stats  # more than two chunks in the engine at once
    assert stats["calls"] <= 2, stats  # 10 chunks, one run (two if the first chunk started alone)


def test_resends_used_up_give_error_records(echo_model, caplog):
    caplog.set_level(logging.WARNING, logger=RAY_LOGGER)
    requests = echo_requests(40)
    with EchoPool(echo_model(max_actor_restarts=0, chunk_size=4, chunks_per_actor=2), seed=0) as pool:
        victim = pool.actors[0]
        results: list[Finished] = []
        for done in pool.generate(requests):
            if not results:
                ray.kill(victim)
            results.append(done)
        assert pool.restarts_used == 0 and len(pool.actors) == 1
    assert Counter(f.key for f in results) == Counter(r.key for r in requests)
    failed = [f for f in results if f.error]
    assert failed and all(f.completions == [] and "ray actor died" in f.error for f in failed)
    assert all(f.completions[0].text == f"echo {f.key[1:]}" for f in results if not f.error)
    assert any("no replacement" in r.getMessage() for r in caplog.records)


def test_hung_actor_is_killed_and_its_chunk_resent(echo_model, caplog):
    caplog.set_level(logging.WARNING, logger=RAY_LOGGER)
    requests = echo_requests(16, {1: "hang"})  # e1 hangs whatever actor runs it
    with EchoPool(echo_model(max_actor_restarts=1, chunk_size=4, chunks_per_actor=1,
                                  chunk_timeout_s=2), seed=0) as pool:
        started = time.monotonic()
        results = list(pool.generate(requests))
        seconds = time.monotonic() - started
    assert seconds < 60
    assert Counter(f.key for f in results) == Counter(r.key for r in requests)
    # The hanging chunk hangs its second actor too; with one re-send allowed it then comes back as errors.
    assert {f.key for f in results if f.error} == {"e0", "e1", "e2", "e3"}
    assert any("chunk_timeout_s" in r.getMessage() for r in caplog.records)
    assert any("re-sending chunk" in r.getMessage() for r in caplog.records)


def test_all_actors_dead_raises(echo_model):
    with EchoPool(echo_model(max_actor_restarts=0, chunk_size=2, chunks_per_actor=1), seed=0) as pool:
        with pytest.raises(RuntimeError, match="no Ray actor is left"):
            for _ in pool.generate(echo_requests(40)):
                for actor in pool.actors:
                    ray.kill(actor)


def test_engine_exception_is_the_actors_death(echo_model, caplog):
    """An exception out of an engine (a CUDA out-of-memory, an engine core gone) is not one request's: the actor is
    retired as dead, its chunks are re-sent and a replacement started. A chunk that breaks every engine comes back
    as errors once max_actor_restarts is used up; every other request comes back with its answer."""
    caplog.set_level(logging.WARNING, logger=RAY_LOGGER)
    requests = echo_requests(40, {9: "boom"})  # e9 breaks any engine that runs it
    with EchoPool(echo_model(max_actor_restarts=2, chunk_size=4, chunks_per_actor=2), seed=0) as pool:
        results = list(pool.generate(requests))
        assert pool.restarts_used == 2
    assert Counter(f.key for f in results) == Counter(r.key for r in requests)
    failed = {f.key: f.error for f in results if f.error}
    assert "e9" in failed and "ray actor died" in failed["e9"], failed
    assert all(f.completions[0].text == f"echo {f.key[1:]}" for f in results if not f.error)
    assert any("died (EngineFailed: the engine raised ValueError: boom" in r.getMessage() for r in caplog.records)


def test_no_actor_up_within_start_timeout_stops_the_run(echo_model, tmp_path, caplog):
    """The only actor dies and its replacement does not come up within start_timeout_s: the replacement is given
    up and the run stops with a message, instead of waiting without a bound."""
    caplog.set_level(logging.WARNING, logger=RAY_LOGGER)
    slow = tmp_path / "slow"
    config = echo_model(replicas=1, chunk_size=2, chunks_per_actor=1, start_timeout_s=3)
    config.engine["slow_start_if"] = str(slow)
    with EchoPool(config, seed=0) as pool:
        slow.touch()  # replacements from now on take a minute to start
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="no Ray actor is left.*start_timeout_s"):
            for _ in pool.generate(echo_requests(40)):
                for actor in pool.actors:
                    ray.kill(actor)
        seconds = time.monotonic() - started
    assert seconds < 30
    assert pool.restarts_used == 1
    assert any("not up after" in r.getMessage() for r in caplog.records)


def test_actors_get_absolute_paths_and_the_runtime_env(echo_model, tmp_path, monkeypatch):
    """A model folder given relative to the driver's directory reaches the actors as an absolute path (their
    working directory is not the driver's); the fingerprint's config keeps what the YAML says. runtime_env
    reaches Ray, its env_vars beside the ones actors need."""
    (tmp_path / "models" / "echo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = echo_model(replicas=1, runtime_env={"env_vars": {"COTDISTILL_TEST_VAR": "set"}})
    config.model = "models/echo"
    with EchoPool(config, seed=0, model_path="models/echo") as pool:
        seen = ray.get(pool.actors[0].paths.remote(), timeout=30)
        env = ray.get(pool.actors[0].environment.remote(["COTDISTILL_TEST_VAR", *ACTOR_ENV]), timeout=30)
    assert seen == (str(tmp_path / "models" / "echo"), str(tmp_path / "models" / "echo"))
    assert config.model == "models/echo"
    assert env == {"COTDISTILL_TEST_VAR": "set", **ACTOR_ENV}

