"""teacher.backend: ray. `teacher.ray.replicas` Ray actors (ray_actor.py), each holding one vLLM engine with the
model's `engine` args; this driver keeps every actor fed and re-sends what a dead actor held.

    teacher = build(config.teacher, seed=config.seed)      # starts (or joins, with ray.address) Ray and the actors
    for done in teacher.generate(requests): ...             # each Finished as soon as its chunk is back
    teacher.close()

Why chunks: `generate` pulls requests from the caller's iterator in the caller's thread only, in chunks of
`chunk_size`, and keeps `chunks_per_actor` chunks outstanding on every live actor (the least loaded gets the next),
so an engine always has the next requests queued behind the running ones, and only token ids and finished text
cross Ray's object store.

Deaths (`RayActorError`: killed, out of memory, node lost): each unfinished chunk of the dead actor is handed to
another, and a replacement is started, `max_actor_restarts` in all; a chunk re-sent that many times comes back as
`Finished` with `error` set. Every request comes back exactly once. `chunk_timeout_s` (off by default) kills an
actor whose chunk has run that long, which then counts as a death. An exception raised by an engine itself (a bad
request, say) is not a death: it reaches the caller, as from the single-engine backend.

Resources: with `tensor_parallel_size` x `pipeline_parallel_size` = 1 an actor asks for `ray.num_gpus`; with more,
it takes bundle 0 of a placement group of one GPU bundle per GPU and vLLM starts its workers inside that group (as
vLLM's Ray examples do). That path needs GPUs and is not run by this project's tests, which run `num_gpus: 0`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from cotdistill.config import ModelConfig
from cotdistill.models import resolve_model
from cotdistill.teachers import Finished, TeacherRequest
from cotdistill.teachers.ray_actor import ACTOR_ENV, EngineActor

logger = logging.getLogger(__name__)


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
