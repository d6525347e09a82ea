"""teacher.backend: ray. `teacher.ray.replicas` Ray actors, each holding one vLLM engine (a `VLLMTeacher` of
teachers/vllm_local.py, built inside the actor with the model's `engine` args, the run's seed and `model_path`).

    teacher:
      model: Qwen/Qwen2.5-7B-Instruct
      backend: ray
      engine: {tensor_parallel_size: 1, max_model_len: 4096}
      ray: {replicas: 8, num_gpus: 1, num_cpus: 4}          # address: auto, to join a running cluster

How requests flow. `generate(requests)` pulls requests from the caller's iterator in the caller's thread only,
groups them into chunks of `chunk_size` (default 32) and keeps up to `chunks_per_actor` (default 4) chunks
outstanding on every live actor, handing each new chunk to the least loaded one; it yields a chunk's `Finished`
results as soon as the whole chunk is back (`ray.wait`), in any order. Inside an actor every chunk it holds is fed
into the one engine at once, and chunks that arrive later join the requests already running (one long
`VLLMTeacher.generate` over a queue), so the engine does not drain at the end of each chunk while the driver keeps
chunks queued. Results are the `Finished` objects the single-engine backend yields, keys and all.

Actor deaths. When an actor dies (`RayActorError`: killed, out of memory, node lost) each of its unfinished chunks
is handed to another actor, and a replacement actor is started, `max_actor_restarts` in all per pool. A chunk is
re-sent at most `max_actor_restarts` times; after that its requests come back as `Finished` with `error` set (and
`retries`, like a re-sent chunk's results, counting the re-sends). Every request comes back exactly once. With no
live actor left and none to start, `generate` raises. `chunk_timeout_s` (off by default) kills an actor whose
chunk has run that long (counted from when it was sent, or from when a starting replacement came up), which then
counts as a death: a hung engine does not hang the run.
An exception raised by an engine itself (a bad request, say) is not a death: it reaches the caller, as it would
from the single-engine backend.

Ray. With `ray.address` set ("auto", "ray://head:10001") the pool joins that cluster; there, every node needs the
same Python environment as the driver (cotdistill, vllm), and a hub model id is fetched by each node itself.
Without it, a local Ray is started (`ray.init(num_cpus=..., include_dashboard=False)`), unless this process has
already initialised Ray, which is then used as it is. `close()` kills the actors (and their placement groups) and
shuts Ray down only if this object started it. Each actor runs with `VLLM_ENABLE_V1_MULTIPROCESSING=0` in its
runtime env: the engine core runs inside the actor's own process (its memory is the actor's, and a killed actor
takes its engine with it).

Resources per actor: `ray.num_cpus` and `ray.num_gpus`. With `tensor_parallel_size` x `pipeline_parallel_size` = 1
the actor simply asks for `num_gpus` (1 on a GPU node; a fraction such as 0.5 packs two engines on one GPU, with
`gpu_memory_utilization` set to fit). With a larger world size the actor itself takes no GPU: it is scheduled in
bundle 0 of a placement group of one `{"GPU": 1}` bundle per GPU (bundle 0 also holds the actor's CPUs;
STRICT_PACK, one node, unless pipeline parallelism spans nodes) with `placement_group_capture_child_tasks=True`,
and the engine gets `distributed_executor_backend: ray`, so vLLM starts its tensor-parallel workers inside that
group, as vLLM's Ray examples (examples/offline_inference/rlhf.py) and `initialize_ray_cluster` in
vllm/v1/executor/ray_utils.py expect. That path needs GPUs and has not been run here (this project's machines have
none); only the CPU path, `num_gpus: 0`, is tested.

What to expect on a GPU cluster: about replicas x the throughput of one engine on its GPU (or TP group), as long as
the driver keeps chunks queued on every actor. The engines share nothing, and all that crosses Ray's object store
is the request chunks going out (token ids) and the `Finished` results coming back (text and counts, kilobytes per
question), never weights, activations or KV cache; so the driver, one Python thread doing a little work per
chunk, is far from a bottleneck at GPU speeds (raise `chunk_size` if thousands of questions a second go through).
Run one engine per GPU for a model that fits on one, one per TP group otherwise. Keep every engine's running batch
full: `chunks_per_actor` x `chunk_size` x n sequences per engine should exceed vLLM's `max_num_seqs` (256 by
default, 1024 on H100-class GPUs); the defaults, 4 chunks of 32 questions, do that from n = 2 (from n = 8 for 1024).
They are constructor arguments: RayConfig has no field for them. Scaling is lost in two places: engine start (each
replica loads the model; they start in parallel) and the tail of a run, when the last chunks run on some engines
and the others have nothing left; a run much larger than replicas x chunks_per_actor x chunk_size questions makes
both small. Measured here on CPU (benchmarks/scale_out.py: SmolLM2-135M-Instruct, 48 GSM8K questions x 4 samples
of up to 128 tokens, 3 chunks of 8 questions held per engine): 2 replicas generated 1.83x the tokens/s of 1 (571
against 312). Each engine had its core to itself (0.98 cores busy each, the driver about none); what is missing
from 2x is what two cores share on this machine (memory bandwidth, L3), not the pool.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from cotdistill.config import ModelConfig
from cotdistill.models import resolve_model
from cotdistill.teachers import Finished, TeacherRequest

logger = logging.getLogger(__name__)

ACTOR_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


# --- inside an actor ------------------------------------------------------------------------------------------


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
                # The engine raised (VLLMTeacher aborted what it held): every chunk in it fails with this error,
                # as the single-engine backend's generate call would; later chunks get a fresh start.
                logger.exception("the engine failed; failing the %d chunks it held", len(self._chunks))
                with self._cond:
                    self._queue.clear()
                    for state in self._chunks.values():
                        state.error = e
                        state.done.set()
                    self._chunks.clear()
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


# --- the driver -----------------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    id: int
    requests: list[TeacherRequest]
    resends: int = 0

    def describe(self) -> str:
        keys = [r.key for r in self.requests]
        shown = ", ".join(keys[:3]) + (f", ... {keys[-1]}" if len(keys) > 3 else "")
        return f"chunk {self.id} ({len(keys)} requests: {shown})"


@dataclass
class _Slot:
    label: str
    handle: Any
    placement_group: Any = None
    ready_ref: Any = None  # its ready() call: done once the engine is up
    ready_at: float | None = None  # when this pool saw it up (chunk_timeout_s counts from then at the earliest)
    alive: bool = True
    load: int = 0  # chunks outstanding on it
    timed_out: bool = False


_DEATHS: tuple[type[BaseException], ...] = ()


def _death_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean the actor (its process or its node) is gone, not that the engine raised."""
    global _DEATHS
    if not _DEATHS:
        from ray import exceptions as rx

        _DEATHS = tuple(getattr(rx, name) for name in ("RayActorError", "WorkerCrashedError", "OutOfMemoryError",
                                                       "NodeDiedError", "ObjectLostError") if hasattr(rx, name))
    return _DEATHS


class RayPoolTeacher:
    """`model.ray.replicas` engines as Ray actors behind the Teacher interface (see the module docstring)."""

    actor_class: type = EngineActor  # what each actor runs (tests put a light stand-in here)

    def __init__(self, model: ModelConfig, seed: int, model_path: str | None = None, *, chunk_size: int = 32,
                 chunks_per_actor: int = 4, start_timeout_s: float = 1800.0, chunk_timeout_s: float | None = None,
                 max_in_flight: int = 512):
        import ray

        if chunk_size < 1 or chunks_per_actor < 1:
            raise ValueError(f"chunk_size and chunks_per_actor must be at least 1: {chunk_size}, {chunks_per_actor}")
        self.name = model.model
        self.model, self.seed, self.model_path = model, seed, model_path
        self.config = model.ray
        self.chunk_size, self.chunks_per_actor = chunk_size, chunks_per_actor
        self.start_timeout_s, self.chunk_timeout_s, self.max_in_flight = start_timeout_s, chunk_timeout_s, max_in_flight
        self.restarts_used = 0
        self.resent_chunks = 0  # chunks handed to another actor after a death, over this pool's life
        self._slots: list[_Slot] = []
        self._ids = itertools.count()
        self._chunk_ids = itertools.count()
        self._tokenizer: Any = None
        self._max_model_len: int | None = model.engine.get("max_model_len")
        self._started_ray = False
        self._closed = False

        if not ray.is_initialized():
            if self.config.address:
                ray.init(address=self.config.address)
            else:
                wanted = math.ceil(self.config.replicas * self.config.num_cpus)
                cpus = max(os.cpu_count() or 1, wanted)
                if wanted > (os.cpu_count() or 1):
                    logger.warning("%d replicas x %s CPUs is more than this machine's %d cores: they will share them",
                                   self.config.replicas, self.config.num_cpus, os.cpu_count())
                ray.init(num_cpus=cpus, include_dashboard=False)
            self._started_ray = True
        try:
            self._slots = [self._start_actor() for _ in range(self.config.replicas)]
            self._wait_ready(self._slots)
        except BaseException:
            self.close()
            raise

    # actors

    def _start_actor(self) -> _Slot:
        import ray

        cfg = self.config
        engine = dict(self.model.engine)
        world = int(engine.get("tensor_parallel_size", 1)) * int(engine.get("pipeline_parallel_size", 1))
        options: dict[str, Any] = {
            "num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, "max_restarts": 0, "max_task_retries": 0,
            # one thread per outstanding chunk, plus room for ready/abort/max_model_len calls
            "max_concurrency": self.chunks_per_actor + 4,
            "runtime_env": {"env_vars": dict(ACTOR_ENV)},
        }
        group = None
        if world > 1 and cfg.num_gpus > 0:
            # vLLM's multi-GPU engine inside an actor: the actor holds no GPU, its workers take one bundle each.
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            if cfg.num_gpus != world:
                logger.warning("ray.num_gpus is %s but the engine's world size is %d: reserving %d GPUs per replica",
                               cfg.num_gpus, world, world)
            bundles = [{"GPU": 1.0, "CPU": float(cfg.num_cpus)}] + [{"GPU": 1.0} for _ in range(world - 1)]
            strategy = "STRICT_PACK" if int(engine.get("pipeline_parallel_size", 1)) == 1 else "PACK"
            group = placement_group(bundles, strategy=strategy)
            options["num_gpus"] = 0
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)
            engine.setdefault("distributed_executor_backend", "ray")
        model = dataclasses.replace(self.model, engine=engine)
        label = f"actor-{next(self._ids)}"
        handle = ray.remote(self.actor_class).options(**options).remote(
            model, self.seed, self.model_path, self.max_in_flight)
        logger.info("started %s (%s CPUs, %s GPUs)", label, cfg.num_cpus, cfg.num_gpus)
        return _Slot(label=label, handle=handle, placement_group=group, ready_ref=handle.ready.remote())

    def _wait_ready(self, slots: list[_Slot]) -> None:
        import ray

        refs = [slot.ready_ref for slot in slots]
        ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=self.start_timeout_s)
        if waiting:
            raise TimeoutError(f"{len(waiting)} of {len(refs)} Ray actors not up after {self.start_timeout_s:.0f} s "
                               "(not enough free CPUs/GPUs in the cluster? see `ray status`)")
        try:
            ray.get(ready)
        except _death_errors() as e:
            raise RuntimeError(f"a vLLM engine failed to start in its Ray actor: {e}") from None
        for slot in slots:
            slot.ready_at = time.monotonic()

    def _retire(self, slot: _Slot) -> None:
        import ray

        slot.alive = False
        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:
            pass
        if slot.placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(slot.placement_group)
            except Exception:
                pass
            slot.placement_group = None

    def _replace(self, dead: _Slot) -> None:
        if self.restarts_used >= self.config.max_actor_restarts:
            logger.warning("%s died; no replacement: max_actor_restarts (%d) used up", dead.label,
                           self.config.max_actor_restarts)
            return
        self.restarts_used += 1
        slot = self._start_actor()
        logger.warning("%s died; %s replaces it (replacement %d of at most %d)", dead.label, slot.label,
                       self.restarts_used, self.config.max_actor_restarts)
        self._slots.append(slot)

    @property
    def actors(self) -> list[Any]:
        """The live actors' handles (tests kill one to see the pool cope)."""
        return [slot.handle for slot in self._slots if slot.alive]

    # Teacher interface

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            engine = self.model.engine
            source = engine.get("tokenizer") or self.model_path or resolve_model(self.model.model)
            self._tokenizer = AutoTokenizer.from_pretrained(
                source, revision=engine.get("tokenizer_revision"),
                trust_remote_code=bool(engine.get("trust_remote_code", False)))
        return self._tokenizer

    def max_model_len(self) -> int | None:
        if self._max_model_len is None:
            import ray

            slot = next(slot for slot in self._slots if slot.alive)
            self._max_model_len = int(ray.get(slot.handle.max_model_len.remote(), timeout=self.start_timeout_s))
        return self._max_model_len

    def warm_up(self, request: TeacherRequest) -> None:
        """Run one (small) request on every live actor and wait for them: engines warm before a timed run."""
        import ray

        refs = [slot.handle.generate.remote(next(self._chunk_ids), [request]) for slot in self._slots if slot.alive]
        ray.get(refs, timeout=self.start_timeout_s)

    def generate(self, requests: Iterable[TeacherRequest]) -> Iterator[Finished]:
        import ray

        if self._closed:
            raise RuntimeError("this RayPoolTeacher is closed")
        pending = iter(requests)
        exhausted = False
        retry: deque[_Chunk] = deque()  # chunks whose actor died, to hand out before new ones
        outstanding: dict[Any, tuple[_Slot, _Chunk, float]] = {}  # ObjectRef -> (actor, chunk, sent at)
        try:
            while True:
                # Keep every live actor holding chunks_per_actor chunks: pulled here, in the caller's thread.
                while True:
                    free = [s for s in self._slots if s.alive and s.load < self.chunks_per_actor]
                    if not free or (exhausted and not retry):
                        break
                    chunk = retry.popleft() if retry else None
                    if chunk is None:
                        batch = list(itertools.islice(pending, self.chunk_size))
                        if not batch:
                            exhausted = True
                            break
                        chunk = _Chunk(next(self._chunk_ids), batch)
                    slot = min(free, key=lambda s: s.load)
                    outstanding[slot.handle.generate.remote(chunk.id, chunk.requests)] = (slot, chunk, time.monotonic())
                    slot.load += 1
                if not outstanding:
                    if retry or not exhausted:  # work left and no live actor to run it
                        raise RuntimeError(f"all Ray actors died and max_actor_restarts "
                                           f"({self.config.max_actor_restarts}) are used up; "
                                           f"{sum(len(c.requests) for c in retry)} re-sent requests and the "
                                           "requests not yet pulled are not run")
                    return
                timeout = self._until_deadline(outstanding)
                ready, _ = ray.wait(list(outstanding), num_returns=1, timeout=timeout)
                if not ready:
                    self._kill_overdue(outstanding)
                    continue
                results: list[Finished] = []
                for ref in ready:
                    self._collect(ref, outstanding, retry, results)
                yield from results
        finally:
            if outstanding:  # the caller stopped early, or failed: leave nothing queued in the engines
                by_slot: dict[int, tuple[_Slot, list[int]]] = {}
                for slot, chunk, _ in outstanding.values():
                    by_slot.setdefault(id(slot), (slot, []))[1].append(chunk.id)
                    slot.load -= 1
                for slot, chunk_ids in by_slot.values():
                    if slot.alive:
                        slot.handle.abort.remote(chunk_ids)

    def _collect(self, ref: Any, outstanding: dict, retry: deque, results: list[Finished]) -> None:
        import ray

        slot, chunk, _ = outstanding.pop(ref)
        slot.load -= 1
        try:
            finished = ray.get(ref)
        except _death_errors() as e:
            self._on_death(slot, chunk, e, outstanding, retry, results)
            return
        if chunk.resends:
            finished = [dataclasses.replace(f, retries=f.retries + chunk.resends) for f in finished]
        results.extend(finished)

    def _on_death(self, slot: _Slot, chunk: _Chunk, error: BaseException, outstanding: dict, retry: deque,
                  results: list[Finished]) -> None:
        import ray

        text = str(error).strip()
        reason = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
        if slot.alive:
            logger.warning("%s died (%s)", slot.label, reason)
            self._retire(slot)
            # Its other chunks: those already back are kept, the rest are re-sent with this one.
            for other, (owner, other_chunk, _) in list(outstanding.items()):
                if owner is not slot:
                    continue
                done, _ = ray.wait([other], timeout=0)
                if done:
                    self._collect(other, outstanding, retry, results)  # a failure lands here again, slot now dead
                else:
                    outstanding.pop(other)
                    slot.load -= 1
                    self._requeue(other_chunk, slot, reason, retry, results)
            self._replace(slot)
        self._requeue(chunk, slot, reason, retry, results)

    def _requeue(self, chunk: _Chunk, slot: _Slot, reason: str, retry: deque, results: list[Finished]) -> None:
        limit = self.config.max_actor_restarts
        if chunk.resends >= limit:
            logger.error("%s failed: its actor %s died and it was re-sent %d times already (max_actor_restarts)",
                         chunk.describe(), slot.label, chunk.resends)
            error = f"ray actor died running it ({reason}); re-sent {chunk.resends} times"
            results.extend(Finished(key=r.key, completions=[], prompt_tokens=len(r.prompt_token_ids or []),
                                    error=error, retries=chunk.resends) for r in chunk.requests)
            return
        chunk.resends += 1
        self.resent_chunks += 1
        logger.warning("re-sending %s: its actor %s died (re-send %d of at most %d)", chunk.describe(), slot.label,
                       chunk.resends, limit)
        retry.append(chunk)

    def _clock(self, slot: _Slot, sent: float) -> float | None:
        """When a chunk's time started: when it was sent, or when its actor came up if that was later (a
        replacement loading its model is not hung). None while the actor is still starting."""
        import ray

        if slot.ready_at is None and ray.wait([slot.ready_ref], timeout=0)[0]:
            slot.ready_at = time.monotonic()
        return None if slot.ready_at is None else max(sent, slot.ready_at)

    def _until_deadline(self, outstanding: dict) -> float | None:
        """How long ray.wait may block before a chunk is overdue (None: no limit)."""
        if self.chunk_timeout_s is None:
            return None
        waits = []
        for slot, _, sent in outstanding.values():
            if slot.timed_out:
                continue  # killed already: its failure is on its way
            clock = self._clock(slot, sent)
            # an actor still starting: look again in a second
            waits.append(1.0 if clock is None else clock + self.chunk_timeout_s - time.monotonic())
        return max(0.0, min(waits)) if waits else None

    def _kill_overdue(self, outstanding: dict) -> None:
        import ray

        if self.chunk_timeout_s is None:
            return
        now = time.monotonic()
        for slot, chunk, sent in list(outstanding.values()):
            clock = self._clock(slot, sent)
            if not slot.timed_out and clock is not None and now - clock >= self.chunk_timeout_s:
                slot.timed_out = True
                logger.warning("%s has been running on %s for %.0f s (chunk_timeout_s): killing the actor",
                               chunk.describe(), slot.label, now - clock)
                ray.kill(slot.handle, no_restart=True)  # its chunks then fail, and are re-sent, as for any death

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            import ray
        except ImportError:
            return
        if ray.is_initialized():
            for slot in self._slots:
                if slot.alive:
                    self._retire(slot)
        self._slots = [s for s in self._slots if s.alive]
        if self._started_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> "RayPoolTeacher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def build(model: ModelConfig, seed: int, model_path: str | None = None) -> RayPoolTeacher:
    return RayPoolTeacher(model, seed, model_path)
