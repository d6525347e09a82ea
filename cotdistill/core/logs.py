"""Where a run's log lines go: cotdistill's own on the console, everything (vLLM's, TRL's, Ray's, at INFO) in the
run's folder, runs/<run>/logs/<command>.log.

    setup_logging(verbose=False)            # the command line, first thing
    open_run_log(config.run_dir, "train")   # stages/base.py, as a stage starts: the lines so far, then the rest

Until a stage starts, the file's lines wait in memory (a bounded buffer): a command that is refused writes
nothing into the run folder, not even a log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
BUFFERED = 20_000  # lines kept before a run's log file opens; the earliest go first


class ConsoleFilter(logging.Filter):
    """The console shows cotdistill's lines, and only the errors of the libraries below it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("cotdistill") or record.levelno >= logging.ERROR


class RunLog(logging.Handler):
    """Every line at INFO or above, held until the run's folder exists to write them into."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        self.pending: list[logging.LogRecord] = []
        self.file: logging.FileHandler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            if self.file.stream is not None and not self.file.stream.closed:  # closed at exit: nothing more to say
                self.file.emit(record)
        else:
            self.pending.append(record)
            del self.pending[:-BUFFERED]

    def open(self, path: Path) -> None:
        if self.file is not None and Path(self.file.baseFilename) == path.resolve():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(path, encoding="utf-8")
        file.setFormatter(self.formatter)
        for record in self.pending:
            file.emit(record)
        self.pending.clear()
        if self.file is not None:
            self.file.close()
        self.file = file

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


_RUN_LOG: RunLog | None = None
_COMMAND = "cotdistill"
_OURS: list[logging.Handler] = []


def setup_logging(verbose: bool = False, command: str = "cotdistill") -> None:
    """The console handler (cotdistill's lines, debug with `verbose`) and the run log, on the root logger. vLLM's
    own console handler is turned off (VLLM_CONFIGURE_LOGGING=0) so that its lines reach the run log instead."""
    global _RUN_LOG, _COMMAND
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    root = logging.getLogger()
    for handler in _OURS:  # a second command in the same process (tests) replaces ours, never another's
        root.removeHandler(handler)
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    console.addFilter(ConsoleFilter())
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    _RUN_LOG, _COMMAND = RunLog(), command
    root.addHandler(console)
    root.addHandler(_RUN_LOG)
    _OURS[:] = [console, _RUN_LOG]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        import datasets

        datasets.disable_progress_bars()  # a bar per split and map: the console shows the stage's own bar
    except ImportError:
        pass


def open_run_log(run_dir: Path) -> Path | None:
    """Start writing the run log into the run's folder (the command's lines so far first); None when the command
    line did not set up logging (a library caller keeps its own)."""
    if _RUN_LOG is None:
        return None
    path = Path(run_dir) / "logs" / f"{_COMMAND}.log"
    _RUN_LOG.open(path)
    return path
