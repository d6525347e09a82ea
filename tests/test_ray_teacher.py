"""The ray teacher backend (teachers/ray_pool.py) on a local Ray with two one-core replicas of the parrot model:
every request back exactly once, the same results as the single-engine backend, and an actor killed mid-run
(its chunks re-sent, a replacement started). A stand-in actor without vLLM (EchoActor: the real EngineActor
around a fake engine) checks what a real engine is too slow to show here: chunks share one engine run, a chunk
re-sent until max_actor_restarts is used up comes back as errors, a hung actor is killed by chunk_timeout_s, an
engine's exception reaches the caller, and a pool with no actors left raises. Every pool starts its own Ray and
shuts it down."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import pytest
import ray

from cotdistill.config import ModelConfig, RayConfig
from cotdistill.teachers import Completion, Finished, Sampling, TeacherRequest
from cotdistill.teachers.ray_actor import EngineActor
from cotdistill.teachers.ray_pool import RayPoolTeacher
from tests.conftest import PARROT_ANSWER, TINY_ENGINE
from tests.teacher_requests import zero_shot_requests

RAY_LOGGER = "cotdistill.teachers.ray_pool"


@pytest.fixture(scope="module")
def questions(gsm8k_rows) -> list[str]:
    return sorted((r["question"] for r in gsm8k_rows[:300]), key=len)[:24]  # short: prompts well within 512


def parrot_config(model_dir: Path, **ray_options) -> ModelConfig:
    return ModelConfig(model=str(model_dir), backend="ray", engine=dict(TINY_ENGINE),
                       ray=RayConfig(replicas=2, num_cpus=1, num_gpus=0, **ray_options))


@pytest.fixture(scope="class")
def parrot_pool(parrot_model: Path):
    """One pool for the tests of TestParrotPool (engine starts are the slow part): 24 requests make 8 chunks of 3,
    two out on each actor at a time."""
    assert not ray.is_initialized(), "a Ray left running by an earlier test"
    started = time.monotonic()
    pool = RayPoolTeacher(parrot_config(parrot_model, max_actor_restarts=3), seed=0, chunk_size=3,
                          chunks_per_actor=2, chunk_timeout_s=150)
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
        started = time.monotonic()
        results = list(pool.generate(iter(requests)))  # a one-pass iterator, as the generate stage hands over
        print(f"\n24 requests x 2 samples in {time.monotonic() - started:.2f} s")
        check_all_back(results, requests, n=2)
        assert all(f.retries == 0 for f in results)
        assert any(c.text.strip() == PARROT_ANSWER for f in results for c in f.completions)

        # The single-engine backend on the same requests: the same Finished objects.
        from cotdistill.teachers.vllm_local import build

        single = build(ModelConfig(model=str(parrot_model), engine=dict(TINY_ENGINE)), seed=0)
        try:
            expected = {f.key: f for f in single.generate(requests)}
        finally:
            single.close()
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


class EchoTeacher:
    """Stands in for VLLMTeacher inside the actor: answers each request after `delay` seconds, one at a time,
    pulling requests the way VLLMTeacher does (while fewer than max_in_flight are held)."""

    def __init__(self, delay: float):
        self.delay, self.max_in_flight = delay, 512
        self.calls = self.max_held = 0

    def max_model_len(self) -> int:
        return 512

    def generate(self, requests):
        self.calls += 1
        pending, held, exhausted = iter(requests), [], False
        while True:
            while not exhausted and len(held) < self.max_in_flight:
                request = next(pending, None)
                if request is None:
                    exhausted = True
                    break
                held.append(request)
            if not held:
                return
            self.max_held = max(self.max_held, len(held))
            time.sleep(self.delay)
            request = held.pop(0)
            if "hang" in request.messages[0]["content"]:
                time.sleep(3600)
            if "boom" in request.messages[0]["content"]:
                raise ValueError("boom: a request the engine refuses")
            yield Finished(key=request.key, prompt_tokens=len(request.prompt_token_ids),
                           completions=[Completion(text=request.messages[0]["content"], finish_reason="stop",
                                                   completion_tokens=1)] * request.sampling.n)


class EchoActor(EngineActor):
    def _build_teacher(self, model, seed, model_path):
        return EchoTeacher(delay=float(model.engine["delay"]))

    def stats(self) -> dict[str, int]:
        return {"calls": self._teacher.calls, "max_held": self._teacher.max_held}


class EchoPool(RayPoolTeacher):
    actor_class = EchoActor


def echo_requests(count: int, special: dict[int, str] | None = None) -> list[TeacherRequest]:
    texts = [(special or {}).get(i, f"echo {i}") for i in range(count)]
    return [TeacherRequest(key=f"e{i}", messages=[{"role": "user", "content": text}], prompt_text="",
                           prompt_token_ids=[1, 2, 3], sampling=Sampling(n=2)) for i, text in enumerate(texts)]


@pytest.fixture
def echo_model(own_ray):
    # The stand-in actors are pickled by value: Ray's workers need not import this test module.
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield lambda **ray_options: ModelConfig(model="echo", backend="ray", engine={"delay": 0.05},
                                                ray=RayConfig(**{"replicas": 2, "num_cpus": 0, **ray_options}))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_chunks_share_one_engine_run(echo_model):
    """An actor's chunks all go into its engine at once, and chunks arriving later join the running ones: one
    VLLMTeacher.generate call for the whole stream, never drained at a chunk's end while more are queued."""
    with EchoPool(echo_model(replicas=1), seed=0, chunk_size=4, chunks_per_actor=3) as pool:
        results = list(pool.generate(echo_requests(40)))
        stats = ray.get(pool.actors[0].stats.remote(), timeout=30)
    assert sorted(f.key for f in results) == sorted(f"e{i}" for i in range(40))
    assert stats["max_held"] > 8, stats  # more than two chunks in the engine at once
    assert stats["calls"] <= 2, stats  # 10 chunks, one run (two if the first chunk started alone)


def test_resends_used_up_give_error_records(echo_model, caplog):
    caplog.set_level(logging.WARNING, logger=RAY_LOGGER)
    requests = echo_requests(40)
    with EchoPool(echo_model(max_actor_restarts=0), seed=0, chunk_size=4, chunks_per_actor=2) as pool:
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
    with EchoPool(echo_model(max_actor_restarts=1), seed=0, chunk_size=4, chunks_per_actor=1,
                  chunk_timeout_s=2) as pool:
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
    with EchoPool(echo_model(max_actor_restarts=0), seed=0, chunk_size=2, chunks_per_actor=1) as pool:
        with pytest.raises(RuntimeError, match="all Ray actors died"):
            for _ in pool.generate(echo_requests(40)):
                for actor in pool.actors:
                    ray.kill(actor)


def test_engine_error_reaches_the_caller_and_the_pool_goes_on(echo_model):
    with EchoPool(echo_model(), seed=0, chunk_size=4, chunks_per_actor=2) as pool:
        with pytest.raises(ValueError, match="boom"):
            list(pool.generate(echo_requests(40, {9: "boom"})))
        assert len(pool.actors) == 2 and pool.restarts_used == 0  # an engine error is not a death
        results = list(pool.generate(echo_requests(12)))
    assert sorted(f.key for f in results) == sorted(f"e{i}" for i in range(12))
