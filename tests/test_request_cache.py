"""generate.cache (teachers/cache.py): a second run with another run_name and the same generate settings sends no
request, starts no engine and writes the same shards; a run with one setting changed sends only what changed;
stats.json counts hits and the tokens saved. The cache's own logic (keys, what is kept, eviction, several
writers, torn entries) is checked on a stand-in backend."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.config.sections import ModelConfig
from cotdistill.core.fields import ConfigError
from cotdistill.stages import generate
from cotdistill.teachers.base import Completion, Finished, Sampling, TeacherRequest
from cotdistill.teachers.cache import CachedTeacher, RequestCache, request_key
from tests.conftest import tiny_config_dict

# --- the stage, on the real engine -----------------------------------------------------------------------------


def rows(config) -> list[dict]:
    return sorted((r for shard in config.paths.samples.glob("*.parquet") for r in pq.read_table(shard).to_pylist()),
                  key=lambda r: (r["question_id"], r["sample_index"]))


@pytest.mark.engine
def test_second_run_sends_nothing_and_one_change_sends_only_what_changed(tmp_path, tiny_model, gsm8k_rows,
                                                                         monkeypatch):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[:8]))
    data = tiny_config_dict(tmp_path, tiny_model, questions)
    data["data"]["limit"] = 6
    data["generate"].update(num_samples=2, max_tokens=16, questions_per_shard=3, seed_per_request=True,
                            cache={"enabled": True, "dir": str(tmp_path / "cache")})
    path = tmp_path / "cached.yaml"
    path.write_text(yaml.safe_dump(data))

    first = load_config(path, ["run_name=first"])
    first_stats = generate.STAGE.run(first)
    assert first_stats["cache"] == {"hits": 0, "prompt_tokens_saved": 0, "completion_tokens_saved": 0}

    # The same settings under another name: every request hits, and no engine may start.
    import cotdistill.teachers.vllm_local as vllm_local

    def no_engine(*args, **kwargs):
        raise AssertionError("an engine was started although every request is in the cache")

    with monkeypatch.context() as patch:
        patch.setattr(vllm_local, "build_llm", no_engine)
        second = load_config(path, ["run_name=second"])
        second_stats = generate.STAGE.run(second)
    assert second_stats["cache"] == {"hits": 6, "prompt_tokens_saved": first_stats["prompt_tokens"],
                                     "completion_tokens_saved": first_stats["completion_tokens"]}
    assert [{**r, "run_id": None} for r in rows(second)] == [{**r, "run_id": None} for r in rows(first)]
    for key in ("questions", "rationales", "prompt_tokens", "completion_tokens", "truncated"):
        assert second_stats[key] == first_stats[key], key

    # Two more questions: only those two are sent; the six others hit.
    third = load_config(path, ["run_name=third", "data.limit=8"])
    third_stats = generate.STAGE.run(third)
    assert third_stats["questions"] == 8 and third_stats["cache"]["hits"] == 6
    assert [r for r in rows(third) if r["question_id"] in {q["question_id"] for q in rows(first)}] == [
        {**r, "run_id": "third"} for r in rows(first)]

    # Another temperature changes every request: nothing hits.
    fourth = load_config(path, ["run_name=fourth", "generate.temperature=0.7"])
    assert generate.STAGE.run(fourth)["cache"]["hits"] == 0


def test_unseeded_cache_needs_an_opt_in_at_load(tmp_path, tiny_model, gsm8k_rows):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps(gsm8k_rows[0]) + "\n")
    data = tiny_config_dict(tmp_path, tiny_model, questions)
    data["generate"]["cache"] = {"enabled": True}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="generate.cache.*seed_per_request"):
        load_config(path)
    assert load_config(path, ["generate.cache.unseeded=true"]).generate.cache.unseeded
    # The cache is no setting of the outputs: the same fingerprint with it on or off.
    on = load_config(path, ["generate.seed_per_request=true"])
    off = load_config(path, ["generate.seed_per_request=true", "generate.cache.enabled=false"])
    assert generate.fingerprint(on) == generate.fingerprint(off)


# --- the cache's logic, on a stand-in backend ---------------------------------------------------------------------


class CountingTeacher:
    """Answers each request with its key; counts what it was sent."""

    def __init__(self):
        self.sent: list[str] = []
        self.closed = False

    def tokenizer(self):
        return None

    def max_model_len(self):
        return 1024

    def generate(self, requests):
        for r in requests:
            self.sent.append(r.key)
            if "fail" in r.key:
                yield Finished(key=r.key, completions=[], prompt_tokens=3, error="boom")
                continue
            yield Finished(key=r.key, prompt_tokens=3, completions=[
                Completion(text=f"answer to {r.messages[0]['content']} #{r.first_sample + i}", finish_reason="stop",
                           completion_tokens=5, token_ids=[1, 2], topk_ids=np.ones((2, 3), np.int32),
                           topk_logprobs=np.full((2, 3), -0.5, np.float32)) for i in range(r.sampling.n)])

    def close(self):
        self.closed = True


def request(text: str, seed: int | None = 7, n: int = 2, first: int = 0, key: str | None = None) -> TeacherRequest:
    return TeacherRequest(key=key or text, messages=[{"role": "user", "content": text}], prompt_text="",
                          prompt_token_ids=None, sampling=Sampling(n=n, seed=seed), first_sample=first)


def cached_teacher(cache: RequestCache, backend: CountingTeacher) -> CachedTeacher:
    model = ModelConfig(model="stand-in", backend="openai")
    return CachedTeacher(model, {"model": "stand-in"}, cache, build=lambda: backend)


def test_hits_misses_and_what_is_kept(tmp_path):
    cache = RequestCache(tmp_path, max_bytes=10**9)
    first, second = CountingTeacher(), CountingTeacher()
    batch = [request("a"), request("b"), request("c", seed=None), request("fail")]
    out = {f.key: f for f in cached_teacher(cache, first).generate(batch)}
    assert first.sent == ["a", "b", "c", "fail"] and not any(f.cached for f in out.values())

    teacher = cached_teacher(cache, second)
    again = {f.key: f for f in teacher.generate(batch + [request("a", key="a-again")])}
    assert second.sent == ["c", "fail"]  # unseeded and failed answers were not kept
    assert set(again) == {"a", "b", "c", "fail", "a-again"}
    assert again["a"].cached and again["a-again"].cached and not again["c"].cached
    assert again["a"].completions[0].text == out["a"].completions[0].text
    assert np.array_equal(again["a"].completions[0].topk_logprobs, out["a"].completions[0].topk_logprobs)
    assert (teacher.hits, teacher.misses) == (3, 2)

    # Every part of the key matters: another seed, n, first sample or teacher is another request.
    settings = {"model": "stand-in"}
    base = request_key(settings, request("a"))
    assert base == request_key(settings, request("a", key="other key"))  # the run's key is not part of it
    for other in (request("a", seed=8), request("a", n=3), request("a", first=2), request("a2")):
        assert request_key(settings, other) != base
    assert request_key({"model": "another"}, request("a")) != base

    unseeded = RequestCache(tmp_path, max_bytes=10**9, unseeded=True)
    third = CountingTeacher()
    list(cached_teacher(unseeded, third).generate([request("c", seed=None)]))
    list(cached_teacher(unseeded, third).generate([request("c", seed=None)]))
    assert third.sent == ["c"]  # opted in: kept, and reused


def test_all_hits_build_no_backend(tmp_path):
    cache = RequestCache(tmp_path, max_bytes=10**9)
    list(cached_teacher(cache, CountingTeacher()).generate([request("a"), request("b")]))

    def never():
        raise AssertionError("built")

    model = ModelConfig(model="stand-in", backend="openai")
    teacher = CachedTeacher(model, {"model": "stand-in"}, cache, build=never)
    assert [f.key for f in teacher.generate([request("a"), request("b")])] == ["a", "b"]
    assert not teacher.started


def test_size_is_bounded_least_recently_used_first(tmp_path):
    cache = RequestCache(tmp_path, max_bytes=10**9)
    backend = CountingTeacher()
    list(cached_teacher(cache, backend).generate([request(f"q{i}") for i in range(20)]))
    per_entry = cache._size() / 20
    small = RequestCache(tmp_path, max_bytes=int(per_entry * 10.5))  # opening it evicts down to 90%
    assert small._size() <= per_entry * 10.5 * 0.9 + 1
    kept = {p.name for p in (tmp_path / "v1").glob("*/*.json.gz")}
    assert 0 < len(kept) < 20


def write_entries(directory: str, worker: int) -> None:
    cache = RequestCache(directory, max_bytes=10**9)
    backend = CountingTeacher()
    model = ModelConfig(model="stand-in", backend="openai")
    teacher = CachedTeacher(model, {"model": "stand-in"}, cache, build=lambda: backend)
    list(teacher.generate([request(f"q{i}") for i in range(200)]))


def test_several_writers_at_once_and_torn_entries(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=write_entries, args=(str(tmp_path), w)) for w in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    cache = RequestCache(tmp_path, max_bytes=10**9)
    settings = {"model": "stand-in"}
    for i in range(200):
        done = cache.get(request_key(settings, request(f"q{i}")), f"q{i}")
        assert done is not None and done.completions[1].text == f"answer to q{i} #1"
    assert not list(tmp_path.glob("v1/*/.*tmp*"))  # no temporary file left behind

    # A torn entry (a crash mid-write on a filesystem without atomic rename, a foreign file) is a miss.
    torn = cache._path(request_key(settings, request("q0")))
    torn.write_bytes(torn.read_bytes()[:20])
    assert cache.get(request_key(settings, request("q0")), "q0") is None and not torn.exists()
