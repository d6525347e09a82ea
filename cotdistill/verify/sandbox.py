"""Model-written programs run here, and only here: each in a sandbox of its own, with limits, no network, no secrets,
and nothing shared with the host or with other sandboxes.

    result = run_python(program, stdin="1 2\\n", limits=Limits(wall_s=5))              # a program on its own
    result = run_python(program, limits=limits, harness=tests, runner=serve)          # functional tests
    result.status      # ok | runtime_error | exec_timeout | memory_limit | output_limit | process_limit

Mechanism (Linux; sandbox_init.py does the inside):
  - new mount, network, PID, IPC and UTS namespaces per sandbox: SysV shared memory, message queues and
    semaphores die with it, and no socket of the host (TCP or Unix) can be reached;
  - a minimal root, pivoted into: the interpreter and its standard library read-only, /dev with null, zero,
    random and urandom, a fresh /proc, a small tmpfs /tmp; the host's files, sockets, data and reference
    solutions are not there to read. Any mount that fails is a setup error, never a sandbox left open;
  - the program runs as a uid of its own (random, used by nothing else on the machine), so no process limit or
    keyring is shared with the host or another sandbox; without capabilities, under rlimits (CPU, address space,
    file size, open files, processes) and a seccomp filter (seccomp_filter below: namespaces, mounts, ptrace,
    io_uring, perf, keyrings, bpf, module loading are refused);
  - a memory and a process cap for the whole sandbox, every process of it together (cgroup v2 where the memory
    controller is there, else cgroup v1's memory and pids controllers); where neither can be written, the
    per-process rlimits alone remain, and `sandbox_caps()` says so;
  - functional tests run in a second process of the same sandbox, as another uid, which the program can neither
    signal, trace nor read: it calls the program's function through two pipes, the arguments and results crossing
    as plain data (JSON, 16 MB at most), and sends its verdict on a pipe of its own, never the program's stdout;
  - a wall-clock timeout, stdout and stderr each capped (the run is stopped as soon as one passes its cap), the
    environment given here (PATH, LANG, HOME: no API keys, no tokens), and every process killed at the end.

It needs root, or at least CAP_SYS_ADMIN; `isolation_problem()` says why not where it is missing, and `run_python`
then refuses unless `allow_unisolated` (resource limits, a process group and a scrubbed environment only).

What it does not protect against: kernel exploits (the sandbox shares the host's kernel; the seccomp filter
narrows the surface, gVisor or Firecracker would narrow it more); the interpreter's and standard library's files
being readable (nothing secret lives there); CPU, memory bandwidth and disk I/O contention with the host's own
work; and, with `sandbox.executor: piston`, whatever the remote service does not isolate (there the tests run in
the program's own process, as the service runs one process a call).
"""

from __future__ import annotations

import functools
import json
import logging
import marshal
import os
import secrets
import select
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
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp/work", "TMPDIR": "/tmp/work",
       "PYTHONHASHSEED": "0"}
STDERR_BYTES = 64 << 10  # stderr kept; more stops the run (output_limit)
# System calls a test program never needs, refused with EPERM: new namespaces and mounts (an escape's first step),
# tracing other processes, io_uring and perf (large kernel surfaces), keyrings, bpf, kernel modules, and the rest.
DENIED_SYSCALLS = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "perf_event_open", "keyctl", "add_key", "request_key",
    "bpf", "userfaultfd", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "open_by_handle_at", "name_to_handle_at", "lookup_dcookie",
    "fanotify_init", "syslog", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm",
)
# clone() flags that make a namespace: refused too (fork and threads go on working); clone3 answers ENOSYS, so the
# C library falls back to clone, whose flags the filter can see.
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # wall-clock time, from the start of the sandbox
    cpu_s: int = 10  # CPU seconds of each process
    memory_mb: int = 1024  # the whole sandbox's memory (cgroup), and each process's address space
    file_mb: int = 16  # the largest file it may write
    disk_mb: int = 64  # its /tmp
    open_files: int = 64
    processes: int = 64  # the whole sandbox's (cgroup), and its user's (RLIMIT_NPROC: a uid of its own)
    output_bytes: int = 1 << 20  # stdout kept; more is output_limit


@dataclass
class Execution:
    status: str  # one of STATUSES
    stdout: str
    stderr: str
    exit_code: int | None
    signal: int | None
    seconds: float
    harness: dict | list | None = None  # functional tests: the harness's verdict, as it sent it


_PROBLEM: list[str | None] = []


def isolation_problem() -> str | None:
    """Why programs cannot be isolated here (None: they can). Tried once per process."""
    if not _PROBLEM:
        _PROBLEM.append(_probe())
    return _PROBLEM[0]


def _probe() -> str | None:
    if sys.platform != "linux":
        return f"namespaces need Linux, this is {sys.platform}"
    result = _run_isolated("print('ok')", "", Limits(wall_s=20), None, None, "")
    if result.status != "ok" or result.stdout.strip() != "ok":
        return f"could not start an isolated program ({result.stderr.strip()[-300:] or result.status}): it needs " \
               "root or CAP_SYS_ADMIN for mount, network, PID and IPC namespaces"
    caps = sandbox_caps()
    (logger.info if caps.startswith("cgroup") else logger.warning)(
        "code sandbox: namespaces, a minimal root, a uid of its own, %s; the whole sandbox's memory and processes: "
        "%s", "a seccomp filter" if seccomp_filter() else "NO seccomp filter", caps)
    return None


def run_python(program: str, stdin: str = "", limits: Limits = Limits(), allow_unisolated: bool = False,
               harness: str | None = None, runner: str | None = None, entry: str = "") -> Execution:
    """Run `program` with Python in the sandbox; stdin is fed to it. With `harness` (functional tests), `runner`
    serves `entry`'s calls from the program's process and the harness runs the tests in its own, as another user;
    the Execution's `harness` holds its verdict. Never raises for what the program does."""
    problem = isolation_problem()
    if problem is None:
        return _run_isolated(program, stdin, limits, harness, runner, entry)
    if not allow_unisolated:
        raise RuntimeError(f"the code sandbox cannot isolate programs here: {problem}. Run as root (or with "
                           "CAP_SYS_ADMIN), or opt in to limits without isolation (sandbox allow_unisolated)")
    if harness is not None:
        raise RuntimeError("functional tests need the isolated sandbox (their harness runs as a user of its own); "
                           "without isolation, use sandbox.executor: piston")
    return _run_unisolated(program, stdin, limits)


# --- what the sandbox is made of, set up once per process ------------------------------------------------------


@functools.lru_cache(maxsize=1)
def seccomp_filter() -> bytes:
    """The seccomp program (raw BPF) every sandboxed process runs under, compiled once here by libseccomp through
    pyseccomp (a maintained ctypes binding on PyPI), and installed by sandbox_init.py with one prctl: the sandbox
    itself needs neither. Empty when libseccomp is missing (said once, at WARNING)."""
    import errno
    import tempfile

    try:
        import pyseccomp as seccomp

        rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for name in DENIED_SYSCALLS:
            try:
                rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
            except (RuntimeError, ValueError, OSError):
                pass  # not a system call of this architecture
        for flag in NAMESPACE_FLAGS:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        with tempfile.TemporaryFile() as f:
            rules.export_bpf(f)
            f.seek(0)
            return f.read()
    except (ImportError, OSError, RuntimeError) as e:  # no libseccomp here
        logger.warning("sandbox: no seccomp filter (%s: %s): every system call stays reachable", type(e).__name__, e)
        return b""


def cgroup_roots() -> dict[str, Path]:
    """Where this process may make the sandbox's cgroups: {"v2": dir} with the memory and pids controllers of the
    unified hierarchy, else {"memory": dir, "pids": dir} of cgroup v1; empty where neither is writable."""
    roots: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return roots
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            enabled = (Path("/sys/fs/cgroup") / "cgroup.controllers")
            if enabled.is_file() and {"memory", "pids"} <= set(enabled.read_text().split()) \
                    and os.access(base, os.W_OK):
                return {"v2": base}
        for controller in ("memory", "pids"):
            if controller in controllers.split(","):
                base = Path("/sys/fs/cgroup") / controller / path.lstrip("/")
                if os.access(base, os.W_OK):
                    roots[controller] = base
    return roots if {"memory", "pids"} <= set(roots) else {}


@functools.lru_cache(maxsize=1)
def sandbox_caps() -> str:
    """How the whole sandbox's memory and processes are capped here: "cgroup v2", "cgroup v1", or a sentence saying
    that only each process's rlimits bound them (a forked child can then use its own memory_mb)."""
    roots = cgroup_roots()
    if "v2" in roots:
        return "cgroup v2"
    if roots:
        return "cgroup v1"
    return "rlimits only: no writable cgroup here, so memory_mb and processes bound each process, not the sandbox"


class SandboxCgroup:
    """The cgroups of one sandbox: made before it starts (memory.max / memory.limit_in_bytes, pids.max), its init
    put in them (`add`) before it is sent anything to run, read for out-of-memory kills, removed when it is over."""

    def __init__(self, limits: Limits):
        self.folders: list[Path] = []
        self.procs: list[str] = []
        self.memory_events: Path | None = None
        roots = cgroup_roots()
        name = f"cotdistill-sandbox-{os.getpid()}-{secrets.token_hex(4)}"
        memory = (limits.memory_mb + 64) << 20  # the program's memory_mb, and the harness and the init beside it
        try:
            if "v2" in roots:
                folder = roots["v2"] / name
                folder.mkdir()
                self.folders.append(folder)
                (folder / "memory.max").write_text(str(memory))
                (folder / "memory.swap.max").write_text("0") if (folder / "memory.swap.max").exists() else None
                (folder / "pids.max").write_text(str(limits.processes + 8))
                self.procs.append(str(folder / "cgroup.procs"))
                self.memory_events = folder / "memory.events"
            elif roots:
                for controller in ("memory", "pids"):
                    folder = roots[controller] / name
                    folder.mkdir()
                    self.folders.append(folder)
                    self.procs.append(str(folder / "cgroup.procs"))
                memory_folder, pids_folder = self.folders
                (memory_folder / "memory.limit_in_bytes").write_text(str(memory))
                swap = memory_folder / "memory.memsw.limit_in_bytes"
                if swap.exists():
                    try:
                        swap.write_text(str(memory))
                    except OSError:
                        pass
                (pids_folder / "pids.max").write_text(str(limits.processes + 8))
                self.memory_events = memory_folder / "memory.oom_control"
        except OSError as e:
            self.close()
            raise RuntimeError(f"sandbox: could not set up its cgroup ({e})") from None

    def add(self, pid: int) -> None:
        """Put a process in the sandbox's cgroups: what it forks afterwards is counted there too. Done here while
        the init's interpreter starts (moving a process between cgroups waits for an RCU grace period, about 10 ms,
        which the init's start-up hides)."""
        for procs in self.procs:
            with open(procs, "w") as f:
                f.write(str(pid))

    def out_of_memory(self) -> bool:
        """Whether the kernel killed a process of this sandbox for its memory cap."""
        if self.memory_events is None:
            return False
        try:
            for line in self.memory_events.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def close(self) -> None:
        for folder in reversed(self.folders):
            for _ in range(50):  # its processes are dead; the kernel lets go of the folder within moments
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
        self.folders = []


# --- running -----------------------------------------------------------------------------------------------------


def _classify(report: dict, stderr: str, output_over: bool, out_of_memory: bool) -> str:
    if output_over:
        return "output_limit"
    if out_of_memory or "MemoryError" in stderr:
        return "memory_limit"
    if report.get("timeout") or report.get("signal") == signal.SIGXCPU:
        return "exec_timeout"
    if report.get("exit") == 0:
        return "ok"
    if "BlockingIOError" in stderr and "Resource temporarily unavailable" in stderr:
        return "process_limit"  # fork refused: RLIMIT_NPROC or pids.max
    if report.get("signal") == signal.SIGXFSZ:
        return "output_limit"  # a file past file_mb
    return "runtime_error"  # an exception, a non-zero exit, or a signal it sent itself (SIGKILL included)


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
            on_over()  # stopped at once: a flood never runs out the wall time


def _wait(process: subprocess.Popen, seconds: float) -> bool:
    """Whether `process` ended within `seconds`. Woken by the kernel the moment it ends (a pidfd), not by polling:
    Popen.wait(timeout) sleeps in steps of up to 50 ms, which was most of a short program's time here."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # before Linux 5.3: Popen's polling
        try:
            process.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([pidfd], [], [], seconds)
    finally:
        os.close(pidfd)
    if ready:
        process.wait()
    return bool(ready)


def _communicate(process: subprocess.Popen, payload: bytes, limits: Limits, wait_s: float,
                 kill) -> tuple[str, str, bool, bool]:
    """Feed stdin, read stdout and stderr (each capped: past its cap the run is killed) until the process ends or
    `wait_s` has passed (then kill)."""
    stdout: list[bytes] = []
    stderr: list[bytes] = []
    over = threading.Event()
    readers = [threading.Thread(target=_read_capped, args=(process.stdout, limits.output_bytes, stdout, over, kill),
                                daemon=True),
               threading.Thread(target=_read_capped, args=(process.stderr, STDERR_BYTES, stderr, over, kill),
                                daemon=True)]
    for reader in readers:
        reader.start()
    try:
        process.stdin.write(payload)
        process.stdin.close()
    except BrokenPipeError:
        pass
    timed_out = not _wait(process, wait_s)
    if timed_out:
        kill()
        process.wait()
    for reader in readers:
        reader.join(timeout=5)
    return (b"".join(stdout).decode("utf-8", "replace"), b"".join(stderr).decode("utf-8", "replace"),
            over.is_set(), timed_out)


def _run_isolated(program: str, stdin: str, limits: Limits, harness: str | None, runner: str | None,
                  entry: str) -> Execution:
    python = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    program_uid, harness_uid = (2**20 + secrets.randbelow(2**30) for _ in range(2))  # users of their own
    spec = {"program": program, "stdin": stdin, "limits": asdict(limits), "env": ENV, "python": python,
            "python_prefix": prefix, "program_uid": program_uid, "harness_uid": harness_uid,
            "seccomp": seccomp_filter().hex()}
    if harness is not None:
        spec.update(harness=harness, runner=runner, entry=entry)
    started = time.monotonic()
    try:
        cgroup = SandboxCgroup(limits) if cgroup_roots() else None
    except RuntimeError as e:
        return Execution("runtime_error", "", f"sandbox setup failed: {e}", None, None, 0.0)
    try:
        read_report, write_report = os.pipe()
        spec["report_fd"] = write_report  # kept open in the init under the same number
        try:
            process = subprocess.Popen([python, "-I", "-S", str(INIT)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(write_report,),
                                       env=ENV, cwd="/", start_new_session=True)
        finally:
            os.close(write_report)

        def kill() -> None:  # the init's death takes its namespace's PID 1, and so every process, with it
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        try:
            if cgroup is not None:
                cgroup.add(process.pid)  # before the spec is sent: nothing of the sandbox runs outside its caps
        except OSError as e:
            kill()
            process.communicate()
            os.close(read_report)
            return Execution("runtime_error", "", f"sandbox setup failed: could not join its cgroup ({e})", None,
                             None, time.monotonic() - started)
        try:
            # the init's own deadline (wall_s) comes first; the host's is a backstop
            stdout, stderr, over, host_timeout = _communicate(process, marshal.dumps(spec), limits,
                                                              limits.wall_s + 10, kill)
            with os.fdopen(read_report, "rb") as f:
                raw = f.read()
        except BaseException:
            kill()
            raise
        out_of_memory = cgroup.out_of_memory() if cgroup is not None else False
    finally:
        if cgroup is not None:
            cgroup.close()
    try:
        report = marshal.loads(raw) if raw else {}  # written by the init (this interpreter), never by the program
    except (EOFError, ValueError, TypeError):
        report = {}
    try:  # the harness's verdict, as it wrote it
        report["harness"] = json.loads(report["harness"]) if report.get("harness") else None
    except ValueError:
        report["harness"] = None
    if host_timeout:
        report["timeout"] = True
    seconds = report.get("seconds", time.monotonic() - started)
    if report.get("setup_error"):
        return Execution("runtime_error", stdout, f"sandbox setup failed: {report['setup_error']}\n{stderr}",
                         None, None, seconds)
    if not report and not over:
        return Execution("runtime_error", stdout, f"the sandbox ended without a report\n{stderr}", None, None,
                         seconds)
    return Execution(_classify(report, stderr, over, out_of_memory), stdout, stderr, report.get("exit"),
                     report.get("signal"), seconds, report.get("harness"))


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
                                   env={**ENV, "HOME": work, "TMPDIR": work}, start_new_session=True,
                                   preexec_fn=set_limits)

        def kill() -> None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        stdout, stderr, over, timed_out = _communicate(process, stdin.encode(), limits, limits.wall_s, kill)
        kill()
    code = process.returncode
    report = {"exit": code if code >= 0 else None, "signal": -code if code < 0 else None, "timeout": timed_out}
    return Execution(_classify(report, stderr, over, False), stdout, stderr, report["exit"], report["signal"],
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
        return Execution(_classify(report, stderr, over, False), stdout[: limits.output_bytes], stderr, run.get("code"),
                         signum, time.monotonic() - started)
