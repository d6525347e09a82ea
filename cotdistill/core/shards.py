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
import struct
import time
import zlib
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


def write_parquet_atomic(table: pa.Table, path: str | Path, **options: Any) -> None:
    """`options`: pq.write_table's (e.g. records.parquet_options)."""
    _write_atomic(path, lambda tmp: pq.write_table(table, tmp, **options))


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

# A frame of a journal's binary side (Journal.ARRAYS_SUFFIX): magic, body length, CRC-32 of the body; then the body.
FRAME_MAGIC = b"CDA1"
FRAME_HEADER = struct.Struct("<4sQI")


class Journal:
    """An append-only JSON-lines file: one finished record a line. Each line is flushed to the OS as it is
    written, so a killed process loses nothing that was appended; a line torn by a kill mid-write is cut off
    when the journal is read.

    A record may carry binary arrays (generate.logprobs' top-k ids and logprobs: about a megabyte a question, too
    much to go through JSON): `append(record, buffers)` writes them first, as one frame, to the journal's binary
    side (`00003.jsonl` -> `00003.arrays`), and then the record's line, which names the frame
    (`"arrays": [offset, size]`). A frame is FRAME_MAGIC, the body's length (u64), the body's CRC-32 (u32), then
    the body; reading walks the frames from the start and stops at the first one that is short or whose magic or
    checksum is wrong (a kill, or a power loss, in mid-write), and cuts the file there. A line whose frame is not
    whole is torn like a torn line: it and every line after it are cut off. Frames no line names (a kill between
    the frame and its line) are cut too, so the two files always end together and later appends start clean.

    fsync, for a machine that dies, is batched (group commit): at an append when the last one is
    `sync_interval_s` old or more, and at close; the binary side is synced before the lines that name it. A fast
    teacher's records then share fsyncs (the per-record fsync capped a 64-GPU run's rate:
    benchmarks/journal_throughput.py); a slow one's are each fsynced as before. A power loss can lose at most the
    records of the last interval, never tear what was synced: the rerun asks for those questions again, and
    nothing is ever counted twice."""

    ARRAYS_SUFFIX = ".arrays"

    def __init__(self, path: str | Path, sync_interval_s: float = JOURNAL_SYNC_INTERVAL_S):
        self.path = Path(path)
        self.arrays_path = self.path.with_suffix(self.ARRAYS_SUFFIX)
        self.sync_interval_s = sync_interval_s
        self._file: Any = None
        self._arrays: Any = None  # the binary side, open for appending
        self._arrays_end: int | None = None  # its length, every frame up to it whole (None: not read yet)
        self._synced = -math.inf  # time.monotonic() of the last fsync (none yet: the first record syncs)
        self._dirty = self._arrays_dirty = False

    def read(self, repair: bool = True) -> list[dict[str, Any]]:
        """Every whole record; a torn last line (or a line whose frame is torn) is truncated away, with all that
        follows it in both files, so that later appends start clean. `repair=False` only reads (generate
        --dry-run, which may look at the journal of a run still writing it: a frame whose line is not written
        yet is not cut from under it)."""
        if not self.path.is_file():
            if repair and self.arrays_path.is_file() and self._arrays is None:  # frames whose lines never made it
                self.arrays_path.unlink()
                self._arrays_end = 0
            return []
        data = self.path.read_bytes()
        arrays_end = self._whole_frames(repair)
        records, good_end, start, named_end = [], 0, 0, 0
        while start < len(data):
            end = data.find(b"\n", start)
            if end < 0:
                break  # no newline: the last write never finished
            try:
                record = json.loads(data[start:end])
            except json.JSONDecodeError:
                break  # torn or garbled: nothing after it can be trusted either
            ref = record.get("arrays") if isinstance(record, dict) else None
            if ref is not None:
                if ref[0] + ref[1] > arrays_end:
                    break  # its arrays were torn: the record is, too
                named_end = max(named_end, ref[0] + ref[1])
            records.append(record)
            good_end = start = end + 1
        if repair and good_end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        if repair and arrays_end > named_end:
            self._truncate_arrays(named_end)
        return records

    def _whole_frames(self, repair: bool = True) -> int:
        """The length of the binary side's whole frames (checked once per process: frames this object wrote, or
        already checked, are not read again); with `repair`, what follows them is cut off."""
        size = self.arrays_path.stat().st_size if self.arrays_path.is_file() else 0
        end = self._arrays_end or 0
        if end > size:  # cut or removed by someone else since: check it all again
            end = 0
        if end == size:
            return end
        with open(self.arrays_path, "rb") as f:
            f.seek(end)
            while end + FRAME_HEADER.size <= size:
                magic, length, crc = FRAME_HEADER.unpack(f.read(FRAME_HEADER.size))
                body_end = end + FRAME_HEADER.size + length
                if magic != FRAME_MAGIC or body_end > size or zlib.crc32(f.read(length)) != crc:
                    break  # torn or garbled: nothing after it can be trusted either
                end = body_end
        if not repair:
            return end
        if end < size:
            self._truncate_arrays(end)
        self._arrays_end = end
        return end

    def _truncate_arrays(self, end: int) -> None:
        if self._arrays is not None:
            self._arrays.flush()
        with open(self.arrays_path, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
        self._arrays_end = end

    def frame(self, ref: list[int], data: bytes | memoryview | None = None) -> memoryview:
        """The body of the frame a record names (`record["arrays"]`); `data`: the binary side already read whole
        (arrays_bytes), for many frames."""
        if data is None:
            with open(self.arrays_path, "rb") as f:
                f.seek(ref[0])
                data, ref = f.read(ref[1]), [0, ref[1]]
        view = memoryview(data)[ref[0]:ref[0] + ref[1]]
        magic, length, _ = FRAME_HEADER.unpack(view[:FRAME_HEADER.size])
        if magic != FRAME_MAGIC or FRAME_HEADER.size + length != ref[1]:
            raise ValueError(f"{self.arrays_path}: no frame of {ref[1]} bytes at {ref[0]}")
        return view[FRAME_HEADER.size:]

    def arrays_bytes(self) -> bytes:
        """The binary side, whole (b"" when there is none)."""
        if self._arrays is not None:
            self._arrays.flush()
        return self.arrays_path.read_bytes() if self.arrays_path.is_file() else b""

    def append(self, record: dict[str, Any], buffers: Iterable[Any] | None = None) -> dict[str, Any]:
        """Append one record (returned as written); `buffers` (bytes, numpy arrays: anything with the buffer
        protocol), when given, are written as one frame of the binary side, which the record then names."""
        if buffers is not None:
            views = [memoryview(b) for b in buffers]
            record = {**record, "arrays": self._append_frame([v.cast("B") for v in views if v.nbytes])}
        if self._file is None:
            self._file = self._open(self.path)
        self._file.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        self._file.flush()
        self._dirty = True
        if time.monotonic() - self._synced >= self.sync_interval_s:
            self.sync()
        return record

    def _append_frame(self, views: list[memoryview]) -> list[int]:
        if self._arrays is None:
            if self._arrays_end is None:  # appending to a binary side not read yet: its whole frames first
                self._whole_frames()
            self._arrays = self._open(self.arrays_path)
        crc, length = 0, 0
        for view in views:
            crc, length = zlib.crc32(view, crc), length + view.nbytes
        offset = self._arrays_end or 0
        self._arrays.write(FRAME_HEADER.pack(FRAME_MAGIC, length, crc))
        for view in views:
            self._arrays.write(view)
        self._arrays.flush()  # with the OS before the line that names it is written
        self._arrays_dirty = True
        size = FRAME_HEADER.size + length
        self._arrays_end = offset + size
        return [offset, size]

    def _open(self, path: Path) -> Any:
        new = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "ab")
        if new:
            fsync_dir(path.parent)
        return f

    def sync(self) -> None:
        if self._arrays is not None and self._arrays_dirty:  # the frames first: a synced line names whole ones
            os.fsync(self._arrays.fileno())
            self._arrays_dirty = False
        if self._file is not None and self._dirty:
            os.fsync(self._file.fileno())
            self._synced, self._dirty = time.monotonic(), False

    def close(self) -> None:
        self.sync()
        for f in (self._file, self._arrays):
            if f is not None:
                f.close()
        self._file = self._arrays = None

    def remove(self) -> None:
        self._dirty = self._arrays_dirty = False  # deleted next: no fsync owed to records a synced shard holds now
        self.close()
        self.path.unlink(missing_ok=True)
        self.arrays_path.unlink(missing_ok=True)
        self._arrays_end = None
