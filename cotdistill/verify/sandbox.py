"""Model-written programs run here, and only here: each in its own namespaces, with limits, no network, no secrets.

    result = run_python(program, stdin="1 2\\n", limits=Limits(wall_s=5))
    result.status      # ok | runtime_error | exec_timeout | memory_limit | output_limit | process_limit

Mechanism (Linux; sandbox_init.py does the inside): new mount, network and PID namespaces per program. In them
every filesystem is read-only except small tmpfs on /tmp (the program's working directory), /var/tmp and /dev/shm;
/proc shows only the namespace's processes; the network has only a loopback interface that is down. The program
runs as `nobody` with no capabilities, in its own session, with limits on CPU time, address space, file size, open
files and processes (RLIMIT_NPROC, counted per user: every sandbox of this machine shares `nobody`'s count), a
wall-clock timeout, and the environment given here (PATH, LANG, HOME: no API keys, no tokens). When the program
ends, or its time is up, every process of its PID namespace is killed: a double-forked daemon cannot survive.

It needs root, or at least CAP_SYS_ADMIN (as in most containers and CI machines, and as `unshare -mnp` needs);
`isolation_problem()` says why not where it is missing, and `run_python` then refuses unless `allow_unisolated`
(resource limits, a process group and a scrubbed environment only: no network or filesystem isolation, and a
daemon that calls setsid survives).

What it does not protect against: kernel exploits (the namespaces share the host's kernel; a container with a
seccomp filter, or gVisor/Firecracker as remote sandboxes run, narrows that), reading world-readable files of the
host (the filesystem is visible read-only: keep secrets in files other users cannot read), and CPU or memory
bandwidth contention with the host's own work.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

INIT = Path(__file__).with_name("sandbox_init.py")
STATUSES = ("ok", "runtime_error", "exec_timeout", "memory_limit", "output_limit", "process_limit")
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp/work", "PYTHONHASHSEED": "0"}


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # wall-clock time, from the start of the sandbox
    cpu_s: int = 10  # CPU seconds of the program's process
    memory_mb: int = 1024  # address space
    file_mb: int = 16  # the largest file it may write
    disk_mb: int = 64  # each tmpfs
    open_files: int = 64
    processes: int = 64  # of the user nobody, on this machine
    output_bytes: int = 1 << 20  # stdout kept; more is output_limit


@dataclass
class Execution:
    status: str  # one of STATUSES
    stdout: str
    stderr: str
    exit_code: int | None
    signal: int | None
    seconds: float


_PROBLEM: list[str | None] = []


def isolation_problem() -> str | None:
    """Why programs cannot be isolated here (None: they can). Tried once per process."""
    if not _PROBLEM:
        _PROBLEM.append(_probe())
    return _PROBLEM[0]


def _probe() -> str | None:
    if sys.platform != "linux":
        return f"namespaces need Linux, this is {sys.platform}"
    result = _run_isolated("print('ok')", "", Limits(wall_s=20))
    if result.status != "ok" or result.stdout.strip() != "ok":
        return f"could not start an isolated program ({result.stderr.strip()[-300:] or result.status}): it needs " \
               "root or CAP_SYS_ADMIN for mount, network and PID namespaces"
    return None


def run_python(program: str, stdin: str = "", limits: Limits = Limits(), allow_unisolated: bool = False) -> Execution:
    """Run `program` with Python in the sandbox; stdin is fed to it. Never raises for what the program does."""
    problem = isolation_problem()
    if problem is None:
        return _run_isolated(program, stdin, limits)
    if not allow_unisolated:
        raise RuntimeError(f"the code sandbox cannot isolate programs here: {problem}. Run as root (or with "
                           "CAP_SYS_ADMIN), or opt in to limits without isolation (sandbox allow_unisolated)")
    return _run_unisolated(program, stdin, limits)


def _classify(report: dict, stderr: str, output_over: bool) -> str:
    if output_over:
        return "output_limit"
    if report.get("timeout") or report.get("signal") in (signal.SIGXCPU, signal.SIGKILL):
        return "exec_timeout"
    if report.get("exit") == 0:
        return "ok"
    if "MemoryError" in stderr:
        return "memory_limit"
    if "BlockingIOError" in stderr and "Resource temporarily unavailable" in stderr:
        return "process_limit"  # fork refused: RLIMIT_NPROC
    if report.get("signal") == signal.SIGXFSZ:
        return "output_limit"  # a file past file_mb
    return "runtime_error"


def _read_capped(stream, cap: int, out: list[bytes], over: threading.Event, on_over) -> None:
    size = 0
    while True:
        block = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not block:
            return
        if size < cap:
            out.append(block[: cap - size])
        size += len(block)
        if size > cap and not over.is_set():
            over.set()
            on_over()


def _communicate(process: subprocess.Popen, payload: bytes, limits: Limits, wait_s: float,
                 kill) -> tuple[str, str, bool, bool]:
    """Feed stdin, read stdout and stderr (capped) until the process ends or `wait_s` has passed (then kill)."""
    stdout: list[bytes] = []
    stderr: list[bytes] = []
    over, err_over = threading.Event(), threading.Event()
    readers = [threading.Thread(target=_read_capped, args=(process.stdout, limits.output_bytes, stdout, over, kill),
                                daemon=True),
               threading.Thread(target=_read_capped, args=(process.stderr, 64 << 10, stderr, err_over, lambda: None),
                                daemon=True)]
    for reader in readers:
        reader.start()
    try:
        process.stdin.write(payload)
        process.stdin.close()
    except BrokenPipeError:
        pass
    timed_out = False
    try:
        process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill()
        process.wait()
    for reader in readers:
        reader.join(timeout=5)
    return (b"".join(stdout).decode("utf-8", "replace"), b"".join(stderr).decode("utf-8", "replace"),
            over.is_set(), timed_out)


def _run_isolated(program: str, stdin: str, limits: Limits) -> Execution:
    python = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    spec = {"program": program, "stdin": stdin, "limits": asdict(limits), "env": ENV, "python": python,
            "python_prefix": prefix}
    read_report, write_report = os.pipe()
    spec["report_fd"] = write_report  # kept open in the init under the same number
    started = time.monotonic()
    try:
        process = subprocess.Popen([python, "-I", "-S", str(INIT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, pass_fds=(write_report,), env=ENV, cwd="/",
                                   start_new_session=True)
    finally:
        os.close(write_report)

    def kill() -> None:  # the init's death takes its namespace's PID 1, and so every process, with it
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    try:
        # the init's own deadline (wall_s) comes first; the host's is a backstop
        stdout, stderr, over, host_timeout = _communicate(process, json.dumps(spec).encode(), limits,
                                                          limits.wall_s + 10, kill)
        with os.fdopen(read_report, "rb") as f:
            raw = f.read()
    except BaseException:
        kill()
        raise
    try:
        report = json.loads(raw) if raw else {}
    except ValueError:
        report = {}
    if host_timeout:
        report["timeout"] = True
    if report.get("setup_error"):
        return Execution("runtime_error", stdout, f"sandbox setup failed: {report['setup_error']}\n{stderr}",
                         None, None, time.monotonic() - started)
    if not report and not over:
        return Execution("runtime_error", stdout, f"the sandbox ended without a report\n{stderr}", None, None,
                         time.monotonic() - started)
    return Execution(_classify(report, stderr, over), stdout, stderr, report.get("exit"), report.get("signal"),
                     report.get("seconds", time.monotonic() - started))


def _run_unisolated(program: str, stdin: str, limits: Limits) -> Execution:
    """Limits, a process group and a scrubbed environment only (the explicit opt-in where namespaces fail)."""
    import resource
    import tempfile

    def set_limits() -> None:
        for limit, value in ((resource.RLIMIT_CPU, limits.cpu_s), (resource.RLIMIT_AS, limits.memory_mb << 20),
                             (resource.RLIMIT_FSIZE, limits.file_mb << 20),
                             (resource.RLIMIT_NOFILE, limits.open_files), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(limit, (value, value))

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cotdistill-sandbox-") as work:
        Path(work, "program.py").write_text(program)
        process = subprocess.Popen([os.path.realpath(sys.executable), "-I", "-B", "program.py"], cwd=work,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env={**ENV, "HOME": work}, start_new_session=True, preexec_fn=set_limits)

        def kill() -> None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        stdout, stderr, over, timed_out = _communicate(process, stdin.encode(), limits, limits.wall_s, kill)
        kill()
    code = process.returncode
    report = {"exit": code if code >= 0 else None, "signal": -code if code < 0 else None, "timeout": timed_out}
    return Execution(_classify(report, stderr, over), stdout, stderr, report["exit"], report["signal"],
                     time.monotonic() - started)


class PistonExecutor:
    """A remote sandbox service speaking Piston's API (POST {base_url}/api/v2/execute) instead of this machine's
    sandbox: for scale, or where namespaces are not allowed. Each call is bounded by the program's wall time plus
    `slack_s`; a service that cannot be reached raises (a run cannot verify code without it)."""

    def __init__(self, base_url: str, language: str = "python", version: str = "*", slack_s: float = 30.0):
        self.url = base_url.rstrip("/") + "/api/v2/execute"
        self.language, self.version, self.slack_s = language, version, slack_s

    def run(self, program: str, stdin: str, limits: Limits) -> Execution:
        import urllib.error
        import urllib.request

        body = {"language": self.language, "version": self.version,
                "files": [{"name": "program.py", "content": program}], "stdin": stdin,
                "run_timeout": int(limits.wall_s * 1000), "run_cpu_time": limits.cpu_s * 1000,
                "run_memory_limit": limits.memory_mb << 20}
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=limits.wall_s + self.slack_s) as response:
                run = json.loads(response.read())["run"]
        except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
            raise RuntimeError(f"the code executor at {self.url} failed: {e}") from None
        stdout, stderr = run.get("stdout") or "", run.get("stderr") or ""
        status = run.get("status")
        over = status in ("OL", "EL") or len(stdout.encode()) > limits.output_bytes
        signum = getattr(signal, run["signal"], None) if isinstance(run.get("signal"), str) else run.get("signal")
        report = {"exit": run.get("code"), "signal": signum, "timeout": status == "TO"}
        return Execution(_classify(report, stderr, over), stdout[: limits.output_bytes], stderr, run.get("code"),
                         signum, time.monotonic() - started)
