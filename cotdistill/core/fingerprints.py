"""Fingerprints: is a stage's output still the output of today's settings?

    record = make_fingerprint({"generate": upstream(paths.generate), "data": data_fingerprint(path), ...})

A stage's fingerprint is a hash of the settings that change its output plus the fingerprints of what it read
(models, data files, templates, the upstream stage's fingerprint). It is stored beside the outputs as
`fingerprint.json`, with the settings themselves, so that a mismatch can name the keys that changed.
Done = outputs complete and fingerprint equal (stages/base.py decides). Pure and cheap: no model is loaded, big weight
files are sampled rather than read whole.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import xxhash

FINGERPRINT_FILE = "fingerprint.json"
_WHOLE_FILE_LIMIT = 64 << 20  # files up to this size are hashed whole; larger ones (weights) are sampled
_SAMPLE_BLOCKS, _BLOCK = 64, 1 << 16


def digest(obj: Any) -> str:
    """A stable hash of a JSON-able value (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """xxh64 of a file's bytes; files over 64 MB by their size and 64 evenly spaced 64 KB blocks.

    Sampling keeps fingerprinting a 15 GB checkpoint at milliseconds; any retraining or re-quantisation
    changes the sampled bytes, and the size catches the rest that matters here.
    """
    path = Path(path)
    stat = path.stat()
    # `cotdistill run` asks each stage whether it is done and then runs it: both fingerprint the same files.
    # Keyed by the file's identity, a file replaced (atomic writes make a new inode) or edited is read again.
    return _file_digest(str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=65536)
def _file_digest(path: str, inode: int, size: int, mtime_ns: int) -> str:
    h = xxhash.xxh64()
    with open(path, "rb") as f:
        if size <= _WHOLE_FILE_LIMIT:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(str(size).encode())
            for i in range(_SAMPLE_BLOCKS):
                f.seek(i * (size - _BLOCK) // (_SAMPLE_BLOCKS - 1))
                h.update(f.read(_BLOCK))
    return h.hexdigest()


def folder_digest(path: str | Path, pattern: str = "*") -> str:
    """The digest of every file in a folder tree matching `pattern` (hidden files and temporaries left out)."""
    path = Path(path)
    files = sorted(p for p in path.rglob(pattern) if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return digest({str(p.relative_to(path)): file_digest(p) for p in files})


def data_fingerprint(path: str) -> str:
    """Local data files by their contents, a hub dataset by its id."""
    from cotdistill.core.paths import local_files

    files = local_files(path)
    if files is None:
        return f"hub:{path}"
    return digest({f: file_digest(f) for f in files})


# DataConfig's fields counted only when set: those for code problems, and answer kinds (answer_format math)
CODE_DATA_FIELDS = ("tests_format", "tests_field", "entry_point_field", "answer_kind_field")


def data_settings(data: Any) -> dict[str, Any]:
    """A DataConfig's settings and its contents' fingerprint. Its code fields and answer_kind_field count only
    when set, so data without them keeps the fingerprints it had before they existed."""
    settings = {k: v for k, v in vars(data).items() if k not in CODE_DATA_FIELDS or v is not None}
    return {**settings, "contents": data_fingerprint(data.path)}


def template_fingerprint(name: str) -> str:
    from cotdistill.core.prompts import resolve_prompt_path

    return file_digest(resolve_prompt_path(name))


def flatten(settings: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the dotted keys a user writes as overrides."""
    if isinstance(settings, dict) and settings:
        out: dict[str, Any] = {}
        for key, value in settings.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): settings}


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


# Settings that fingerprints once held but that never change a stage's output (dotted keys, matched at the end):
# a stored record that differs from today's by these alone is the same work, so upgrading redoes nothing.
NOT_OUTPUT_SETTINGS = ("served.base_url",)  # servers of one model are interchangeable (once, one was recorded)


def same_work(stored: dict[str, Any] | None, record: dict[str, Any]) -> bool:
    """Whether a stored fingerprint record stands for the same work as `record`."""
    if stored is None:
        return False
    if stored.get("fingerprint") == record["fingerprint"]:
        return True
    settings = stored.get("settings")
    if not isinstance(settings, dict) or digest(settings) != stored.get("fingerprint"):
        return False
    kept = {k: v for k, v in flatten(settings).items()
            if not any(k == s or k.endswith("." + s) for s in NOT_OUTPUT_SETTINGS)}
    return kept == flatten(record["settings"])


def make_fingerprint(settings: dict[str, Any]) -> dict[str, Any]:
    """The record stored beside a stage's outputs."""
    settings = json.loads(json.dumps(settings, default=str))  # what a reread from disk will compare against
    return {"fingerprint": digest(settings), "settings": settings}


def read_fingerprint(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # cannot happen with atomic writes; treat as unknown, never as a match
        return None


def write_fingerprint(directory: str | Path, record: dict[str, Any]) -> None:
    from cotdistill.core.shards import write_json_atomic

    write_json_atomic(record, Path(directory) / FINGERPRINT_FILE)


def upstream(directory: str | Path) -> str | None:
    """The fingerprint value a finished upstream stage stored, or None."""
    stored = read_fingerprint(directory)
    return stored.get("fingerprint") if stored else None
