"""The `openai` teacher backend: rationales from any OpenAI-compatible server (`vllm serve` on a cluster, OpenAI,
DeepSeek, a gateway), with bounded concurrency, client-side rate limits and retries.

    teacher = build(model_config, seed=0)           # a model whose backend is openai
    for done in teacher.generate(requests):         # each Finished as soon as all its samples are back
        ...
    teacher.close()

How it runs: one asyncio event loop in one background thread holds an `AsyncOpenAI` client. `generate` stays in
the caller's thread: it pulls requests from the caller's iterator, hands each to the loop as a coroutine, and
yields results as they complete, so the caller's iterator and its consumer are never touched by another thread.
At most `openai.max_concurrency` questions (and HTTP requests) are in flight.

Failures: rate limits (429), server errors (5xx), timeouts, dropped connections and cut-off or undecodable bodies
are retried by tenacity with exponential backoff and jitter (or after the server's `Retry-After`), at most
`openai.max_retries` times per HTTP request. A request that fails for good on its own (a 400 for its context
length, a content filter) comes back as `Finished(key, [], 0, error="<type>: <message>")` and the run goes on;
`Finished.retries` counts the retried attempts behind each result. Errors no request can get past stop the run
with `TeacherUnavailable`, one line naming the cause and the server: 401/403, a 429 whose code is
`insufficient_quota` (an empty account, not a rate limit), and every request failing for
`openai.failing_timeout_s` (servers unreachable, every request refused). Before the first request each server is
asked for its models: when none answers, the run stops at once. Requests that ran out of retries while every
request was failing are held back rather than returned as failed, also when the run would end before the outage
does (it then stops instead), so a stop leaves them out of the journal and the rerun sends them again. A response
with fewer choices than n is topped up by asking for the missing samples; what still lacks after `max_retries`
top-ups is `Finished.missing`.

The API key is read from the environment variable that `openai.api_key_env` names, handed to the client and
nowhere else: not kept on this object, not logged. A loopback server (vLLM accepts any key) needs none.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import email.utils
import ipaddress
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator
from urllib.parse import urlsplit

from cotdistill.core.fields import setting
from cotdistill.teachers.base import Backend, Completion, Finished, TeacherRequest, TeacherUnavailable
from cotdistill.teachers.reasoning import split_by_delimiters
from cotdistill.verify.answers import after_reasoning

if TYPE_CHECKING:
    from cotdistill.config.sections import ModelConfig

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
NO_KEY = "EMPTY"  # what vLLM's examples send when the server was started without --api-key
MAX_RETRY_AFTER_S = 600.0  # a Retry-After beyond this is taken as this: a run must not stall on one header
ERROR_MESSAGE_CHARS = 1000  # recorded errors are cut here (a 400 body can quote the whole prompt)
SERVER_FAILURES_TO_REST = 3  # failures in a row (connections, 5xx, bad bodies) that take one of several servers out
SERVER_REST_S = 30.0  # how long it stays out before a request tries it again
PROBE_TIMEOUT_S = 10.0  # each try of the check that a server answers, before the first request
_UNSET: Any = object()


@dataclass
class OpenAIConfig:
    """teacher.backend: openai. Any OpenAI-compatible server: `vllm serve`, OpenAI, DeepSeek, a gateway."""

    # one server, or a list of servers of the same model: each request goes to the one with the fewest in flight,
    # and one that keeps failing is left out for a while (interchangeable: not part of any fingerprint)
    base_url: str | list[str] = "http://127.0.0.1:8000/v1"
    api_key_env: str | None = "OPENAI_API_KEY"  # the NAME of the environment variable holding the key, never the key
    model: str | None = None  # the served model name; defaults to the model's `model`
    # chat (/v1/chat/completions, messages) | completions (/v1/completions, prompt text)
    endpoint: str = setting("chat", one_of=("chat", "completions"))
    max_concurrency: int = setting(16, at_least=1)  # requests in flight at once
    requests_per_minute: float | None = setting(None, above=0)  # client-side limits, for APIs that meter them
    tokens_per_minute: float | None = setting(None, above=0)
    timeout_s: float = setting(600.0, above=0)  # per request
    # on 429, 5xx, timeouts and dropped connections, with exponential backoff and jitter
    max_retries: int = setting(6, at_least=0)
    # every request failing for this long (servers unreachable, each request refused) stops the run
    failing_timeout_s: float = setting(300.0, above=0)
    n_per_request: bool = True  # one request with n=N (vLLM and OpenAI support it), else N requests of n=1
    tokenizer: str | None = None  # a Hugging Face tokenizer for counting prompt tokens; defaults to `model`
    price_per_million_input: float | None = None  # for the estimated cost in stats.json and --dry-run
    price_per_million_output: float | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)  # passed as is (e.g. top_k for vLLM servers)

    def servers(self) -> list[str]:
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

    def rules(self, run: Any) -> Iterator[tuple[str, str]]:
        servers = self.servers()
        if not servers or len(set(servers)) != len(servers):
            yield "base_url", f"must name one server, or several different ones; got {servers}"
        for url in servers:
            if not url.startswith(("http://", "https://")):
                yield "base_url", f"must start with http:// or https://, got {url!r}"



def build(model: ModelConfig, seed: int, model_path: str | None = None) -> "OpenAITeacher":
    """The backend entry point (`teachers.build_teacher`)."""
    return OpenAITeacher(model, seed, model_path)


# --- small pure helpers (tested on their own) ---------------------------------------------------------------


def is_loopback(base_url: str) -> bool:
    """Whether the server is on this machine: 127.0.0.0/8, ::1 or localhost."""
    host = (urlsplit(base_url).hostname or "").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(config: OpenAIConfig) -> str:
    """The key from the environment variable `config.api_key_env` names. Without it, a loopback server gets
    "EMPTY" and any other one a ValueError naming the variable to set."""
    name = config.api_key_env
    key = os.environ.get(name) if name else None
    if key:
        return key
    if name is None:  # the config says on purpose that this server takes no key
        return NO_KEY
    if all(is_loopback(url) for url in config.servers()):
        return NO_KEY
    raise ValueError(
        f"teacher.openai: the server {config.base_url} needs an API key: set the environment variable {name} "
        f"(teacher.openai.api_key_env names it)"
    )


def retry_after_seconds(error: BaseException | None) -> float | None:
    """The wait a failed response asks for: `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date;
    None when there is no response or no such header."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        milliseconds = headers.get("retry-after-ms")
        if milliseconds is not None:
            return max(0.0, float(milliseconds) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class BadBody(ValueError):
    """A 200 response whose body is not a completion (cut off, undecodable, not JSON): retried like a dropped
    connection, since a truncated body is typically transient."""


def fatal_cause(error: BaseException) -> str | None:
    """Why `error` means that no request can succeed as configured, or None for an error of one request."""
    import openai

    if isinstance(error, openai.AuthenticationError):
        return "authentication refused (401)"
    if isinstance(error, openai.PermissionDeniedError):
        return "permission refused (403)"
    if isinstance(error, openai.RateLimitError) and "insufficient_quota" in (getattr(error, "code", None),
                                                                             getattr(error, "type", None)):
        return "quota exhausted (429 insufficient_quota: the account needs credit; waiting will not help)"
    return None


def is_server_failure(error: BaseException) -> bool:
    """The server itself failed (unreachable, 5xx, a broken body), not the request nor the account: with several
    servers, another one may answer."""
    import openai

    return is_retryable(error) and not isinstance(error, openai.RateLimitError)


def is_retryable(error: BaseException) -> bool:
    """429 (but an exhausted quota), 5xx, timeouts, dropped connections and bad bodies: worth another attempt.
    Other 4xx will fail the same way."""
    import openai

    if fatal_cause(error) is not None:
        return False
    # APITimeoutError is an APIConnectionError; a body cut off mid-JSON raises JSONDecodeError in the client
    if isinstance(error, (openai.RateLimitError, openai.APIConnectionError, BadBody, json.JSONDecodeError)):
        return True
    return isinstance(error, openai.APIStatusError) and error.status_code >= 500


def describe_error(error: BaseException) -> str:
    """`<type>: <message>`, as Finished.error records it."""
    message = getattr(error, "message", None) or str(error) or repr(error)
    return f"{type(error).__name__}: {message}"[:ERROR_MESSAGE_CHARS]


def split_tokens(total: int, counts: list[int]) -> list[int]:
    """Per-completion token counts that add up to the server's `total`: `counts` (the texts re-tokenized) with
    the difference spread evenly, the remainder on the last one, and never below zero. The difference is
    mostly the end-of-sequence token each stopped completion generated but its text does not show."""
    if not counts:
        return []
    share, rest = divmod(total - sum(counts), len(counts))
    out = [c + share for c in counts]
    out[-1] += rest
    deficit = sum(-c for c in out if c < 0)
    out = [max(c, 0) for c in out]
    while deficit > 0:  # the tokenizer counted more than the server: take it from the largest
        i = max(range(len(out)), key=out.__getitem__)
        take = min(deficit, out[i])
        out[i] -= take
        deficit -= take
    return out


def reasoning_of(message: Any) -> str | None:
    """A reasoning model's reasoning, when the server returns it apart from the answer: `reasoning_content`
    (DeepSeek, older vLLM) or `reasoning` (newer vLLM). Neither is a field of the openai package's types."""
    extra = getattr(message, "model_extra", None) or {}
    for name in ("reasoning_content", "reasoning"):
        value = getattr(message, name, None)
        if value is None:
            value = extra.get(name)
        if isinstance(value, str) and value:
            return value
    return None


# --- what the event loop hands back to the caller's thread ---------------------------------------------------


@dataclass
class _Choice:
    text: str
    reasoning: str | None
    finish_reason: str
    budget_hit: bool | None = None  # client-side budget forcing (completions endpoint): the reasoning was closed


@dataclass
class _Response:
    choices: list[_Choice]
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass
class _Outcome:
    responses: list[_Response] = field(default_factory=list)  # one per HTTP request, in sample order
    errors: list[str] = field(default_factory=list)
    retries: int = 0
    transient: bool = True  # every error was of the retried kinds (it might have passed a minute later)
    fatal: bool = False  # an error no request can get past: the run stops, and this request is sent again then

    def add(self, response: _Response | None, retries: int, error: BaseException | None) -> None:
        """One HTTP request's result (_call's)."""
        self.retries += retries
        if error is None:
            self.responses.append(response)
        else:
            self.errors.append(describe_error(error))
            self.transient = self.transient and is_retryable(error)
            self.fatal = self.fatal or fatal_cause(error) is not None

    def choices(self) -> int:
        return sum(len(r.choices) for r in self.responses)


@dataclass
class _Server:
    """One of the teacher's servers, as the loop thread sees it."""

    url: str
    client: Any
    in_flight: int = 0
    sent: int = 0
    failures: int = 0  # server failures in a row
    out_until: float = 0.0  # time.monotonic() until which no request is sent here (while others are in)

    def failed(self, error: BaseException, alone: bool) -> None:
        if not is_server_failure(error):
            return
        self.failures += 1
        if not alone and self.failures >= SERVER_FAILURES_TO_REST and self.out_until <= time.monotonic():
            self.out_until = time.monotonic() + SERVER_REST_S
            logger.warning("teacher.openai: %s failed %d times in a row (%s): its requests go to the other servers "
                           "for %g s", self.url, self.failures, describe_error(error), SERVER_REST_S)


class _WaitRetryAfter:
    """tenacity wait: the server's Retry-After when the error carries one, else exponential backoff with jitter."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: Any) -> float:
        outcome = retry_state.outcome
        seconds = retry_after_seconds(outcome.exception() if outcome is not None else None)
        if seconds is not None:
            return min(seconds, MAX_RETRY_AFTER_S)
        return self.fallback(retry_state)


class OpenAITeacher:
    """A Teacher (cotdistill.teachers) backed by an OpenAI-compatible HTTP API."""

    def __init__(self, model: ModelConfig, seed: int, model_path: str | None = None, *,
                 backoff_multiplier: float = 1.0, backoff_max: float = 60.0) -> None:
        """backoff_*: tenacity's wait_random_exponential window (seconds) between retries that carry no
        Retry-After: attempt k waits uniformly up to min(backoff_max, backoff_multiplier * 2**(k-1))."""
        config = model.settings
        self._config = config
        self._model = model
        self._model_path = model_path
        # `seed` is the run's seed: a server has its own. Sampling.seed, when set, is sent per request.
        self._seed = seed
        # vLLM serves a model under the path it was started with unless --served-model-name says otherwise.
        self.name: str = config.model or model_path or model.model
        self._backoff_multiplier = backoff_multiplier
        self._backoff_max = backoff_max
        self._tokenizer: Any = _UNSET
        self._max_model_len: Any = _UNSET
        # Health, written by the loop thread and read by the caller's: since when every request has failed
        # (None after a success), the last failure, and the cause that no request can get past.
        self._failing_since: float | None = None
        self._last_failure = ""
        self._fatal: str | None = None
        api_key = resolve_api_key(config)  # fails here, before any thread starts, when a key is missing
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-teacher", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self._submit(self._setup(api_key)).result(timeout=60)
        except BaseException:
            self.close()
            raise
        del api_key  # the client holds it now; nothing on this object does
        try:
            self._check_servers()
        except BaseException:
            self.close()
            raise
        logger.info("openai teacher: %s at %s (%s endpoint, %d in flight, %d retries)", self.name,
                    config.base_url, config.endpoint, config.max_concurrency, config.max_retries)

    # -- Teacher interface ---------------------------------------------------------------------------------------

    def tokenizer(self) -> Any | None:
        """A Hugging Face tokenizer: `openai.tokenizer`, else the model's own if it loads offline, else None.
        Loaded once, in the caller's thread."""
        if self._tokenizer is _UNSET:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def max_model_len(self) -> int | None:
        """`engine.max_model_len` when the config sets it, else what the server reports for this model on
        /v1/models (vLLM does), else `max_position_embeddings` of a local folder's config.json, else None."""
        if self._max_model_len is _UNSET:
            self._max_model_len = self._find_max_model_len()
        return self._max_model_len

    def generate(self, requests: Iterable[TeacherRequest]) -> Iterator[Finished]:
        """Every request's Finished, each as soon as it is complete, in any order; up to `max_concurrency`
        in flight. Requests are pulled and results yielded in the caller's thread only."""
        if self._closed:
            raise RuntimeError("the teacher is closed")
        source = iter(requests)
        pending: dict[concurrent.futures.Future, TeacherRequest] = {}
        # Failed after their retries while every request was failing: returned once a request succeeds (or at
        # the end), dropped when the run stops, so that the rerun sends them again.
        held: list[Finished] = []
        exhausted = False
        limit = self._config.max_concurrency
        try:
            while True:
                while not exhausted and len(pending) < limit:
                    try:
                        request = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    prompt = self._estimate_prompt_tokens(request) if self._config.tokens_per_minute else 0
                    pending[self._submit(self._run(request, prompt))] = request
                if not pending:
                    if held and self._failing_since is not None:  # still failing: never recorded as failed
                        raise TeacherUnavailable(
                            f"teacher.openai at {', '.join(self._config.servers())}: every request was failing when "
                            f"the run ended ({len(held)} questions held back, not recorded; the last failure: "
                            f"{self._last_failure}); rerun when the servers answer to send them again")
                    yield from held
                    return
                # Woken every second at least: a fatal error stops the run while requests sleep between retries.
                done, _ = concurrent.futures.wait(pending, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    request = pending.pop(future)
                    try:
                        outcome = future.result()
                    except Exception as e:  # noqa: BLE001 - a bug in _run must cost one request, not the run
                        logger.exception("request %s failed unexpectedly", request.key)
                        outcome = _Outcome(errors=[describe_error(e)], transient=False)
                    if outcome.fatal:
                        continue  # never recorded as failed: _check_health stops the run below
                    finished = self._finish(request, outcome)
                    if outcome.errors and outcome.transient and self._failing_since is not None:
                        held.append(finished)
                        continue
                    if self._failing_since is None:
                        yield from held
                        held.clear()
                    yield finished
                self._check_health()  # after what came back was handed on: it is journaled, not lost
        finally:  # the consumer stopped early, or the loop was closed: nothing keeps running behind its back
            for future in pending:
                future.cancel()

    def _check_health(self) -> None:
        """Raise TeacherUnavailable when no request can succeed: a fatal error, or every request failing for
        longer than openai.failing_timeout_s."""
        where = f"teacher.openai at {', '.join(self._config.servers())}"
        if self._fatal is not None:
            raise TeacherUnavailable(f"{where}: {self._fatal}")
        since = self._failing_since
        if since is not None and time.monotonic() - since > self._config.failing_timeout_s:
            raise TeacherUnavailable(
                f"{where}: every request has failed for over {self._config.failing_timeout_s:g} s "
                f"(teacher.openai.failing_timeout_s), the last with {self._last_failure}")

    def close(self) -> None:
        """Close the client's connections and stop the event loop thread. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            try:
                self._submit(self._shutdown()).result(timeout=30)
            except Exception as e:  # noqa: BLE001 - closing must not hide the error that led here
                logger.warning("openai teacher: closing the client failed: %s", describe_error(e))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> "OpenAITeacher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenAITeacher(name={self.name!r}, base_url={self._config.base_url!r})"

    # -- the event loop's side -----------------------------------------------------------------------------------

    def _submit(self, coroutine: Any) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def _check_servers(self) -> None:
        """Before the first request, each server is asked for its models (GET /v1/models): a server that does not
        answer at all, however often it is asked, is one no request could reach. None answering stops the run at
        once, naming each URL and its error; one of several not answering is warned about and left out for a while
        (its requests go to the others). Any HTTP answer, even an error status, means the server is there; a
        refused key stops the run here too."""
        import openai

        async def probe_all() -> list[BaseException | None]:
            # gathered inside the loop: gather() called here would bind to this thread's loop (closed or none)
            return await asyncio.gather(*(self._probe(s) for s in self._servers))

        results = self._submit(probe_all()).result(timeout=3 * (PROBE_TIMEOUT_S + 1) + 5)
        down = [(server, error) for server, error in zip(self._servers, results) if error is not None]
        for server, error in down:
            if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
                raise TeacherUnavailable(f"teacher.openai at {server.url}: {fatal_cause(error)}: "
                                         f"{describe_error(error)}")
        if len(down) == len(self._servers):
            raise TeacherUnavailable("teacher.openai: no server answers: " + "; ".join(
                f"{server.url}: {describe_error(error)}" for server, error in down)
                + " (is the server running, and is teacher.openai.base_url right?)")
        for server, error in down:
            server.out_until = time.monotonic() + SERVER_REST_S
            logger.warning("teacher.openai: %s does not answer (%s): its requests go to the other servers for %g s",
                           server.url, describe_error(error), SERVER_REST_S)

    async def _probe(self, server: _Server) -> BaseException | None:
        """None when the server answers GET /models (with any status), else the last connection error of a few
        tries."""
        import openai

        error: BaseException | None = None
        for attempt in range(3):
            try:
                await asyncio.wait_for(server.client.models.list(), timeout=PROBE_TIMEOUT_S)
                return None
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                return e
            except openai.APIStatusError:
                return None  # it answered: a gateway without /models is still a server
            except (openai.APIConnectionError, asyncio.TimeoutError, OSError, ValueError) as e:
                error = e
                await asyncio.sleep(0.5 * (attempt + 1))
        return error

    async def _setup(self, api_key: str) -> None:
        from aiolimiter import AsyncLimiter
        from openai import AsyncOpenAI

        config = self._config
        # max_retries=0: tenacity owns the retries, so each one is counted and Retry-After is honoured once.
        self._servers = [_Server(url, AsyncOpenAI(api_key=api_key, base_url=url, timeout=config.timeout_s,
                                                  max_retries=0)) for url in config.servers()]
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._request_limiter = _minute_limiter(AsyncLimiter, config.requests_per_minute)
        self._token_limiter = _minute_limiter(AsyncLimiter, config.tokens_per_minute)

    async def _shutdown(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in getattr(self, "_servers", []):
            await server.client.close()

    async def _run(self, request: TeacherRequest, prompt_tokens: int) -> _Outcome:
        """All HTTP requests behind one TeacherRequest: one with n=N, or N with n=1 (seeds seed, seed+1, ...).
        prompt_tokens: the estimate tokens_per_minute is charged with (0 when that limit is off)."""
        sampling = request.sampling
        if self._config.endpoint == "completions" and not request.prompt_text:
            return _Outcome(errors=["ValueError: the completions endpoint needs the prompt text, and this request "
                                    "has none (no local tokenizer to render it: use endpoint chat)"], transient=False)

        def charge(n: int) -> int:  # what one HTTP request may cost: its prompt and all it may generate
            return prompt_tokens + sampling.max_tokens * n if prompt_tokens else 0

        if sampling.max_reasoning_tokens is not None:
            return await self._run_with_budget(request, prompt_tokens, charge)
        outcome = _Outcome()
        # All of them, even when one fails: every attempt is then counted, and none is left running.
        for reply in await asyncio.gather(*self._calls(request, sampling.n, sampling.seed, charge)):
            outcome.add(*reply)
        # A server may return fewer choices than n (a gateway's cap, a choice lost): ask for the missing ones.
        for topup in range(1, self._config.max_retries + 1):
            missing = sampling.n - outcome.choices()
            if outcome.errors or missing <= 0:
                break
            logger.info("request %s: %d of %d samples came back; asking for the other %d", request.key,
                        sampling.n - missing, sampling.n, missing)
            seed = None if sampling.seed is None else sampling.seed + sampling.n * topup  # new seeds, new samples
            for reply in await asyncio.gather(*self._calls(request, missing, seed, charge)):
                outcome.add(*reply)
        return outcome

    def _calls(self, request: TeacherRequest, n: int, seed: int | None, charge: Any) -> list[Any]:
        """The HTTP requests for n samples: one with n=n, or n with n=1 and seeds seed, seed+1, ..."""
        if self._config.n_per_request or n == 1:
            return [self._call(request, n, seed, charge(n))]
        # Distinct seeds: N requests with one seed would return the same sample N times.
        return [self._call(request, 1, None if seed is None else seed + i, charge(1)) for i in range(n)]

    async def _run_with_budget(self, request: TeacherRequest, prompt_tokens: int, charge: Any) -> _Outcome:
        """s1's budget forcing over the completions endpoint (checked at load: chat replies cannot be continued).
        The samples are drawn with max_tokens at most the budget (and the opening delimiter); a sample cut off
        there while still reasoning has its reasoning kept to the budget, the closing delimiter appended, and is
        continued, one request of n=1 from the prompt and its text so far, for the tokens it has left; one cut
        off in its answer is continued as it is. Its reasoning therefore never exceeds the budget."""
        sampling, (opening, closing) = request.sampling, self._model.delimiters()
        tokenizer = self.tokenizer()  # the completions endpoint renders prompts locally: there is one
        budget = sampling.max_reasoning_tokens
        first = dataclasses.replace(request, sampling=dataclasses.replace(
            sampling, max_tokens=min(budget + _count(tokenizer, opening), sampling.max_tokens)))
        outcome = await self._run(dataclasses.replace(first, sampling=dataclasses.replace(
            first.sampling, max_reasoning_tokens=None)), prompt_tokens)
        if outcome.errors:
            return outcome
        served_prompt_tokens = outcome.responses[0].prompt_tokens
        choices = [c for r in outcome.responses for c in r.choices]
        waiting: list[tuple[_Choice, Any]] = []  # a sample cut off, and the request that continues it
        for i, choice in enumerate(choices):
            choice.budget_hit = False
            if choice.finish_reason != "length":
                continue
            choice.budget_hit = after_reasoning(choice.text, (opening, closing)) is None
            if choice.budget_hit:  # the opening (when the completion holds it), the budget's tokens, the closing
                head, opened, reasoning = choice.text.rpartition(opening)
                ids = tokenizer(reasoning, add_special_tokens=False)["input_ids"][:budget]
                choice.text = head + opened + tokenizer.decode(ids) + closing
            left = sampling.max_tokens - _count(tokenizer, choice.text)
            seed = None if sampling.seed is None else sampling.seed + i
            more = dataclasses.replace(request, prompt_text=request.prompt_text + choice.text,
                                       sampling=dataclasses.replace(sampling, n=1, max_tokens=left, seed=seed,
                                                                    max_reasoning_tokens=None))
            if left > 0:
                waiting.append((choice, self._call(more, 1, seed, charge(1))))
        results = await asyncio.gather(*(call for _, call in waiting))
        outcome.responses = []
        for (choice, _), reply in zip(waiting, results):
            outcome.add(*reply)
            if reply[2] is None:
                choice.text += reply[0].choices[0].text
                choice.finish_reason = reply[0].choices[0].finish_reason
        # Token counts of joined texts come from the tokenizer (the servers' usage covers one phase each).
        outcome.responses = [_Response(choices=choices, prompt_tokens=served_prompt_tokens, completion_tokens=None)]
        return outcome

    async def _call(self, request: TeacherRequest, n: int, seed: int | None,
                    estimated_tokens: int) -> tuple[_Response | None, int, BaseException | None]:
        """One HTTP request with its retries: (response, retries, None) or (None, retries, error). Every
        attempt's outcome goes into the teacher's health."""
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

        kwargs = self._request_kwargs(request, n, seed)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._config.max_retries + 1),
            wait=_WaitRetryAfter(wait_random_exponential(multiplier=self._backoff_multiplier,
                                                         max=self._backoff_max)),
            retry=retry_if_exception(is_retryable),
            before_sleep=lambda state: logger.debug(
                "request %s: attempt %d failed (%s), retrying in %.2f s", request.key, state.attempt_number,
                describe_error(state.outcome.exception()), state.upcoming_sleep),
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    response = await self._send(kwargs, estimated_tokens)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - recorded on the Finished (or stops the run: _check_health)
            logger.warning("request %s failed after %d attempt(s): %s", request.key, attempts, describe_error(e))
            return None, attempts - 1, e
        return response, attempts - 1, None

    async def _send(self, kwargs: dict[str, Any], estimated_tokens: int) -> _Response:
        """One attempt, on the server with the fewest requests in flight among those not left out; its outcome
        goes into the server's record and the teacher's health."""
        async with self._slots:  # held for the HTTP request only, not for the backoff sleeps between them
            if self._request_limiter is not None:
                await self._request_limiter.acquire()
            if self._token_limiter is not None and estimated_tokens:
                await self._token_limiter.acquire(min(estimated_tokens, self._token_limiter.max_rate))
            server = self._pick_server()
            server.in_flight, server.sent = server.in_flight + 1, server.sent + 1
            try:
                client = server.client.chat if self._config.endpoint == "chat" else server.client
                response = _parse(await client.completions.create(**kwargs), self._config.endpoint)
            except Exception as e:
                server.failed(e, alone=len(self._servers) == 1)
                self._note_failure(e, server.url)
                raise
            finally:
                server.in_flight -= 1
            server.failures, self._failing_since = 0, None
            return response

    def _pick_server(self) -> _Server:
        now = time.monotonic()
        # With every server out, the one back soonest: never wait here (the run's health bounds the outage).
        ready = [s for s in self._servers if s.out_until <= now] or [min(self._servers, key=lambda s: s.out_until)]
        return min(ready, key=lambda s: (s.in_flight, s.sent))

    def _note_failure(self, error: BaseException, url: str) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._last_failure = f"{describe_error(error)} (from {url})"
        cause = fatal_cause(error)
        if cause is not None and self._fatal is None:
            self._fatal = f"{cause} from {url}: {describe_error(error)}"

    def _request_kwargs(self, request: TeacherRequest, n: int, seed: int | None) -> dict[str, Any]:
        sampling = request.sampling
        kwargs: dict[str, Any] = {"model": self.name, "n": n, "temperature": sampling.temperature,
                                  "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
        extra_body = dict(self._config.extra_body)
        if self._config.endpoint == "chat":
            kwargs["messages"] = request.messages
            if self._model.chat_template_kwargs:  # vLLM renders the chat template with these (enable_thinking, ...)
                extra_body.setdefault("chat_template_kwargs", dict(self._model.chat_template_kwargs))
        else:
            kwargs["prompt"] = request.prompt_text
        if sampling.stop:
            kwargs["stop"] = list(sampling.stop)
        if seed is not None:
            kwargs["seed"] = seed
        if sampling.top_k != -1:  # not an OpenAI field; vLLM servers take it in the body
            extra_body["top_k"] = sampling.top_k
        if sampling.ignore_eos:  # nor this one (evaluate's speed measurement)
            extra_body["ignore_eos"] = True
        if extra_body:
            kwargs["extra_body"] = extra_body
        return kwargs

    # -- the caller's side ---------------------------------------------------------------------------------------

    def _finish(self, request: TeacherRequest, outcome: _Outcome) -> Finished:
        """The Finished of one request, token counts included (the tokenizer runs in this thread only)."""
        if outcome.errors:
            error = outcome.errors[0]
            if len(outcome.errors) > 1:
                error += f" [{len(outcome.errors)} of {request.sampling.n} requests failed]"
            return Finished(request.key, [], prompt_tokens=0, error=error, retries=outcome.retries)
        completions: list[Completion] = []
        prompt_tokens: int | None = None
        for response in outcome.responses:
            if prompt_tokens is None and response.prompt_tokens is not None:
                prompt_tokens = response.prompt_tokens  # the same prompt each time: counted once
            counts = self._count_tokens(response)
            for choice, tokens in zip(response.choices, counts):
                completions.append(self._completion(choice, tokens))
        if prompt_tokens is None:  # a server without usage: count locally when we can
            prompt_tokens = len(request.prompt_token_ids) if request.prompt_token_ids else 0
        missing = max(0, request.sampling.n - len(completions))
        if missing:
            logger.warning("request %s: %d of %d samples never came back, after %d top-ups", request.key, missing,
                           request.sampling.n, self._config.max_retries)
        return Finished(request.key, completions, prompt_tokens=prompt_tokens, retries=outcome.retries,
                        missing=missing)

    def _completion(self, choice: _Choice, tokens: int) -> Completion:
        """A choice as a Completion: the completions endpoint's text split by reasoning_delimiters when the model
        has them (a chat server splits it itself), and the reasoning's tokens counted when a tokenizer is here."""
        text, reasoning = choice.text, choice.reasoning
        if self._config.endpoint == "completions" and self._model.reasoning_delimiters:
            reasoning, text = split_by_delimiters(text, self._model.delimiters())
        tokenizer = self.tokenizer()
        reasoning_tokens = _count(tokenizer, reasoning) if reasoning is not None and tokenizer is not None else None
        return Completion(text=text, finish_reason=choice.finish_reason, completion_tokens=tokens, reasoning=reasoning,
                          reasoning_tokens=reasoning_tokens, budget_hit=choice.budget_hit)

    def _count_tokens(self, response: _Response) -> list[int]:
        tokenizer = self.tokenizer()
        counts = None
        if tokenizer is not None:
            counts = [_count(tokenizer, c.text) + _count(tokenizer, c.reasoning or "") for c in response.choices]
        if response.completion_tokens is None:
            return counts or [0] * len(response.choices)
        if counts is None:
            counts = [0] * len(response.choices)  # split_tokens then spreads the total evenly
        return split_tokens(response.completion_tokens, counts)

    def _estimate_prompt_tokens(self, request: TeacherRequest) -> int:
        """The prompt's tokens, for tokens_per_minute: its ids, else counted, else about 4 characters a token."""
        if request.prompt_token_ids is not None:
            return max(len(request.prompt_token_ids), 1)
        tokenizer = self.tokenizer()
        text = request.prompt_text or "\n".join(str(m.get("content", "")) for m in request.messages)
        return max(_count(tokenizer, text) if tokenizer is not None else len(text) // 4, 1)

    def _load_tokenizer(self) -> Any | None:
        from transformers import AutoTokenizer

        if self._config.tokenizer:
            try:
                return AutoTokenizer.from_pretrained(self._config.tokenizer)
            except Exception as e:  # noqa: BLE001 - reported, then the fallbacks
                logger.warning("openai teacher: tokenizer %s did not load: %s", self._config.tokenizer,
                               describe_error(e))
        name = self._model_path or self._model.model
        try:
            # Offline only: a hosted model's name (gpt-4o-mini) is no hub id, and a run must not stall on it.
            return AutoTokenizer.from_pretrained(name, local_files_only=True)
        except Exception as e:  # noqa: BLE001
            logger.info("openai teacher: no local tokenizer for %s (%s); token counts from the server's usage",
                        name, type(e).__name__)
            return None

    def _find_max_model_len(self) -> int | None:
        value = self._model.engine.get("max_model_len")
        if value:
            return int(value)
        try:
            value = self._submit(self._served_max_model_len()).result(timeout=min(self._config.timeout_s, 30) + 5)
        except Exception as e:  # noqa: BLE001 - only a hint; fall back to the local config
            logger.info("openai teacher: /models did not say the context length: %s", describe_error(e))
            value = None
        if value:
            return int(value)
        for folder in (self._config.tokenizer, self._model_path, self._model.model):
            config_file = Path(folder).expanduser() / "config.json" if folder else None
            if config_file is not None and config_file.is_file():
                data = json.loads(config_file.read_text())
                data = data.get("text_config", data) if "max_position_embeddings" not in data else data
                if data.get("max_position_embeddings"):
                    return int(data["max_position_embeddings"])
        return None

    async def _served_max_model_len(self) -> int | None:
        models = await asyncio.wait_for(self._servers[0].client.models.list(),
                                        timeout=min(self._config.timeout_s, 30))
        for entry in models.data:
            if entry.id == self.name:
                extra = getattr(entry, "model_extra", None) or {}
                return extra.get("max_model_len")
        return None


def _minute_limiter(limiter_class: Any, per_minute: float | None) -> Any | None:
    if not per_minute:
        return None
    if per_minute < 1:  # AsyncLimiter refuses to acquire more than max_rate at once
        return limiter_class(1, 60.0 / per_minute)
    return limiter_class(per_minute, 60.0)


def _count(tokenizer: Any, text: str) -> int:
    if not text:
        return 0
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _parse(response: Any, endpoint: str) -> _Response:
    if not isinstance(getattr(response, "choices", None), list):  # the client hands back the text of a non-JSON body
        raise BadBody(f"the server's 200 response is not a completion: {str(response)[:200]!r}")
    choices = []
    for choice in sorted(response.choices, key=lambda c: c.index):
        if endpoint == "chat":
            message = choice.message
            text, reasoning = message.content or "", reasoning_of(message)
        else:
            text, reasoning = choice.text or "", None
        choices.append(_Choice(text=text, reasoning=reasoning, finish_reason=choice.finish_reason or "unknown"))
    usage = getattr(response, "usage", None)
    return _Response(choices=choices,
                     prompt_tokens=getattr(usage, "prompt_tokens", None) if usage else None,
                     completion_tokens=getattr(usage, "completion_tokens", None) if usage else None)


# --- how this backend declares itself (teachers/base.Backend) -------------------------------------------------------


def answer_settings(model: ModelConfig) -> dict[str, Any]:
    """How the server is asked changes the answers; which server answers does not (base_url is left out)."""
    o = model.settings
    return {"served": {"model": o.model, "endpoint": o.endpoint, "n_per_request": o.n_per_request,
                       "extra_body": o.extra_body}}


def price(model: ModelConfig) -> tuple[float, float] | None:
    o = model.settings
    if not (o.price_per_million_input or o.price_per_million_output):
        return None
    return o.price_per_million_input or 0.0, o.price_per_million_output or 0.0


def budget_problem(model: ModelConfig, key: str) -> str | None:
    """Budget forcing continues a sample after closing its reasoning: only the completions endpoint can."""
    if model.settings.endpoint == "chat":
        return (f"cannot continue a chat reply ({key}.openai.endpoint chat returns the reasoning finished or not): "
                f"use endpoint completions with {key}.reasoning_delimiters")
    if not model.reasoning_delimiters:
        return f"needs to know where the thinking ends in the completion text: set {key}.reasoning_delimiters"
    return None


BACKEND = Backend(
    name="openai", build=build, settings=OpenAIConfig, answer_settings=answer_settings,
    tokenizer=lambda model: model.settings.tokenizer or model.model,
    n_per_request=lambda model: model.settings.n_per_request, price=price, budget_problem=budget_problem,
)
