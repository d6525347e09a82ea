"""teacher.backend: ray. `teacher.ray.replicas` Ray actors (ray_actor.py), each holding one vLLM engine with the
model's `engine` args; this driver keeps every actor fed and re-sends what a dead actor held.

    teacher = build(config.teacher, seed=config.seed)      # starts (or joins, with ray.address) Ray and the actors
    for done in teacher.generate(requests): ...             # each Finished as soon as its chunk is back
    teacher.close()

Why chunks: `generate` pulls requests from the caller's iterator in the caller's thread only, in chunks of
`chunk_size`, and keeps `chunks_per_actor` chunks outstanding on every live actor (the least loaded gets the next),
so an engine always has the next requests queued behind the running ones, and only token ids and finished text
cross Ray's object store.

Deaths: an actor is dead when Ray says so (killed, out of memory, node lost) or when its engine raised (a CUDA
out-of-memory, an engine that died: `EngineFailed`); a request the engine refuses is that request's error, not a
death. Each unfinished chunk of the dead actor is handed to another, and a replacement is started,
`max_actor_restarts` in all; a chunk re-sent that many times comes back as `Finished` with `error` set. Every
request comes back exactly once.

Every wait is bounded. Chunks go only to actors that are up, so a replacement that cannot be placed (its node
gone, no spare capacity) holds no work; it is given up after `start_timeout_s`. With no actor up and none starting,
or none up for `start_timeout_s`, the run stops with a message. `chunk_timeout_s` kills an actor whose chunk has run
that long, which then counts as a death.

Model paths that exist on the driver are made absolute before they reach an actor (actors do not share the
driver's working directory); named models are resolved on each node. The folders named must be at the same path on
every node (a shared filesystem); the run folder is written by the driver only.

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
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from cotdistill.core.fields import SECRET_WORDS, setting
from cotdistill.teachers.base import Backend, Finished, TeacherRequest, load_tokenizer
from cotdistill.teachers.ray_actor import ACTOR_ENV, EngineActor, EngineFailed

if TYPE_CHECKING:
    from cotdistill.config.sections import ModelConfig

logger = logging.getLogger(__name__)


@dataclass
class RayConfig:
    """teacher.backend: ray. `replicas` actors, each holding one vLLM engine with the model's `engine` args."""

    address: str | None = None  # None: start a local Ray; "auto" or "ray://host:10001" for a running cluster
    replicas: int = setting(2, at_least=1)
    num_gpus: float = setting(0.0, at_least=0)  # per replica: usually engine.tensor_parallel_size (0 on CPU)
    num_cpus: float = setting(1.0, at_least=0)  # per replica
    # a chunk whose actor died is handed to another, this many times at most; as many replacements are started
    max_actor_restarts: int = setting(3, at_least=0)
    chunk_size: int = setting(32, at_least=1)  # requests sent to an actor at once
    chunks_per_actor: int = setting(4, at_least=1)  # chunks in flight on each actor: its engine never runs dry
    # an actor whose chunk runs this long is killed and the chunk re-sent (null: no limit)
    chunk_timeout_s: float | None = setting(3600.0, above=0)
    # an actor (first start or replacement) not up by then is given up; with no actor up for this long, the run stops
    start_timeout_s: float = setting(1800.0, above=0)
    # passed to Ray as is for every actor (working_dir, pip, env_vars, ...), for nodes without the package;
    # its env_vars join those the actors need. Written to the run's config.yaml: never put secrets here.
    runtime_env: dict[str, Any] | None = None

    def rules(self, run: Any) -> Iterator[tuple[str, str]]:
        if self.runtime_env is None:
            return
        env_vars = self.runtime_env.get("env_vars") or {}
        if not isinstance(env_vars, dict) or not all(isinstance(v, str) for v in env_vars.values()):
            yield "runtime_env.env_vars", "must map variable names to strings"
            return
        for name in env_vars:
            if any(word in name.upper() for word in SECRET_WORDS):
                yield f"runtime_env.env_vars.{name}", (
                    "looks like a secret, and runtime_env is written to the run's config.yaml: set it in the "
                    "environment of `ray start` on every node instead")


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
    started_at: float = 0.0  # when it was asked for (start_timeout_s counts from then)
    ready_at: float | None = None  # when this pool saw it up: it takes chunks from then on
    alive: bool = True
    load: int = 0  # chunks outstanding on it
    timed_out: bool = False


_DEATHS: tuple[type[BaseException], ...] = ()


def _death_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean the actor is gone (its process or its node) or its engine is (EngineFailed)."""
    global _DEATHS
    if not _DEATHS:
        from ray import exceptions as rx

        _DEATHS = tuple(getattr(rx, name) for name in ("RayActorError", "WorkerCrashedError", "OutOfMemoryError",
                                                       "NodeDiedError", "ObjectLostError") if hasattr(rx, name))
        _DEATHS += (EngineFailed,)
    return _DEATHS


class RayPoolTeacher:
    """`model.settings.replicas` engines as Ray actors behind the Teacher interface (see the module docstring)."""

    actor_class: type = EngineActor  # what each actor runs (tests put a light stand-in here)

    def __init__(self, model: ModelConfig, seed: int, model_path: str | None = None, max_in_flight: int = 512):
        import ray

        self.name = model.model
        self.model, self.seed, self.model_path = model, seed, model_path
        self.config = cfg = model.settings
        self.chunk_size, self.chunks_per_actor = cfg.chunk_size, cfg.chunks_per_actor
        self.start_timeout_s, self.chunk_timeout_s = cfg.start_timeout_s, cfg.chunk_timeout_s
        self.max_in_flight = max_in_flight
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
            "runtime_env": actor_runtime_env(cfg.runtime_env),
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
        if engine.get("tokenizer"):
            engine["tokenizer"] = absolute_if_local(engine["tokenizer"])
        # Paths as the actors must see them; the pool's own model (and every fingerprint) keeps what the YAML says.
        model = dataclasses.replace(self.model, model=absolute_if_local(self.model.model), engine=engine)
        model_path = absolute_if_local(self.model_path) if self.model_path else None
        label = f"actor-{next(self._ids)}"
        handle = ray.remote(self.actor_class).options(**options).remote(model, self.seed, model_path,
                                                                         self.max_in_flight)
        logger.info("asked Ray for %s (%s CPUs, %s GPUs)", label, cfg.num_cpus, cfg.num_gpus)
        return _Slot(label=label, handle=handle, placement_group=group, ready_ref=handle.ready.remote(),
                     started_at=time.monotonic())

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
        logger.warning("%s died; %s replaces it once Ray can place it and its engine is up (replacement %d of at "
                       "most %d)", dead.label, slot.label, self.restarts_used, self.config.max_actor_restarts)
        self._slots.append(slot)

    def _starting(self) -> list[_Slot]:
        return [s for s in self._slots if s.alive and s.ready_at is None]

    def _up(self) -> list[_Slot]:
        return [s for s in self._slots if s.alive and s.ready_at is not None]

    def _on_started(self, slot: _Slot) -> None:
        """A replacement's ready() came back: it takes chunks from now on, or, if it failed to start, it is one
        more death (with no chunks to re-send)."""
        import ray

        try:
            ray.get(slot.ready_ref)
        except _death_errors() as e:
            logger.warning("%s failed to start: %s", slot.label, str(e).strip().splitlines()[0] if str(e) else e)
            self._retire(slot)
            self._replace(slot)
            return
        slot.ready_at = time.monotonic()
        logger.info("%s is up after %.0f s; it takes chunks now", slot.label, slot.ready_at - slot.started_at)

    def _give_up_slow_starts(self) -> None:
        now = time.monotonic()
        for slot in self._starting():
            if now - slot.started_at >= self.start_timeout_s:
                logger.warning("%s not up after %.0f s (start_timeout_s: no free CPUs/GPUs for it in the cluster? see "
                               "`ray status`): giving it up; %d live actors go on", slot.label, now - slot.started_at,
                               len(self._up()))
                self._retire(slot)

    @property
    def actors(self) -> list[Any]:
        """The live actors' handles (tests kill one to see the pool cope)."""
        return [slot.handle for slot in self._slots if slot.alive]

    # Teacher interface

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model, self.model_path)
        return self._tokenizer

    def max_model_len(self) -> int | None:
        if self._max_model_len is None:
            import ray

            slot = self._up()[0]
            self._max_model_len = int(ray.get(slot.handle.max_model_len.remote(), timeout=self.start_timeout_s))
        return self._max_model_len

    def warm_up(self, request: TeacherRequest) -> None:
        """Run one (small) request on every live actor and wait for them: engines warm before a timed run."""
        import ray

        refs = [slot.handle.generate.remote(next(self._chunk_ids), [request]) for slot in self._up()]
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
                # Keep every actor that is up holding chunks_per_actor chunks: pulled here, in the caller's thread.
                # Actors still starting get none: one that can never be placed must not hold work.
                while True:
                    free = [s for s in self._up() if s.load < self.chunks_per_actor]
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
                starting = self._starting()
                if not outstanding:
                    if not retry and exhausted:
                        return
                    if not starting:  # work left and no actor up or on its way
                        raise RuntimeError(
                            f"no Ray actor is left to run the remaining requests: all died and "
                            f"max_actor_restarts ({self.config.max_actor_restarts}) are used up, or their "
                            f"replacements were not up within start_timeout_s ({self.start_timeout_s:.0f} s); "
                            f"{sum(len(c.requests) for c in retry)} re-sent requests and the requests not yet "
                            "pulled are not run (journaled work is kept: rerun to resume)")
                waiting_on = list(outstanding) + [s.ready_ref for s in starting]
                ready, _ = ray.wait(waiting_on, num_returns=1, timeout=self._until_deadline(outstanding, starting))
                if not ready:
                    self._kill_overdue(outstanding)
                    self._give_up_slow_starts()
                    continue
                results: list[Finished] = []
                for ref in ready:
                    if ref in outstanding:
                        self._collect(ref, outstanding, retry, results)
                    else:
                        self._on_started(next(s for s in starting if s.ready_ref == ref))
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

        cause = getattr(error, "cause", None) or error  # a RayTaskError names the actor's own exception
        text = str(cause).strip()
        reason = f"{type(cause).__name__}: {text.splitlines()[0] if text else ''}"
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

    def _until_deadline(self, outstanding: dict, starting: list[_Slot]) -> float:
        """How long ray.wait may block before a chunk is overdue or a start is given up."""
        now = time.monotonic()
        waits = [slot.started_at + self.start_timeout_s - now for slot in starting]
        if self.chunk_timeout_s is not None:
            waits += [sent + self.chunk_timeout_s - now for slot, _, sent in outstanding.values() if not slot.timed_out]
        # A killed actor's failure, or a death Ray reports, wakes the wait; the minute is a backstop.
        return max(0.0, min(waits + [60.0]))

    def _kill_overdue(self, outstanding: dict) -> None:
        import ray

        if self.chunk_timeout_s is None:
            return
        now = time.monotonic()
        for slot, chunk, sent in list(outstanding.values()):
            if not slot.timed_out and now - sent >= self.chunk_timeout_s:
                slot.timed_out = True
                logger.warning("%s has been running on %s for %.0f s (chunk_timeout_s): killing the actor",
                               chunk.describe(), slot.label, now - sent)
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


def actor_runtime_env(runtime_env: dict[str, Any] | None) -> dict[str, Any]:
    """teacher.ray.runtime_env as is, its env_vars joined to those every actor needs (the user's win)."""
    env = dict(runtime_env or {})
    env["env_vars"] = {**ACTOR_ENV, **(env.get("env_vars") or {})}
    return env


def absolute_if_local(path: str) -> str:
    """A path that exists here, made absolute (an actor's working directory is not the driver's); anything else
    (a hub id, a named model) as it is."""
    return os.path.abspath(path) if os.path.exists(path) else path


def build(model: ModelConfig, seed: int, model_path: str | None = None) -> RayPoolTeacher:
    return RayPoolTeacher(model, seed, model_path)


BACKEND = Backend(name="ray", build=build, settings=RayConfig, local_engine=True, logprobs=True)
