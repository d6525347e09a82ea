"""Durable atomic writes, shard names and stats files.

    write_parquet_atomic(table, paths.samples / shard_name(3))     # every file a stage writes goes this way

Every file a stage produces is written to a temporary name beside its target, flushed and fsynced, renamed
into place, and its folder fsynced: a killed run (or a lost machine) leaves either the whole file or nothing,
never a name pointing at half-written bytes. A shard's Parquet file is its own completion marker.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq


def shard_name(index: int, suffix: str = ".parquet") -> str:
    return f"{index:05d}{suffix}"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(directory: str | Path) -> None:
    """Make a rename or a new file in `directory` durable (POSIX: the directory entry is data of its own)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_parquet_atomic(table: pa.Table, path: str | Path) -> None:
    _write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def write_text_atomic(text: str, path: str | Path) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(data: Any, path: str | Path) -> None:
    write_text_atomic(json.dumps(data, indent=2, sort_keys=False) + "\n", path)


def create_json_once(data: Any, path: str | Path) -> bool:
    return create_text_once(json.dumps(data, indent=2) + "\n", path)


def create_text_once(text: str, path: str | Path) -> bool:
    """Write `path` whole, unless it exists: True if this call wrote it. Of processes racing to create one file
    (job-array parts), exactly one wins, also on NFS: a hard link to a finished temporary file fails if the name
    is taken, where a rename would overwrite."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        tmp.write_text(text)
        _fsync_file(tmp)
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def replace_dir_atomic(tmp_dir: str | Path, final_dir: str | Path) -> None:
    """Move a finished folder into place: its files are synced first, the old folder goes, the new is renamed in.

    A crash between the two leaves no `final_dir` at all (never a half-written one), which reads as not done.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    for root, _, files in os.walk(tmp_dir):
        for name in files:
            _fsync_file(Path(root) / name)
        fsync_dir(root)
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)


def write_dir_atomic(final_dir: str | Path, write: Callable[[Path], None]) -> None:
    """A folder written whole or not at all: `write` fills a temporary folder beside it, which then replaces it."""
    final_dir = Path(final_dir)
    tmp = final_dir.with_name(f".{final_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    write(tmp)
    replace_dir_atomic(tmp, final_dir)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_json_or_none(path: str | Path) -> Any:
    """The JSON in `path`, or None when the file is absent (a stage not yet run)."""
    path = Path(path)
    return read_json(path) if path.is_file() else None


def list_shards(directory: str | Path) -> list[Path]:
    """Finished shards in a folder, in order (temporary files start with a dot and are not listed)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("[0-9]*.parquet"))


def remove_stale_tmp(directory: str | Path, names: Iterable[str] | None = None) -> None:
    """Temporary files left by a killed run: never complete, safe to delete before a rerun. `names`: only those
    of these files (a job-array part's own shards: the other parts may be writing theirs)."""
    directory = Path(directory)
    if directory.is_dir():
        stale = (directory.glob(".*.tmp-*") if names is None
                 else (t for name in names for t in directory.glob(f".{name}.tmp-*")))
        for tmp in stale:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def column_bytes(path: str | Path, columns: Iterable[str]) -> int:
    """Bytes on disk of these columns of a Parquet file (their compressed column chunks, from its footer)."""
    names = set(columns)
    meta = pq.ParquetFile(path).metadata
    total = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            if column.path_in_schema.split(".")[0] in names:
                total += column.total_compressed_size
    return total


def read_shards(directory: str | Path, schema: pa.Schema | None = None) -> pa.Table:
    """All finished shards of a folder as one table (the folder may also hold a README.md dataset card)."""
    tables = [pq.read_table(p) for p in list_shards(directory)]
    if not tables:
        if schema is None:
            raise FileNotFoundError(f"{directory}: no Parquet shards")
        return schema.empty_table()
    return pa.concat_tables(tables)


JOURNAL_SYNC_INTERVAL_S = 0.05  # a journal's fsyncs at most this often: see Journal


class Journal:
    """An append-only JSON-lines file: one finished record a line. Each line is flushed to the OS as it is
    written, so a killed process loses nothing that was appended; a line torn by a kill mid-write is cut off
    when the journal is read.

    fsync, for a machine that dies, is batched (group commit): at an append when the last one is
    `sync_interval_s` old or more, and at close. A fast teacher's records then share fsyncs (the per-record fsync
    capped a 64-GPU run's rate: benchmarks/journal_throughput.py); a slow one's are each fsynced as before. A
    power loss can lose at most the records of the last interval, never tear what was synced: the rerun asks
    for those questions again, and nothing is ever counted twice."""

    def __init__(self, path: str | Path, sync_interval_s: float = JOURNAL_SYNC_INTERVAL_S):
        self.path = Path(path)
        self.sync_interval_s = sync_interval_s
        self._file: Any = None
        self._synced = -math.inf  # time.monotonic() of the last fsync (none yet: the first record syncs)
        self._dirty = False

    def read(self) -> list[dict[str, Any]]:
        """Every whole record; a torn last line is truncated away so that later appends start clean."""
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        records, good_end, start = [], 0, 0
        while start < len(data):
            end = data.find(b"\n", start)
            if end < 0:
                break  # no newline: the last write never finished
            try:
                records.append(json.loads(data[start:end]))
            except json.JSONDecodeError:
                break  # torn or garbled: nothing after it can be trusted either
            good_end = start = end + 1
        if good_end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        return records

    def append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")
            if new:
                fsync_dir(self.path.parent)
        self._file.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        self._file.flush()
        self._dirty = True
        if time.monotonic() - self._synced >= self.sync_interval_s:
            self.sync()

    def sync(self) -> None:
        if self._file is not None and self._dirty:
            os.fsync(self._file.fileno())
            self._synced, self._dirty = time.monotonic(), False

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None

    def remove(self) -> None:
        self._dirty = False  # deleted next: no fsync owed to records a synced shard holds now
        self.close()
        self.path.unlink(missing_ok=True)
