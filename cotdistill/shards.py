"""Atomic writes, shard names and stats files.

Every file a stage produces is written to a temporary name beside its target and renamed into place, so a
killed run leaves either the whole file or nothing. A shard's Parquet file is its own completion marker:
if `00003.parquet` exists, shard 3 is finished and a rerun skips it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def shard_name(index: int, suffix: str = ".parquet") -> str:
    return f"{index:05d}{suffix}"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_parquet_atomic(table: pa.Table, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_text_atomic(text: str, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(data: Any, path: str | Path) -> None:
    write_text_atomic(json.dumps(data, indent=2, sort_keys=False) + "\n", path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def list_shards(directory: str | Path) -> list[Path]:
    """Finished shards in a folder, in order (temporary files start with a dot and are not listed)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("[0-9]*.parquet"))


def remove_stale_tmp(directory: str | Path) -> None:
    """Temporary files left by a killed run: never complete, safe to delete before a rerun."""
    directory = Path(directory)
    if directory.is_dir():
        for tmp in directory.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)


def read_shards(directory: str | Path, schema: pa.Schema | None = None) -> pa.Table:
    """All finished shards of a folder as one table (the folder may also hold a README.md dataset card)."""
    tables = [pq.read_table(p) for p in list_shards(directory)]
    if not tables:
        if schema is None:
            raise FileNotFoundError(f"{directory}: no Parquet shards")
        return schema.empty_table()
    return pa.concat_tables(tables)
