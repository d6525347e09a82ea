"""The engine inside one Ray actor of the `ray` teacher backend: one vLLM engine fed by every chunk the actor holds.

    handle = ray.remote(EngineActor).options(max_concurrency=chunks_per_actor + 4).remote(model, seed, model_path)
    ray.get(handle.generate.remote(chunk_id, requests))       # list[Finished], in the chunk's order

A threaded actor: each chunk arrives on a Ray thread, and all of them feed one queue that a single engine thread
drains into one long-running `VLLMTeacher.generate`, so the chunks share the engine's running batch instead of
taking turns, and the engine does not drain at the end of each chunk while the driver keeps chunks queued.
An exception out of the engine (a CUDA out-of-memory, an engine core that died) is not about one request (the
engine reports a request it refuses as that request's error): the engine is broken, every chunk fails with
`EngineFailed`, and so does every later call, until the driver (ray_pool.py) retires the actor as dead and starts
a replacement. The driver decides where chunks go and what an actor's death means.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from cotdistill.teachers.base import Finished, TeacherRequest

if TYPE_CHECKING:
    from cotdistill.config.sections import ModelConfig

logger = logging.getLogger(__name__)

# The engine core runs inside the actor's own process: its memory is the actor's, and a killed actor takes its
# engine with it.
ACTOR_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


class EngineFailed(RuntimeError):
    """This actor's engine raised: the actor is of no more use, and the driver treats it as dead."""


@dataclass
class _ChunkState:
    keys: list[str]  # the callers' keys, by position in the chunk
    results: list[Finished | None]
    remaining: int
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class EngineActor:
    """One vLLM engine in a Ray actor. `generate(chunk_id, requests)` may be called from several Ray threads at
    once (a threaded actor): every call's requests go into one queue that a single engine thread feeds to one
    long-running `VLLMTeacher.generate`, so chunks share the engine's running batch instead of taking turns.
    All vLLM calls happen in that engine thread."""

    def __init__(self, model: ModelConfig, seed: int, model_path: str | None, max_in_flight: int = 512):
        self._cap = max_in_flight
        self._cond = threading.Condition()
        self._queue: deque[TeacherRequest] = deque()
        self._chunks: dict[int, _ChunkState] = {}
        self._failure: BaseException | None = None
        self._teacher: Any = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(model, seed, model_path, started),
                                        name="vllm-engine", daemon=True)
        self._thread.start()
        started.wait()
        if self._failure is not None:
            raise self._failure

    # engine thread

    def _build_teacher(self, model: ModelConfig, seed: int, model_path: str | None) -> Any:
        from cotdistill.teachers.vllm_local import build

        return build(model, seed, model_path)

    def _run(self, model: ModelConfig, seed: int, model_path: str | None, started: threading.Event) -> None:
        try:
            self._teacher = self._build_teacher(model, seed, model_path)
            self._teacher.max_in_flight = self._cap
        except BaseException as e:  # reported by the constructor: the actor fails to start, with this cause
            self._failure = e
            started.set()
            return
        started.set()
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                self._teacher.max_in_flight = self._cap
            try:
                for done in self._teacher.generate(self._feed()):
                    self._deliver(done)
            except Exception as e:
                logger.exception("the engine failed; failing the %d chunks it held", len(self._chunks))
                with self._cond:
                    self._failure = EngineFailed(f"the engine raised {type(e).__name__}: {e}")
                    self._queue.clear()
                    for state in self._chunks.values():
                        state.error = self._failure
                        state.done.set()
                    self._chunks.clear()
                return  # this engine is not used again: the driver retires the actor
            except BaseException:  # not an error the engine reports: end the process, the pool sees a death
                logger.exception("the engine thread stopped; ending this actor")
                os._exit(1)

    def _feed(self) -> Iterator[TeacherRequest]:
        """The queued requests, to VLLMTeacher.generate. When the queue runs dry, its top-up is paused
        (max_in_flight 0) instead of this iterator ending or blocking: the engine goes on stepping what it holds,
        and the next chunk to arrive lifts the pause. If the iterator is asked anyway with nothing queued, it ends:
        VLLMTeacher then finishes what it holds and the engine thread starts it again for the next chunk."""
        while True:
            with self._cond:
                if not self._queue:
                    return
                request = self._queue.popleft()
                if not self._queue:
                    self._teacher.max_in_flight = 0
            yield request

    def _deliver(self, done: Finished) -> None:
        chunk_id, index = done.key.rsplit("/", 1)
        with self._cond:
            state = self._chunks.get(int(chunk_id))
            if state is None:  # an aborted chunk
                return
            state.results[int(index)] = dataclasses.replace(done, key=state.keys[int(index)])
            state.remaining -= 1
            if state.remaining == 0:
                state.done.set()

    # Ray calls (any thread)

    def ready(self) -> str:
        return f"{os.getpid()}"

    def max_model_len(self) -> int:
        return self._teacher.max_model_len()

    def generate(self, chunk_id: int, requests: list[TeacherRequest]) -> list[Finished]:
        if not requests:
            return []
        state = _ChunkState(keys=[r.key for r in requests], results=[None] * len(requests), remaining=len(requests))
        with self._cond:
            if self._failure is not None:
                raise self._failure
            self._chunks[chunk_id] = state
            # Internal keys name the chunk and the position: a key reused in another chunk cannot mix results up.
            self._queue.extend(dataclasses.replace(r, key=f"{chunk_id}/{i}") for i, r in enumerate(requests))
            self._teacher.max_in_flight = self._cap
            self._cond.notify_all()
        state.done.wait()
        with self._cond:
            self._chunks.pop(chunk_id, None)
        if state.error is not None:
            raise state.error
        if state.remaining:  # aborted
            return []
        return state.results  # type: ignore[return-value]

    def abort(self, chunk_ids: list[int]) -> None:
        """Forget these chunks (their caller stopped early): queued requests are dropped; requests already in the
        engine run to their end and their results are discarded."""
        prefixes = tuple(f"{c}/" for c in chunk_ids)
        with self._cond:
            self._queue = deque(r for r in self._queue if not r.key.startswith(prefixes))
            if not self._queue and self._teacher is not None:
                self._teacher.max_in_flight = 0
            for chunk_id in chunk_ids:
                state = self._chunks.pop(chunk_id, None)
                if state is not None:
                    state.done.set()
