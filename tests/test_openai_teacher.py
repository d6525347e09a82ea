"""The openai teacher backend against a real vLLM OpenAI-compatible server (the parrot model, one server for the
whole file), directly and through FaultProxy: sampling, token accounting, retries and their count, Retry-After,
the API key, reasoning models. Every server, proxy and teacher is stopped at the end, also on failure."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import pytest

from cotdistill.config.sections import ModelConfig
from cotdistill.teachers.base import TeacherRequest, TeacherUnavailable
from cotdistill.teachers.openai_server import OpenAIConfig
from cotdistill.teachers.openai_server import (
    OpenAITeacher, build, is_loopback, resolve_api_key, retry_after_seconds, split_tokens,
)
from tests.conftest import PARROT_ANSWER
from tests.servers import RETRIED_FAULTS, FaultProxy, StubOpenAI
from tests.teacher_requests import zero_shot_requests

SECRET = "sk-test-secret-123"


# --- fixtures and helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(served_parrot: str) -> str:
    return served_parrot  # one server for the whole session (tests/conftest.py)


@pytest.fixture(scope="module")
def tokenizer(parrot_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(parrot_model)


@pytest.fixture(scope="module")
def questions(gsm8k_rows) -> list[str]:
    return sorted((r["question"] for r in gsm8k_rows[:300]), key=len)[:40]  # short: prompts well within 512


@pytest.fixture
def stack():
    with ExitStack() as s:  # whatever a test opens here is closed after it, passed or failed
        yield s


def make_requests(tokenizer, questions: list[str], prefix: str, n: int = 3, max_tokens: int = 24,
                  **sampling) -> list[TeacherRequest]:
    return zero_shot_requests(tokenizer, questions, prefix, n=n, max_tokens=max_tokens, **sampling)


def make_teacher(stack: ExitStack, base_url: str, model_dir: Path, **openai) -> OpenAITeacher:
    config = ModelConfig(model=str(model_dir), backend="openai", settings=OpenAIConfig(base_url=base_url, **openai))
    # Short backoff windows keep the fault tests quick; Retry-After still waits what it says.
    return stack.enter_context(OpenAITeacher(config, seed=0, backoff_multiplier=0.05, backoff_max=0.2))


def exchanges_of(proxy: FaultProxy, request: TeacherRequest) -> list[tuple]:
    """The proxy's successful exchanges that carried this request's prompt."""
    def same(body) -> bool:
        return body.get("messages") == request.messages if "messages" in body \
            else body.get("prompt") == request.prompt_text
    return [e for e in proxy.exchanges if e[2] == 200 and same(e[1])]


# --- pure helpers, no server -------------------------------------------------------------------------------------


def test_retry_after_parsing():
    import email.utils

    def error(headers):
        return SimpleNamespace(response=SimpleNamespace(headers=headers))

    assert retry_after_seconds(error({"retry-after": "1"})) == 1.0
    assert retry_after_seconds(error({"retry-after": "2.5"})) == 2.5
    assert retry_after_seconds(error({"retry-after-ms": "300", "retry-after": "9"})) == 0.3
    in_3s = email.utils.formatdate(time.time() + 3, usegmt=True)
    assert 1.5 <= retry_after_seconds(error({"retry-after": in_3s})) <= 3.0
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    assert retry_after_seconds(error({"retry-after": past})) == 0.0
    assert retry_after_seconds(error({"retry-after": "soon"})) is None
    assert retry_after_seconds(error({})) is None
    assert retry_after_seconds(ValueError("no response")) is None


def test_split_tokens_adds_up():
    assert split_tokens(54, [17, 17, 17]) == [18, 18, 18]  # each stopped sample's end-of-turn token
    assert split_tokens(10, [3, 3, 3]) == [3, 3, 4]
    assert split_tokens(9, [0, 0]) == [4, 5]  # no tokenizer: the usage split evenly, the last adjusted
    assert split_tokens(2, [5, 0, 1]) == [1, 0, 1]  # the tokenizer over-counted: taken from the largest
    for total, counts in [(7, [9, 1, 0]), (0, [3, 3]), (100, [1])]:
        out = split_tokens(total, counts)
        assert sum(out) == total and min(out) >= 0


def test_api_key_rules(monkeypatch):
    assert is_loopback("http://127.0.0.1:8000/v1") and is_loopback("http://localhost/v1")
    assert is_loopback("http://[::1]:8000/v1") and is_loopback("http://127.0.0.2:1/v1")
    assert not is_loopback("https://api.openai.com/v1") and not is_loopback("http://10.0.0.5:8000/v1")
    monkeypatch.delenv("COTDISTILL_TEST_UNSET_KEY", raising=False)
    assert resolve_api_key(OpenAIConfig(base_url="http://127.0.0.1:9/v1", api_key_env="COTDISTILL_TEST_UNSET_KEY")) \
        == "EMPTY"
    with pytest.raises(ValueError, match="COTDISTILL_TEST_UNSET_KEY"):
        resolve_api_key(OpenAIConfig(base_url="https://api.example.com/v1", api_key_env="COTDISTILL_TEST_UNSET_KEY"))
    # The teacher refuses before starting anything, and sends no traffic.
    config = ModelConfig(model="gpt-4o-mini", backend="openai",
                         settings=OpenAIConfig(base_url="https://api.example.com/v1",
                                             api_key_env="COTDISTILL_TEST_UNSET_KEY"))
    threads = threading.active_count()
    with pytest.raises(ValueError, match="COTDISTILL_TEST_UNSET_KEY"):
        build(config, seed=0)
    assert threading.active_count() == threads


# --- against the real server ------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
@pytest.mark.parametrize("n_per_request", [True, False])
def test_real_server(server, parrot_model, tokenizer, questions, stack, endpoint, n_per_request):
    proxy = stack.enter_context(FaultProxy(server, lifetime_s=120))  # no faults: it records what passed
    teacher = make_teacher(stack, proxy.url, parrot_model, endpoint=endpoint, n_per_request=n_per_request,
                           max_concurrency=2, timeout_s=60)
    requests = make_requests(tokenizer, questions[:3], "q", n=3, max_tokens=24, temperature=0.7)
    requests += make_requests(tokenizer, questions[3:4], "topk", n=3, max_tokens=24, temperature=0.7, top_k=5)
    requests += make_requests(tokenizer, questions[4:5], "short", n=3, max_tokens=5)
    if not n_per_request:  # vLLM on CPU refuses a seed with n > 1; n=1 requests take one each
        requests += make_requests(tokenizer, questions[5:6], "seeded", n=3, max_tokens=24, seed=100)
    by_key = {r.key: r for r in requests}

    caller = threading.get_ident()
    pulled: list[int] = []

    def source():
        for request in requests:
            pulled.append(threading.get_ident())
            yield request

    started = time.monotonic()
    results = []
    for done in teacher.generate(source()):
        if not results:  # pulled lazily: no more than max_concurrency ahead of the first result
            assert len(pulled) <= 2
        results.append(done)
    elapsed = time.monotonic() - started
    assert set(pulled) == {caller}  # the caller's iterator was only advanced in the caller's thread
    assert sorted(f.key for f in results) == sorted(by_key)
    assert elapsed < 60

    calls = len(requests) if n_per_request else 3 * len(requests)
    assert proxy.counts["pass"] == calls == len(proxy.exchanges)
    texts = []
    for finished in results:
        request = by_key[finished.key]
        assert finished.error is None and finished.retries == 0
        assert len(finished.completions) == 3
        exchanges = exchanges_of(proxy, request)
        assert len(exchanges) == (1 if n_per_request else 3)
        assert all(e[1]["n"] == (3 if n_per_request else 1) for e in exchanges)
        usage = [e[3]["usage"] for e in exchanges]
        assert finished.prompt_tokens == usage[0]["prompt_tokens"] > 0
        if endpoint == "completions":  # the same prompt as the local engine's
            assert finished.prompt_tokens == len(request.prompt_token_ids)
        assert sum(c.completion_tokens for c in finished.completions) == sum(u["completion_tokens"] for u in usage)
        assert all(c.completion_tokens > 0 for c in finished.completions)
        assert all(c.finish_reason in ("stop", "length") and c.reasoning is None for c in finished.completions)
        bodies = [e[1] for e in exchanges]
        if request.sampling.top_k != -1:
            assert all(b["top_k"] == 5 for b in bodies)
        else:
            assert all("top_k" not in b for b in bodies)
        if request.sampling.seed is not None:
            assert sorted(b["seed"] for b in bodies) == [100, 101, 102]
        else:
            assert all("seed" not in b for b in bodies)
        if finished.key.startswith("short"):
            assert all(c.finish_reason == "length" for c in finished.completions)
            assert sum(c.completion_tokens for c in finished.completions) == 3 * 5
        else:
            texts += [c.text for c in finished.completions]
    # The parrot answers every question so (temperature 0.7 leaves room for a stray sample).
    assert sum("The answer is 7" in t for t in texts) >= 0.8 * len(texts)
    assert any(t.strip() == PARROT_ANSWER for t in texts)


def test_teacher_metadata_and_bad_request(server, parrot_model, tokenizer, questions, stack):
    teacher = make_teacher(stack, server, parrot_model, max_retries=3)
    assert teacher.name == str(parrot_model)
    assert teacher.tokenizer() is not None and teacher.tokenizer().chat_template
    assert teacher.max_model_len() == 512  # what the server reports (--max-model-len), not the config's 512
    ok = make_requests(tokenizer, questions[:1], "ok", n=2)
    too_long = make_requests(tokenizer, questions[1:2], "bad", n=2, max_tokens=5000)  # beyond max_model_len
    results = {f.key: f for f in teacher.generate(ok + too_long)}
    assert results["ok0"].error is None and len(results["ok0"].completions) == 2
    bad = results["bad0"]
    # A 400 is not retried: recorded at once, never raised.
    assert bad.completions == [] and bad.prompt_tokens == 0 and bad.retries == 0
    assert bad.error.startswith("BadRequestError: ")


def test_faults_are_retried_and_counted(server, parrot_model, tokenizer, questions, stack):
    proxy = stack.enter_context(FaultProxy(server, seed=1234, rate_429=0.2, rate_500=0.15, rate_drop=0.1,
                                           rate_slow=0.1, slow_s=0.3, lifetime_s=120))
    teacher = make_teacher(stack, proxy.url, parrot_model, max_retries=6, max_concurrency=4, timeout_s=20)
    requests = make_requests(tokenizer, questions[:20], "f", n=2, max_tokens=24, temperature=0.7)
    started = time.monotonic()
    results = list(teacher.generate(requests))
    elapsed = time.monotonic() - started
    print(f"\n20 requests through faults: {elapsed:.1f} s, proxy {dict(proxy.counts)}, "
          f"retries {sum(f.retries for f in results)}")
    assert sorted(f.key for f in results) == sorted(r.key for r in requests)  # each exactly once
    assert proxy.injected(RETRIED_FAULTS) > 0 and proxy.counts["slow"] > 0
    failed = [f for f in results if f.error is not None]
    succeeded = [f for f in results if f.error is None]
    # Every attempt that met a 429, 500 or dropped connection was either retried or was its request's last
    # attempt (which then failed); every successful request got exactly one forwarded reply ("pass" or "slow").
    assert proxy.injected(RETRIED_FAULTS) == sum(f.retries for f in results) + len(failed)
    assert proxy.counts["pass"] + proxy.counts["slow"] == len(succeeded)
    assert all(len(f.completions) == 2 and f.prompt_tokens > 0 for f in succeeded)
    assert all(f.completions == [] and f.retries == 6 for f in failed)
    assert elapsed < 90


def test_faults_without_retries_are_recorded(server, parrot_model, tokenizer, questions, stack):
    proxy = stack.enter_context(FaultProxy(server, seed=1234, rate_429=0.2, rate_500=0.15, rate_drop=0.1,
                                           rate_slow=0.1, slow_s=0.3, lifetime_s=120))
    teacher = make_teacher(stack, proxy.url, parrot_model, max_retries=0, max_concurrency=4, timeout_s=20)
    requests = make_requests(tokenizer, questions[:20], "z", n=2, max_tokens=24)
    started = time.monotonic()
    results = list(teacher.generate(requests))
    assert time.monotonic() - started < 60
    assert sorted(f.key for f in results) == sorted(r.key for r in requests)
    failed = [f for f in results if f.error is not None]
    # One attempt each, so the 20 seeded draws decide exactly which fail: as many as faults were injected.
    assert len(failed) == proxy.injected(RETRIED_FAULTS) > 0
    assert sum(f.retries for f in results) == 0
    assert all(f.completions == [] and f.prompt_tokens == 0 for f in failed)
    kinds = {f.error.split(":")[0] for f in failed}
    assert kinds <= {"RateLimitError", "InternalServerError", "APIConnectionError"}
    assert {"RateLimitError", "InternalServerError"} <= kinds
    assert all(len(f.completions) == 2 for f in results if f.error is None)


def test_faults_with_one_request_per_sample(server, parrot_model, tokenizer, questions, stack):
    """n_per_request false: a question's retries add up over its N requests; one failed request fails it."""
    proxy = stack.enter_context(FaultProxy(server, seed=7, rate_429=0.15, rate_500=0.15, rate_drop=0.1,
                                           lifetime_s=120))
    teacher = make_teacher(stack, proxy.url, parrot_model, max_retries=1, max_concurrency=4, timeout_s=20,
                           n_per_request=False)
    requests = make_requests(tokenizer, questions[:10], "s", n=2, max_tokens=24)
    results = list(teacher.generate(requests))
    assert sorted(f.key for f in results) == sorted(r.key for r in requests)
    failed = [f for f in results if f.error is not None]
    retries = sum(f.retries for f in results)
    # Each failed question had one or both of its two requests fail after their last attempt.
    assert retries + len(failed) <= proxy.injected(RETRIED_FAULTS) <= retries + 2 * len(failed)
    assert proxy.counts["pass"] == 2 * (len(results) - len(failed)) + sum(
        1 for f in failed if "[2 of 2 requests failed]" not in f.error)
    assert all(len(f.completions) == 2 for f in results if f.error is None)


def test_timeouts_are_retried(server, parrot_model, tokenizer, questions, stack):
    proxy = stack.enter_context(FaultProxy(server, rate_slow=1.0, slow_s=3.0, lifetime_s=60))
    teacher = make_teacher(stack, proxy.url, parrot_model, max_retries=1, timeout_s=0.5)
    started = time.monotonic()
    # Two requests timing out, retried once each: recorded as failed (fewer in a row than an outage takes).
    results = list(teacher.generate(make_requests(tokenizer, questions[:2], "t", n=1)))
    assert time.monotonic() - started < 10
    assert [f.retries for f in results] == [1, 1]
    assert all(f.error.startswith("APITimeoutError: ") for f in results)
    assert proxy.counts["slow"] == 4


def test_retry_after_is_honoured(server, parrot_model, tokenizer, questions, stack):
    proxy = stack.enter_context(FaultProxy(server, first_attempt_429=True, retry_after="1", lifetime_s=60))
    # One at a time, and a backoff window far below a second: only Retry-After can make each take 1 s.
    teacher = make_teacher(stack, proxy.url, parrot_model, max_concurrency=1, max_retries=2)
    requests = make_requests(tokenizer, questions[:3], "r", n=2)
    moments = [time.monotonic()]
    results = []
    for done in teacher.generate(requests):
        moments.append(time.monotonic())
        results.append(done)
    durations = [b - a for a, b in zip(moments, moments[1:])]
    print(f"\nwith Retry-After: 1, each request took {', '.join(f'{d:.2f}' for d in durations)} s")
    assert all(d >= 1.0 for d in durations) and sum(durations) < 20
    assert [f.retries for f in results] == [1, 1, 1] and all(f.error is None for f in results)
    assert proxy.counts["429"] == 3 and proxy.counts["pass"] == 3


def test_api_key_from_named_variable_only(server, parrot_model, tokenizer, questions, stack, monkeypatch, caplog):
    monkeypatch.setenv("COTDISTILL_TEST_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    caplog.set_level(logging.DEBUG)
    proxy = stack.enter_context(FaultProxy(server, seed=3, rate_429=0.3, lifetime_s=60))
    teacher = make_teacher(stack, proxy.url, parrot_model, api_key_env="COTDISTILL_TEST_KEY")
    results = list(teacher.generate(make_requests(tokenizer, questions[:3], "k", n=1)))
    assert all(f.error is None for f in results)
    assert proxy.authorizations and set(proxy.authorizations) == {f"Bearer {SECRET}"}  # retries too
    assert not any(SECRET.encode() in body for body in proxy.bodies)
    assert SECRET not in repr(teacher) and SECRET not in repr(vars(teacher))
    assert SECRET not in caplog.text
    # A loopback server without the variable gets "EMPTY".
    monkeypatch.delenv("COTDISTILL_TEST_KEY")
    plain = stack.enter_context(FaultProxy(server, lifetime_s=60))
    keyless = make_teacher(stack, plain.url, parrot_model, api_key_env="COTDISTILL_TEST_KEY")
    assert all(f.error is None for f in keyless.generate(make_requests(tokenizer, questions[:1], "e", n=1)))
    assert set(plain.authorizations) == {"Bearer EMPTY"}


@pytest.mark.parametrize("field_name", ["reasoning_content", "reasoning"])
def test_reasoning_apart_from_the_answer(server, parrot_model, tokenizer, questions, stack, field_name):
    proxy = stack.enter_context(FaultProxy(server, reasoning_field=field_name, lifetime_s=60))
    teacher = make_teacher(stack, proxy.url, parrot_model)
    # Greedy, so the parrot's answer is certain (vLLM refuses n > 1 at temperature 0: several requests).
    requests = make_requests(tokenizer, questions[:3], "m", n=1, temperature=0.0)
    results = list(teacher.generate(requests))
    assert len(results) == 3
    for finished in results:
        assert finished.error is None and len(finished.completions) == 1
        for completion in finished.completions:
            assert completion.reasoning == "We count them all."
            assert completion.text == "The answer is 7."
        (exchange,) = exchanges_of(proxy, next(r for r in requests if r.key == finished.key))
        assert sum(c.completion_tokens for c in finished.completions) == exchange[3]["usage"]["completion_tokens"]


def test_client_side_token_limit(server, parrot_model, tokenizer, questions, stack):
    """tokens_per_minute charges prompt + max_tokens x n before each request: set just under two requests'
    worth, the second waits until the bucket has leaked enough (about 2.4 s here), the first does not."""
    requests = make_requests(tokenizer, questions[:1] * 2, "l", n=2, max_tokens=24)
    charge = len(requests[0].prompt_token_ids) + 24 * 2
    proxy = stack.enter_context(FaultProxy(server, lifetime_s=60))
    teacher = make_teacher(stack, proxy.url, parrot_model, tokens_per_minute=charge / 0.52,
                           requests_per_minute=600)
    started = time.monotonic()
    results = list(teacher.generate(requests))
    assert all(f.error is None for f in results)
    sent = [t - started for t in proxy.arrivals]
    assert len(sent) == 2 and sent[0] < 1.0 and 2.0 <= sent[1] < 5.0, sent


def test_stopping_early_leaves_nothing_running(server, parrot_model, tokenizer, questions, stack):
    proxy = stack.enter_context(FaultProxy(server, rate_slow=1.0, slow_s=1.0, lifetime_s=60))
    config = ModelConfig(model=str(parrot_model), backend="openai",
                         settings=OpenAIConfig(base_url=proxy.url, max_concurrency=2))
    before = {t.name for t in threading.enumerate()}
    teacher = build(config, seed=0)
    try:
        assert isinstance(teacher, OpenAITeacher)
        results = teacher.generate(make_requests(tokenizer, questions[:6], "x", n=1))
        first = next(results)
        results.close()  # the consumer stops: the request still in flight is cancelled
        assert first.error is None
    finally:
        teacher.close()
        teacher.close()  # twice is fine
    assert "openai-teacher" not in {t.name for t in threading.enumerate()} - before
    time.sleep(1.2)
    assert proxy.counts["slow"] == 2  # the first two only: nothing was sent after the consumer stopped
    with pytest.raises(RuntimeError, match="closed"):
        next(teacher.generate([]))


def test_without_a_local_tokenizer(server, parrot_model, tokenizer, questions, stack):
    """A hosted model's name loads no tokenizer: token counts are the server's usage split evenly (still adding
    up), and the context length comes from the server; with the server unreachable, from nowhere."""
    from tests.servers import free_port

    config = ModelConfig(model="hosted-model-without-tokenizer", backend="openai",
                         settings=OpenAIConfig(base_url=server, model=str(parrot_model)))
    teacher = stack.enter_context(OpenAITeacher(config, seed=0))
    assert teacher.name == str(parrot_model) and teacher.tokenizer() is None
    assert teacher.max_model_len() == 512
    requests = make_requests(tokenizer, questions[:2], "h", n=3, max_tokens=24, temperature=0.7)
    for finished in teacher.generate(requests):
        assert finished.error is None and finished.prompt_tokens > 0
        counts = [c.completion_tokens for c in finished.completions]
        assert len(counts) == 3 and max(counts) - min(counts) <= 2 and min(counts) > 0

    silent = stack.enter_context(StubOpenAI()).url  # answers /v1/models without a context length
    nowhere = ModelConfig(model="hosted-model-without-tokenizer", backend="openai",
                          settings=OpenAIConfig(base_url=silent, timeout_s=2))
    assert stack.enter_context(OpenAITeacher(nowhere, seed=0)).max_model_len() is None
    local = ModelConfig(model=str(parrot_model), backend="openai", settings=OpenAIConfig(base_url=silent, timeout_s=2))
    assert stack.enter_context(OpenAITeacher(local, seed=0)).max_model_len() == 512  # its config.json
    unreachable = ModelConfig(model=str(parrot_model), backend="openai",
                              settings=OpenAIConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", timeout_s=2))
    with pytest.raises(TeacherUnavailable, match="no server answers"):  # said before any request is sent
        OpenAITeacher(unreachable, seed=0)
    configured = ModelConfig(model=str(parrot_model), backend="openai", engine={"max_model_len": 256},
                             settings=OpenAIConfig(base_url=server))
    assert stack.enter_context(OpenAITeacher(configured, seed=0)).max_model_len() == 256
