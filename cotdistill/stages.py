"""The stage contract, and the one runner that decides whether a stage's work is skipped, redone or refused.

    train.STAGE.run(config)        # what `cotdistill train CONFIG` calls (train.run is the same)
    for name in cli.pipeline_stages(config): cli.stage(name).run(config, force)   # `cotdistill run CONFIG`

Every stage (generate, filter, prune, score, train, dpo, evaluate) is a module holding one `Stage`: its name (the
command, and its folder runs/<run>/<name>/), its fingerprint (a hash of the settings and inputs its outputs depend
on), whether its outputs are all there, and its work. The runner compares the fingerprint with the one stored in
the folder and decides, in one place for every stage and every command:

  skip    the outputs are complete (the summary file, written last, is there) and made with today's fingerprint;
  redo    anything else: outputs made with other settings are discarded first, except a stage whose outputs carry
          keys of their own (filter's shards, evaluate's models), which then redoes only what no longer matches;
  refuse  generate's outputs, costly to remake, made with other settings: the run stops naming the keys that
          changed, unless forced.

The fingerprint is written before the work starts, so everything the work writes belongs to it: a stage killed
midway is resumed by its rerun (journals, finished shards, checkpoints), never mixed with work of other settings.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cotdistill.config import RunConfig
from cotdistill.fingerprints import FINGERPRINT_FILE, changed_keys, read_fingerprint, same_work, write_fingerprint
from cotdistill.paths import STATS_FILE
from cotdistill.shards import create_json_once, read_json

logger = logging.getLogger("cotdistill")


class SettingsChanged(RuntimeError):
    """A stage's outputs were made with other settings, and remaking them is never implicit (generate)."""


@dataclass(frozen=True)
class Stage:
    name: str  # the command, the module cotdistill.<name> and the folder runs/<run>/<name>/
    help: str
    fingerprint: Callable[[RunConfig], dict[str, Any]]  # fingerprints.make_fingerprint of what the outputs depend on
    outputs_complete: Callable[[RunConfig], bool]  # every output is there, besides the summary written after them
    work: Callable[..., dict[str, Any]]  # work(config, **inputs) writes the outputs, the summary file last
    summary_file: str = STATS_FILE  # what work returns, written last; with a matching fingerprint: done
    # Outputs made with other settings: discard them, keep them (each carries its own key and is redone when it no
    # longer matches), or refuse to go on unless forced.
    # (or, per run, a function of the config giving one of these)
    on_change: str | Callable[[RunConfig], str] = "discard"
    wanted: Callable[[RunConfig], bool] = lambda config: True  # whether `cotdistill run` runs it
    passes_force: bool = False  # the work takes `force` too (generate's teachers: each one's outputs refused or not)

    def folder(self, config: RunConfig) -> Path:
        return config.paths.stage(self.name)

    def is_complete(self, config: RunConfig, record: dict[str, Any] | None = None) -> bool:
        """The summary file and every output written, under today's fingerprint."""
        folder = self.folder(config)
        stored = read_fingerprint(folder)
        if stored is None or not (folder / self.summary_file).is_file():
            return False
        record = record or self.fingerprint(config)
        return same_work(stored, record) and self.outputs_complete(config)

    def run(self, config: RunConfig, force: bool = False, **inputs: Any) -> dict[str, Any]:
        """Skip, redo or refuse (see the module docstring); returns the stage's summary. `force` discards outputs
        a refusing stage would not touch. `inputs` go to the work (generate: an already built teacher)."""
        record = self.fingerprint(config)
        if self.is_complete(config, record):
            logger.info("%s: up to date, skipping", self.name)
            return read_json(self.folder(config) / self.summary_file)
        self.claim(config, record, force)
        logger.info("%s: starting", self.name)
        return self.work(config, **inputs, **({"force": force} if self.passes_force else {}))

    def claim(self, config: RunConfig, record: dict[str, Any], force: bool) -> None:
        """Make the folder hold work of `record` only, then write `record` into it, before any work starts."""
        folder = self.folder(config)
        stored = read_fingerprint(folder)
        if stored is None and not holds_work(folder):
            if create_json_once(record, folder / FINGERPRINT_FILE):
                return
            stored = read_fingerprint(folder)  # another process (a job-array part) claimed the folder first
        if same_work(stored, record):
            return  # same settings: what is there is resumed (under the fingerprint it was started with)
        changed = ", ".join(changed_keys(stored.get("settings", {}), record["settings"]) if stored
                            else ["(made without a fingerprint)"])
        on_change = self.on_change(config) if callable(self.on_change) else self.on_change
        if on_change == "refuse" and not force:
            raise SettingsChanged(
                f"{folder} holds {self.name} outputs made with other settings (changed: {changed}); use a new "
                f"run_name, or add --force to discard them and run {self.name} again")
        if on_change == "keep":
            logger.info("%s: settings or inputs changed (%s): redoing what they change in %s", self.name, changed,
                        folder)
            (folder / self.summary_file).unlink(missing_ok=True)
        else:
            logger.warning("%s: settings or inputs changed (%s): discarding %s and starting again", self.name,
                           changed, folder)
            shutil.rmtree(folder)
        write_fingerprint(folder, record)


def holds_work(folder: Path) -> bool:
    """Anything in the folder besides a fingerprint and the temporary files a killed write leaves (dot names)."""
    return folder.is_dir() and any(p.name != FINGERPRINT_FILE and not p.name.startswith(".")
                                   for p in folder.iterdir())


def finished_summary(config: RunConfig, stage: str) -> dict[str, Any]:
    """An upstream stage's summary (stats.json), refusing a stage that has not finished (no summary, or no
    fingerprint): what a stage reads before it starts."""
    folder = config.paths.stage(stage)
    if read_fingerprint(folder) is None or not (folder / STATS_FILE).is_file():
        if stage == "generate" and config.paths.missing_parts():  # a job array not all done: never wait for it
            raise RuntimeError(config.paths.parts_missing_message())
        raise RuntimeError(f"{folder}: no finished {stage} output; run `cotdistill {stage}` first")
    return read_json(folder / STATS_FILE)
