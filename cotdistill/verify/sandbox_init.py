"""The sandbox's init: run by sandbox.py as its own process (python -I, the standard library only), never imported.

    python -I cotdistill/verify/sandbox_init.py  < spec.json      # spec["report_fd"]: where the report goes

It enters new mount, network and PID namespaces, then forks the namespace's PID 1, which:
  - remounts every filesystem read-only, and mounts small tmpfs on /tmp, /var/tmp and /dev/shm, a fresh /proc
    (only the namespace's processes: no other process's environment to read), and the interpreter read-only;
  - writes the program into /tmp/work (the only place it may write) and forks it, with resource limits, as the
    unprivileged user `nobody`, with no capabilities and the environment it is given;
  - waits for it at most `wall_s`, then kills every process of the namespace (a double-forked daemon too: they are
    all its children once orphaned) and reports {"exit", "signal", "timeout", "seconds"} as JSON on the report fd.
If this process dies, PID 1 gets SIGKILL (PR_SET_PDEATHSIG), and with it the whole namespace.
"""

import ctypes
import json
import os
import resource
import signal
import sys
import time

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID = 0x00020000, 0x40000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
NOBODY = 65534

libc = ctypes.CDLL(None, use_errno=True)


def check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    check(libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), flags,
                     data and data.encode()), f"mount {target}")


def read_only_world(python_prefix: str, disk_mb: int) -> None:
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here propagates to the host
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted(set(points), key=len):
        try:  # every mount read-only: writing anywhere but the tmpfs below fails
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        except OSError:
            pass  # a mount that cannot be remounted (locked); `nobody` cannot write it anyway
    for point in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(point):
            mount("tmpfs", point, "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk_mb}m,mode=1777")
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV)
    os.makedirs("/tmp/.python", exist_ok=True)  # the interpreter, where `nobody` can reach it
    mount(python_prefix, "/tmp/.python", None, MS_BIND | MS_REC)
    mount(None, "/tmp/.python", None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def run_program(spec: dict, python: str) -> None:
    """In the program's process: limits, no privileges, then exec. Never returns."""
    limits = spec["limits"]
    os.chdir("/tmp/work")
    fd = os.open("/tmp/.input", os.O_RDONLY)
    os.dup2(fd, 0)
    os.closerange(3, 1024)
    for limit, value in ((resource.RLIMIT_CPU, limits["cpu_s"]), (resource.RLIMIT_AS, limits["memory_mb"] << 20),
                         (resource.RLIMIT_FSIZE, limits["file_mb"] << 20), (resource.RLIMIT_NOFILE, limits["open_files"]),
                         (resource.RLIMIT_NPROC, limits["processes"]), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)  # drops every capability: the mounts above can no longer be changed
    os.execve(python, [python, "-I", "-S", "-B", "program.py"], spec["env"])


def namespace_init(spec: dict, started: float) -> None:
    """PID 1 of the namespace. Never returns."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    report = {"exit": None, "signal": None, "timeout": False}
    try:
        limits = spec["limits"]
        read_only_world(spec["python_prefix"], limits["disk_mb"])
        os.makedirs("/tmp/work")
        with open("/tmp/work/program.py", "w") as f:
            f.write(spec["program"])
        with open("/tmp/.input", "w") as f:
            f.write(spec["stdin"])
        os.chown("/tmp/work", NOBODY, NOBODY)
        os.chown("/tmp/work/program.py", NOBODY, NOBODY)
        python = "/tmp/.python" + spec["python"][len(spec["python_prefix"]):]
        child = os.fork()
        if child == 0:
            try:
                run_program(spec, python)
            finally:
                os._exit(127)
        deadline = started + limits["wall_s"]
        while True:  # reap everything (PID 1's duty) until the program ends or its time is up
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == child:
                if os.WIFSIGNALED(status):
                    report["signal"] = os.WTERMSIG(status)
                else:
                    report["exit"] = os.WEXITSTATUS(status)
                break
            if pid == 0:
                if time.monotonic() >= deadline:
                    report["timeout"] = True
                    break
                time.sleep(0.005)
    except BaseException as e:  # the sandbox could not be set up: said, never run unconfined
        report["setup_error"] = f"{type(e).__name__}: {e}"
    report["seconds"] = round(time.monotonic() - started, 4)
    try:
        os.kill(-1, signal.SIGKILL)  # everything left in the namespace
    except ProcessLookupError:
        pass
    os.write(spec["report_fd"], json.dumps(report).encode())
    os._exit(0)


def main() -> None:
    spec = json.load(sys.stdin)
    started = time.monotonic()
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare")
    pid = os.fork()
    if pid == 0:
        namespace_init(spec, started)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else 0)


if __name__ == "__main__":
    main()
