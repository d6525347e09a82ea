"""The stage contract, and the one runner that decides whether a stage's work is skipped, redone or refused.

    STAGE = Stage(outputs=TRAIN, needs=lambda config: (FILTER,), fingerprint=..., outputs_complete=..., work=...)
    STAGE.run(config)                      # what `cotdistill train CONFIG` calls; `cotdistill run` calls each in turn

A stage (stages/<name>.py, or a folder) holds one `Stage`: its outputs (core/paths.py names each stage's folder
and summary), what it reads (the outputs of earlier stages, as those same objects), its fingerprint (a hash of the
settings and inputs its outputs depend on), whether its outputs are all there, its checks before any engine
starts, its command-line options, what it prints at the end, and its work. The runner compares the fingerprint
with the one stored in the folder and decides, in one place for every stage and every command:

  skip    the outputs are complete (the summary file, written last, is there) and made with today's fingerprint;
  redo    anything else: outputs made with other settings are discarded first, except a stage whose outputs carry
          keys of their own (filter's shards, evaluate's models), which then redoes only what no longer matches;
  refuse  outputs costly to remake (generate's) made with other settings: the run stops naming the keys that
          changed, unless forced.

Every refusal (an input not finished, settings changed) is decided before anything is written. The fingerprint is
written before the work starts, so everything the work writes belongs to it: a stage killed midway is resumed by
its rerun (journals, finished shards, checkpoints), never mixed with work of other settings.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cotdistill.config.run import RunConfig
from cotdistill.core.fingerprints import FINGERPRINT_FILE, changed_keys, read_fingerprint, same_work, write_fingerprint
from cotdistill.core.logs import open_run_log
from cotdistill.core.paths import StageOutputs
from cotdistill.core.shards import create_json_once, read_json, write_text_atomic

logger = logging.getLogger("cotdistill")


class SettingsChanged(RuntimeError):
    """A stage's outputs were made with other settings, and remaking them is never implicit (generate)."""


class InputsMissing(RuntimeError):
    """A stage's inputs (an earlier stage's outputs) are not finished."""


@dataclass(frozen=True)
class Option:
    """A command-line option of a stage's command, and what the stage does with it."""

    flag: str  # "--part"
    help: str
    parse: Callable[[str], Any] | None = None  # how its value is read; None: a switch, True when given
    metavar: str | None = None
    # Run this instead of the stage's work, and print what it returns (generate --dry-run); None: the value is
    # passed to the work as the keyword `dest`.
    instead: Callable[[RunConfig], str] | None = None
    # Given to `cotdistill run`, the run is this stage alone (a job array's part: the rest runs once all are done).
    alone: bool = False
    # The overrides an earlier command of the same job recorded (a job array's first part), which this command
    # inherits (the command line refuses one it sets to another value); None: nothing recorded.
    inherits: Callable[[RunConfig], list[str] | None] | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def nothing(config: RunConfig) -> tuple[StageOutputs, ...]:
    return ()


@dataclass(frozen=True)
class Stage:
    outputs: StageOutputs  # its folder runs/<run>/<name>/ and its summary; `name` is its command
    help: str
    fingerprint: Callable[[RunConfig], dict[str, Any]]  # core/fingerprints.make_fingerprint of what outputs depend on
    outputs_complete: Callable[[RunConfig], bool]  # every output is there, besides the summary written after them
    work: Callable[..., dict[str, Any]]  # work(config, **options) writes the outputs, the summary file last
    needs: Callable[[RunConfig], tuple[StageOutputs, ...]] = nothing  # earlier stages' outputs it reads
    # Outputs made with other settings: discard them, keep them (each carries its own key and is redone when it no
    # longer matches), or refuse to go on unless forced. (Or, per run, a function of the config giving one.)
    on_change: str | Callable[[RunConfig], str] = "discard"
    wanted: Callable[[RunConfig], bool] = lambda config: True  # whether `cotdistill run` runs it
    # What it reads besides the config, read now (a bad data row, an unknown TRL field) so that a mistake fails in
    # seconds, before any stage starts an engine or pays for a token.
    preflight: Callable[[RunConfig], None] = lambda config: None
    options: tuple[Option, ...] = ()  # its command's own options
    show: Callable[[dict[str, Any]], str | None] = lambda summary: None  # printed when the command ends
    example: str = ""  # an override its command's help shows, e.g. "generate.num_samples=4"
    # What must hold, given the command's options, before anything is written (a job array's plan): raises.
    checks: Callable[..., None] = lambda config, **options: None
    passes_force: bool = False  # the work takes `force` too (several teachers: each one's outputs refused or not)

    @property
    def name(self) -> str:
        return self.outputs.name

    def folder(self, config: RunConfig) -> Path:
        return self.outputs.folder(config.paths)

    def is_complete(self, config: RunConfig, record: dict[str, Any] | None = None) -> bool:
        """The summary file and every output written, under today's fingerprint."""
        folder = self.folder(config)
        stored = read_fingerprint(folder)
        if stored is None or not (folder / self.outputs.summary).is_file():
            return False
        record = record or self.fingerprint(config)
        return same_work(stored, record) and self.outputs_complete(config)

    def run(self, config: RunConfig, force: bool = False, **options: Any) -> dict[str, Any]:
        """Skip, redo or refuse (see the module docstring); returns the stage's summary. `force` discards outputs
        a refusing stage would not touch. `options`: the command's options (some replace the work), and
        what the work takes besides the config (generate: an already built teacher)."""
        for option in self.options:
            if option.instead is not None and options.pop(option.dest, None):
                return {"shown": option.instead(config)}
        for upstream in self.needs(config):
            check_finished(config, upstream)
        record = self.fingerprint(config)
        if self.is_complete(config, record):
            logger.info("%s: up to date, skipping", self.name)
            return read_json(self.folder(config) / self.outputs.summary)
        options = {k: v for k, v in options.items() if v is not None}
        self.checks(config, **options)
        refused = self.refusal(config, record, force)
        if refused:
            raise SettingsChanged(refused)
        self.claim(config, record, force)
        record_config(config, self.folder(config))
        logger.info("%s: starting", self.name)
        return self.work(config, **options, **({"force": force} if self.passes_force else {}))

    def refusal(self, config: RunConfig, record: dict[str, Any], force: bool) -> str | None:
        """Why this stage would refuse to run over what its folder holds (settings changed), or None."""
        stored = read_fingerprint(self.folder(config))
        if stored is None or same_work(stored, record) or force:
            return None
        on_change = self.on_change(config) if callable(self.on_change) else self.on_change
        if on_change != "refuse":
            return None
        changed = ", ".join(changed_keys(stored.get("settings", {}), record["settings"]))
        return (f"{self.folder(config)} holds {self.name} outputs made with other settings (changed: {changed}); use "
                f"a new run_name, or add --force to discard them and run {self.name} again")

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
        refused = self.refusal(config, record, force)
        if refused:
            raise SettingsChanged(refused)
        changed = ", ".join(changed_keys(stored.get("settings", {}), record["settings"]) if stored
                            else ["(made without a fingerprint)"])
        on_change = self.on_change(config) if callable(self.on_change) else self.on_change
        if on_change == "keep":
            logger.info("%s: settings or inputs changed (%s): redoing what they change in %s", self.name, changed,
                        folder)
            (folder / self.outputs.summary).unlink(missing_ok=True)
        else:
            logger.warning("%s: settings or inputs changed (%s): discarding %s and starting again", self.name,
                           changed, folder)
            shutil.rmtree(folder)
        write_fingerprint(folder, record)


def record_config(config: RunConfig, folder: Path) -> None:
    """The configuration a stage runs with, written as it starts: in its folder (what produced these outputs; the
    stages of one run may have had other overrides) and as the run's config.yaml (the latest). Written only by a
    stage that runs, so a refused command leaves the run folder as it was."""
    from cotdistill.config.load import dump_config

    open_run_log(config.run_dir)
    text = dump_config(config)
    if config.overrides:
        text = "# overrides: " + " ".join(config.overrides) + "\n" + text
    write_text_atomic(text, folder / "config.yaml")
    write_text_atomic(text, config.run_dir / "config.yaml")


def holds_work(folder: Path) -> bool:
    """Anything in the folder besides a fingerprint and the temporary files a killed write leaves (dot names)."""
    return folder.is_dir() and any(p.name not in (FINGERPRINT_FILE, "config.yaml") and not p.name.startswith(".")
                                   for p in folder.iterdir())


def check_finished(config: RunConfig, upstream: StageOutputs) -> None:
    """Refuse to start on an earlier stage's outputs that are not finished (no summary, or no fingerprint)."""
    folder = upstream.folder(config.paths)
    if read_fingerprint(folder) is None or not (folder / upstream.summary).is_file():
        raise InputsMissing(upstream.unfinished(config.paths)
                            or f"{folder}: no finished {upstream.name} output; run `cotdistill {upstream.name}` first")


def read_summary(config: RunConfig, upstream: StageOutputs) -> dict[str, Any]:
    """An earlier stage's summary (its stats.json), once check_finished has passed (the runner checks `needs`)."""
    check_finished(config, upstream)
    return read_json(upstream.folder(config.paths) / upstream.summary)
