"""generate.cache: the teacher's answers kept across runs, so a second run over the same questions (another
run_name, a deleted run folder, one setting changed) pays only for the requests it has not sent before.

    teacher = CachedTeacher(config.teacher, teacher_settings(config.teacher), RequestCache.open(config.generate.cache),
                            build=lambda: build_teacher(config.teacher, config.seed))
    for done in teacher.generate(requests): ...       # hits come back at once; misses go to the real teacher

A request's key is a hash of everything that determines its answer: the teacher's fingerprint settings (weights,
engine, chat template switches, how a server is asked; never which server), the exact prompt (its token ids, or
the messages when there are none), the sampling parameters (seed and n included) and the index of its first
sample. Only seeded requests are kept (a request without a seed may rightly answer differently next time) unless
`unseeded` is on. Failed or short answers are never kept.

On disk: one gzipped JSON file per key under <dir>/v1/<2 hex>/, written to a temporary name and renamed, so
several processes (job-array parts, several runs) may read and write at once, on a shared filesystem too: a reader
sees a whole entry or none. An unreadable entry is a miss. When the entries pass `max_gb`, the least recently used
(by mtime, renewed on every hit) are removed down to 90%. No fsync: a lost entry costs one request again.

The real teacher is built at the first miss, so a run whose every request hits starts no engine. Before that, a
local backend's tokenizer is loaded on its own, and max_model_len comes from the engine arguments or from what an
earlier run of the same teacher recorded in the cache.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import os
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from cotdistill.models.resolve import cache_dir
from cotdistill.teachers.base import Completion, Finished, Teacher, TeacherRequest, load_tokenizer

if TYPE_CHECKING:
    from cotdistill.config.sections import ModelConfig, RequestCacheConfig

logger = logging.getLogger(__name__)

FORMAT = "v1"  # the folder of this entry format: a change of format starts an empty cache beside the old one
EVICT_TO = 0.9  # eviction goes down to this share of max_gb


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def request_key(teacher: dict[str, Any], request: TeacherRequest) -> str:
    """The hash of everything that determines the request's answer (see the module docstring)."""
    prompt = (request.prompt_token_ids if request.prompt_token_ids is not None
              else {"messages": request.messages, "text": request.prompt_text})
    return _digest({"teacher": teacher, "prompt": prompt, "sampling": asdict(request.sampling),
                    "first_sample": request.first_sample})


def _array(value: Any) -> dict[str, Any] | None:
    import numpy as np

    if value is None:
        return None
    value = np.ascontiguousarray(value)
    return {"dtype": str(value.dtype), "shape": list(value.shape), "data": base64.b64encode(value).decode()}


def _from_array(encoded: dict[str, Any] | None) -> Any:
    import numpy as np

    if encoded is None:
        return None
    return np.frombuffer(base64.b64decode(encoded["data"]), dtype=encoded["dtype"]).reshape(encoded["shape"]).copy()


def encode_finished(done: Finished) -> dict[str, Any]:
    completions = []
    for c in done.completions:
        entry = asdict(c)
        entry["topk_ids"], entry["topk_logprobs"] = _array(c.topk_ids), _array(c.topk_logprobs)
        if c.token_ids is not None:  # a list in the entry, as before (a local engine's are a numpy array)
            entry["token_ids"] = [int(t) for t in c.token_ids]
        completions.append(entry)
    return {"prompt_tokens": done.prompt_tokens, "completions": completions}


def decode_finished(key: str, entry: dict[str, Any]) -> Finished:
    completions = []
    for c in entry["completions"]:
        c = dict(c)
        c["topk_ids"], c["topk_logprobs"] = _from_array(c["topk_ids"]), _from_array(c["topk_logprobs"])
        completions.append(Completion(**c))
    return Finished(key=key, completions=completions, prompt_tokens=entry["prompt_tokens"], cached=True)


def _replace(path: Path, data: bytes) -> None:
    """Write under a temporary name, then rename: readers see all of it or none. No fsync (a lost entry is a
    miss), unlike shards.write_*_atomic."""
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class RequestCache:
    """Entries on disk, one file per request key (see the module docstring)."""

    def __init__(self, directory: str | Path, max_bytes: int, unseeded: bool = False):
        self.root = Path(directory) / FORMAT
        self.max_bytes, self.unseeded = max_bytes, unseeded
        self.root.mkdir(parents=True, exist_ok=True)
        self._bytes = self._size()  # this process's estimate: others write too, so eviction measures again
        if self._bytes > self.max_bytes:
            self.evict()

    @classmethod
    def open(cls, config: RequestCacheConfig) -> "RequestCache":
        directory = Path(config.dir).expanduser() if config.dir else cache_dir() / "requests"
        return cls(directory, int(config.max_gb * 1e9), config.unseeded)

    def keeps(self, request: TeacherRequest) -> bool:
        return request.sampling.seed is not None or self.unseeded

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json.gz"

    def get(self, key: str, answer_key: str) -> Finished | None:
        """The entry for `key` as a Finished keyed `answer_key` (the request's key in this run); None on a miss."""
        path = self._path(key)
        try:
            with gzip.open(path, "rt") as f:
                entry = json.load(f)
            done = decode_finished(answer_key, entry)
        except FileNotFoundError:
            return None
        except (OSError, EOFError, ValueError, KeyError, TypeError) as e:  # torn or foreign: a miss, and gone
            logger.warning("request cache: unreadable entry %s (%s): ignored and removed", path, e)
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        return done

    def put(self, key: str, done: Finished) -> None:
        data = gzip.compress(json.dumps(encode_finished(done)).encode(), compresslevel=1)
        _replace(self._path(key), data)
        self._bytes += len(data)
        if self._bytes > self.max_bytes:
            self.evict()

    def _entries(self) -> list[tuple[float, int, Path]]:
        found = []
        for sub in os.scandir(self.root):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for entry in os.scandir(sub.path):
                try:
                    stat = entry.stat()
                except FileNotFoundError:  # removed by another process meanwhile
                    continue
                found.append((stat.st_mtime, stat.st_size, Path(entry.path)))
        return found

    def _size(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def evict(self) -> None:
        """Remove the least recently used entries until the cache holds at most EVICT_TO x max_bytes."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in entries:
            if total <= self.max_bytes * EVICT_TO:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        self._bytes = total
        logger.info("request cache: removed %d least recently used entries; %.2f GB left in %s", removed,
                    total / 1e9, self.root)

    # what a teacher's engine reports, for the runs that start none
    def _teacher_path(self, teacher: dict[str, Any]) -> Path:
        return self.root / "teachers" / f"{_digest(teacher)}.json"

    def teacher_facts(self, teacher: dict[str, Any]) -> dict[str, Any]:
        try:
            return json.loads(self._teacher_path(teacher).read_text())
        except (OSError, ValueError):
            return {}

    def record_teacher_facts(self, teacher: dict[str, Any], facts: dict[str, Any]) -> None:
        _replace(self._teacher_path(teacher), json.dumps(facts).encode())


class CachedTeacher:
    """The Teacher interface in front of `model`'s backend: hits are answered from the cache, misses go to the
    backend (built at the first miss, unless `teacher` is one already built), and their answers are kept."""

    def __init__(self, model: ModelConfig, settings: dict[str, Any], cache: RequestCache,
                 build: Callable[[], Teacher]):
        self.name = model.model
        self.model, self.settings, self.cache = model, settings, cache
        self._build = build
        self._teacher: Teacher | None = None
        self._tokenizer: Any = None
        self.hits = self.misses = 0

    def _backend(self) -> Teacher:
        if self._teacher is None:
            logger.info("request cache: a request missed; starting the teacher")
            self._teacher = self._build()
        return self._teacher

    @property
    def started(self) -> bool:
        return self._teacher is not None

    def tokenizer(self) -> Any | None:
        # A local engine's tokenizer without the engine (as the ray backend's driver loads it): the same prompt
        # token ids, so the same keys, whether or not this run starts an engine.
        from cotdistill.teachers import backend_of

        if backend_of(self.model).local_engine:
            if self._tokenizer is None:
                self._tokenizer = load_tokenizer(self.model)
            return self._tokenizer
        return self._backend().tokenizer()

    def max_model_len(self) -> int | None:
        if self.model.engine.get("max_model_len"):
            return int(self.model.engine["max_model_len"])
        facts = self.cache.teacher_facts(self.settings)
        if "max_model_len" in facts:
            return facts["max_model_len"]
        length = self._backend().max_model_len()
        self.cache.record_teacher_facts(self.settings, {"max_model_len": length})
        return length

    def generate(self, requests: Iterable[TeacherRequest]) -> Iterator[Finished]:
        answered: deque[Finished] = deque()  # hits met while the backend pulls its next miss
        keys: dict[str, str] = {}  # the misses' request key -> cache key

        def lookup(request: TeacherRequest) -> bool:
            """Whether the request hit (its answer queued in `answered`); a miss to keep is remembered."""
            if not self.cache.keeps(request):
                return False
            key = request_key(self.settings, request)
            done = self.cache.get(key, request.key)
            if done is None:
                keys[request.key] = key
                return False
            self.hits += 1
            answered.append(done)
            return True

        def misses(first: TeacherRequest) -> Iterator[TeacherRequest]:
            yield first
            for request in pending:
                if not lookup(request):
                    self.misses += 1
                    yield request

        pending = iter(requests)
        # Hits until the first miss: a run whose every request hits never builds the backend.
        for request in pending:
            if lookup(request):
                yield answered.popleft()
                continue
            self.misses += 1
            for done in self._backend().generate(misses(request)):
                key = keys.pop(done.key, None)
                if key is not None and not done.error and not done.missing:
                    self.cache.put(key, done)
                yield done
                while answered:
                    yield answered.popleft()
            break
        while answered:
            yield answered.popleft()

    def close(self) -> None:
        if self._teacher is not None:
            self._teacher.close()
