"""The sandbox's init: run by sandbox.py as its own process (python -I -S, the standard library only), never imported.

    python -I -S cotdistill/verify/sandbox_init.py  < spec.marshal      # spec["report_fd"]: where the report goes

The host has put it in the sandbox's cgroups (memory and processes for all of its processes) before sending the
spec. It enters new mount, network, PID, IPC and UTS namespaces, and forks the namespace's PID 1, which:
  - builds a minimal root on a tmpfs and pivots into it: the interpreter and its standard library (read-only), a
    /dev of null, zero, random and urandom, a fresh /proc (only the namespace's processes), a small tmpfs /tmp; the
    host's files, sockets and data are not there at all. Any step that fails is a setup error: the program never
    runs in a half-built sandbox;
  - writes the program into /tmp/work, and for functional tests the test harness into /tmp/harness, readable only
    by the harness's own user;
  - starts the program as a user of its own (a uid no other process on the machine has), without capabilities,
    under resource limits and a seccomp filter that denies the system calls a test program never needs
    (namespaces, mounts, ptrace, io_uring, perf, keyrings, bpf, module loading);
  - for functional tests, forks the harness as another such user: it runs the tests, calls the program's entry
    point through two pipes (arguments and results cross as plain data, JSON, with a size cap), and reports its
    verdict on a pipe of its own: the program can neither read the tests nor reach the verdict;
  - waits at most `wall_s`, then kills every process of the namespace and reports {"exit", "signal", "timeout",
    "seconds", "harness"} on the report fd (marshal: the host runs this same interpreter; "harness" is the
    harness's verdict as it wrote it, JSON, read by the host).
If this process dies, PID 1 gets SIGKILL (PR_SET_PDEATHSIG), and with it the whole namespace.
"""

import ctypes
import marshal
import os
import resource
import select
import signal
import sys
import time

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = (0x00020000, 0x04000000, 0x08000000,
                                                                      0x20000000, 0x40000000)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (1, 2, 4, 8, 32, 4096, 16384,
                                                                                    1 << 18)
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 1, 38, 22, 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
DEVICES = ("null", "zero", "random", "urandom")
MAX_VERDICT = 1 << 20  # the harness's verdict, as JSON (a few hundred bytes)

libc = ctypes.CDLL(None, use_errno=True)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source, target, fstype, flags, data=None) -> None:
    check(libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), flags,
                     data and data.encode()), f"mount {target}")


def bind_read_only(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def minimal_root(spec: dict) -> None:
    """A tmpfs root with the interpreter, its standard library, /dev, /proc and /tmp, pivoted into: nothing else
    of the host is visible afterwards. Raises on any failure (the caller reports it as a setup error)."""
    disk = spec["limits"]["disk_mb"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here propagates to the host
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=700")  # a place for the new root only
    root = "/tmp/root"
    os.mkdir(root)
    mount("tmpfs", root, "tmpfs", MS_NOSUID, "size=1m,mode=755")
    for folder in ("usr", "proc", "dev", "tmp", ".old"):
        os.mkdir(f"{root}/{folder}")
    for link in ("bin", "lib", "lib32", "lib64", "libx32", "sbin"):
        if os.path.islink("/" + link):  # merged /usr: the links, as the host has them
            os.symlink(os.readlink("/" + link), f"{root}/{link}")
        elif os.path.isdir("/" + link):
            os.mkdir(f"{root}/{link}")
            bind_read_only("/" + link, f"{root}/{link}")
    bind_read_only("/usr", f"{root}/usr")
    prefix = spec["python_prefix"]
    if not prefix.startswith("/usr/"):  # an interpreter outside /usr (pyenv, conda): its prefix, read-only
        os.makedirs(root + prefix)
        bind_read_only(prefix, root + prefix)
    for device in DEVICES:
        open(f"{root}/dev/{device}", "w").close()
        mount(f"/dev/{device}", f"{root}/dev/{device}", None, MS_BIND)
    mount("tmpfs", f"{root}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk}m,mode=711")
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(root)
    check(libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], b".", b".old"), "pivot_root")
    os.chdir("/")
    check(libc.umount2(b"/.old", MNT_DETACH), "umount the old root")
    os.rmdir("/.old")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


def private_folder(path: str, uid: int, mode: int) -> None:
    os.mkdir(path)
    os.chown(path, uid, uid)
    os.chmod(path, mode)


def write_file(path: str, text: str, uid: int) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chown(path, uid, uid)


def drop_privileges(spec: dict, uid: int) -> None:
    """In a child: limits, a user of its own (no capabilities), then the seccomp filter (the last: after it,
    setuid and the rest are refused anyway)."""
    limits = spec["limits"]
    for limit, value in ((resource.RLIMIT_CPU, limits["cpu_s"]), (resource.RLIMIT_AS, limits["memory_mb"] << 20),
                         (resource.RLIMIT_FSIZE, limits["file_mb"] << 20),
                         (resource.RLIMIT_NOFILE, limits["open_files"]),
                         (resource.RLIMIT_NPROC, limits["processes"]), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # drops every capability: the mounts above can no longer be changed
    bpf = bytes.fromhex(spec["seccomp"])
    if bpf:
        buffer = ctypes.create_string_buffer(bpf, len(bpf))
        program = SockFprog(len(bpf) // 8, ctypes.cast(buffer, ctypes.c_void_p))
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0), "seccomp")


def start_program(spec: dict, python: str, stdin_fd: int, keep: tuple[int, ...], argv: list[str]) -> int:
    """Fork the program's process: its user, its limits, its filter, then exec the interpreter."""
    pid = os.fork()
    if pid:
        return pid
    try:
        os.chdir("/tmp/work")
        os.dup2(stdin_fd, 0)
        for fd in range(3, 1024):
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        for fd in keep:  # pipes are made close-on-exec: these two cross the exec, to the runner
            os.set_inheritable(fd, True)
        drop_privileges(spec, spec["program_uid"])
        os.execve(python, [python, "-I", "-S", "-B", *argv], spec["env"])
    finally:
        os._exit(127)


def start_harness(spec: dict, requests: int, results: int, report: int) -> int:
    """Fork the harness: the tests, as a user of its own, calling the program through the two pipes, its verdict
    on `report`. It is a fork of this process (the standard library already loaded), never the program's."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        for fd in range(3, 1024):
            if fd not in (requests, results, report):
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.chdir("/tmp/harness")
        drop_privileges(spec, spec["harness_uid"])
        namespace = {"__name__": "__harness__", "__cd_requests": requests, "__cd_results": results,
                     "__cd_report": report}
        exec(compile(open("/tmp/harness/harness.py").read(), "harness.py", "exec"), namespace)
    except BaseException as e:  # noqa: BLE001 - reported: the tests could not be run
        try:
            message = f"{type(e).__name__}: {e}"[:1000].replace("\\", "/").replace('"', "'")
            os.write(report, ('{"harness_error": "' + message + '"}').encode())  # JSON, as the harness's verdict
        except OSError:
            pass
        code = 1
    finally:
        os._exit(code)


def namespace_init(spec: dict, started: float) -> None:
    """PID 1 of the namespace. Never returns."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    report = {"exit": None, "signal": None, "timeout": False}
    try:
        limits = spec["limits"]
        minimal_root(spec)
        python = spec["python"]
        private_folder("/tmp/work", spec["program_uid"], 0o700)
        write_file("/tmp/work/program.py", spec["program"], spec["program_uid"])
        with open("/tmp/.input", "w") as f:
            f.write(spec["stdin"])
        stdin_fd = os.open("/tmp/.input", os.O_RDONLY)
        harness = None
        if spec.get("harness"):
            private_folder("/tmp/harness", spec["harness_uid"], 0o700)
            write_file("/tmp/harness/harness.py", spec["harness"], spec["harness_uid"])
            write_file("/tmp/work/runner.py", spec["runner"], spec["program_uid"])
            requests_r, requests_w = os.pipe()  # harness -> program: the calls
            results_r, results_w = os.pipe()  # program -> harness: what each returned
            report_r, report_w = os.pipe()  # harness -> here: the verdict
            child = start_program(spec, python, os.open("/dev/null", os.O_RDONLY), (requests_r, results_w),
                                  ["runner.py", str(requests_r), str(results_w)])
            harness = start_harness(spec, requests_w, results_r, report_w)
            for fd in (requests_r, requests_w, results_r, results_w, report_w):
                os.close(fd)
        else:
            child = start_program(spec, python, stdin_fd, (), ["program.py"])
        deadline = started + limits["wall_s"]
        waiting = {child} | ({harness} if harness else set())
        pidfds = {pid: os.pidfd_open(pid) for pid in waiting}  # readable the moment that process ends
        while waiting:  # reap everything (PID 1's duty) until the program (and the harness) end or time is up
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid in pidfds:
                os.close(pidfds.pop(pid))
            if pid == child:
                if os.WIFSIGNALED(status):
                    report["signal"] = os.WTERMSIG(status)
                else:
                    report["exit"] = os.WEXITSTATUS(status)
            if pid in waiting:
                waiting.discard(pid)
                if pid == harness:  # its verdict is in: the program has nothing more to do
                    waiting.discard(child)
                continue
            if pid == 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    report["timeout"] = True
                    break
                select.select(list(pidfds.values()), [], [], min(left, 0.05))  # orphans are reaped every 50 ms
        if harness is not None:
            os.set_blocking(report_r, False)
            chunks = []
            try:
                while True:
                    chunk = os.read(report_r, 65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except BlockingIOError:
                pass
            raw = b"".join(chunks)[:MAX_VERDICT]
            report["harness"] = raw  # the harness's verdict, JSON: read by the host
    except BaseException as e:  # the sandbox could not be set up: said, never run unconfined
        report["setup_error"] = f"{type(e).__name__}: {e}"
    report["seconds"] = round(time.monotonic() - started, 4)
    try:
        os.kill(-1, signal.SIGKILL)  # everything left in the namespace
    except ProcessLookupError:
        pass
    os.write(spec["report_fd"], marshal.dumps(report))
    os._exit(0)


def main() -> None:
    spec = marshal.loads(sys.stdin.buffer.read())  # from the host, this interpreter's marshal: no json to import
    started = time.monotonic()
    try:
        check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    except OSError as e:  # said, never run unconfined
        os.write(spec["report_fd"], marshal.dumps({"setup_error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
    pid = os.fork()
    if pid == 0:
        namespace_init(spec, started)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else 0)


if __name__ == "__main__":
    main()
