"""Run the cotdistill CLI and SIGKILL this very process at a chosen moment: a crash at a known point, with
nothing cleaned up, for the crash test to rerun from. Test tooling; the library knows nothing of it.

    python tests/kill_at.py POINT N run CONFIG [key=value ...]

POINT:
  generate-shard    while the Nth generate shard is written: its temporary file half on disk, never renamed
  journal-append    right after the Nth finished question is journaled (its shard not yet complete)
  filter-shard      after the Nth file the filter writes in this process (with filter.num_workers=1)
  train-checkpoint  while the Nth checkpoint is saved: its model written, its optimizer.pt half written
  evaluate-model    after the Nth evaluated model's rows are written, before its cost file marks it done
  prune-save        when the pruned model is written in its temporary folder, before it is moved into place
  score-shard       after the Nth file the score step writes
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    point, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    calls = 0

    def due() -> bool:
        nonlocal calls
        calls += 1
        return calls == n

    def die(half_written: Path | None = None) -> None:
        if half_written is not None:
            size = half_written.stat().st_size
            with open(half_written, "r+b") as f:
                f.truncate(size // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    def die_after(owner: object, name: str) -> None:
        """Replace owner.name by a wrapper that calls it and then, on the Nth call, dies."""
        real = getattr(owner, name)

        def wrapped(*args, **kwargs):
            result = real(*args, **kwargs)
            if due():
                die()
            return result

        setattr(owner, name, wrapped)

    if point == "generate-shard":
        import pyarrow.parquet as pq

        import cotdistill.stages.generate.compaction as stage  # where compact() writes the shard

        real = stage.write_parquet_atomic

        def write_parquet_atomic(table, path, **options):
            if due():
                tmp = Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}")
                pq.write_table(table, tmp, **options)
                die(tmp)
            real(table, path, **options)

        stage.write_parquet_atomic = write_parquet_atomic
    elif point == "journal-append":
        from cotdistill.core.shards import Journal

        die_after(Journal, "append")
    elif point == "filter-shard":
        import cotdistill.stages.filter as stage

        die_after(stage, "write_parquet_atomic")
    elif point == "train-checkpoint":
        import torch

        real = torch.save

        def save(obj, f, *args, **kwargs):
            result = real(obj, f, *args, **kwargs)
            if str(f).endswith("optimizer.pt") and due():
                die(Path(f))
            return result

        torch.save = save
    elif point == "evaluate-model":
        import cotdistill.stages.evaluate as stage

        real = stage.write_json_atomic

        def write_json_atomic(data, path):
            if str(path).endswith(".cost.json") and due():
                die()
            real(data, path)

        stage.write_json_atomic = write_json_atomic
    elif point == "prune-save":
        import cotdistill.stages.prune as stage

        def replace_dir_atomic(tmp_dir, final_dir):
            if due():
                die()

        stage.replace_dir_atomic = replace_dir_atomic
    elif point == "score-shard":
        import cotdistill.stages.score as stage

        die_after(stage, "write_parquet_atomic")
    else:
        raise SystemExit(f"unknown kill point {point!r}")

    from cotdistill.cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
