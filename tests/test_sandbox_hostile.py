"""Hostile programs against the code verdicts and the sandbox (cotdistill/verify/code.py, verify/sandbox.py).

Each program is what a model trained with rewards learns to write: wrong, but shaped to be judged `passed`, or
reaching past its sandbox into the host. The verdict ones go through `code_judge(...).judge_texts`, as the filter
judges rationales; the host ones through `run_python`. After every test the host is checked: no file the programs
name appeared, no new SysV IPC object, no socket the programs bound, no process of a sandbox's users, no cgroup left.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from cotdistill.config.sections import SandboxConfig
from cotdistill.verify.answers import get_answer_format
from cotdistill.verify.code import CodeTests, call_based_tests, code_judge
from cotdistill.verify.sandbox import Limits, isolation_problem, run_python

MARK = f"cotdistill-hostile-{uuid.uuid4().hex[:12]}"  # in every name a program here tries to leave on the host
SANDBOX_UIDS = 2**20  # sandbox.py gives each program and harness a uid of its own, at or above this
FAST = Limits(wall_s=5, cpu_s=5)
SECRET = f"secret-{uuid.uuid4().hex}"  # an expected output no program may read

ADD = CodeTests(kind="functional", entry_point="add", test="""
def check(candidate):
    assert candidate(1, 2) == 3
    assert candidate(20, 22) == 42
    assert candidate(-5, 5) == 0
""")
JOIN = CodeTests(kind="functional", entry_point="join", test=f"""
def check(candidate):
    assert candidate("{SECRET[:8]}", "{SECRET[8:]}") == "{SECRET}"
    assert candidate("a", "b") == "ab"
""")  # its first expected output: a secret no program can compute, only read
HALF = CodeTests(kind="functional", entry_point="half", test="""
def check(candidate):
    assert abs(candidate(3.0) - 1.5) < 1e-9
    assert abs(candidate(10) - 5) < 1e-9
""")
PAIR = call_based_tests("pair", [[1], [2], [7]], [[1, 1], [2, 2], [7, 7]])  # APPS' call-based shape
CORRECT = {"add": "def add(a, b):\n    return a + b\n", "half": "def half(x):\n    return x / 2\n",
           "pair": "def pair(x):\n    return [x, x]\n", "join": "def join(a, b):\n    return a + b\n"}


@pytest.fixture(scope="module", autouse=True)
def isolated():
    problem = isolation_problem()
    assert problem is None, f"this machine must isolate programs for these tests: {problem}"


# --- the host, before and after ----------------------------------------------------------------------------------


def ipc_ids() -> set[tuple[str, str]]:
    ids = set()
    for kind in ("shm", "msg", "sem"):
        for line in Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]:
            fields = line.split()
            ids.add((kind, fields[1]))  # its id
    return ids


def marked_files() -> list[str]:
    found = []
    for folder in ("/tmp", "/var/tmp", "/dev/shm", "/run"):
        try:
            found += [f"{folder}/{name}" for name in os.listdir(folder) if MARK in name]
        except OSError:
            pass
    return found


def marked_sockets() -> list[str]:
    return [line for line in Path("/proc/net/unix").read_text().splitlines() if MARK in line]


def sandbox_processes() -> list[str]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue  # ended meanwhile
        uid = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("Uid:")), 0)
        if uid >= SANDBOX_UIDS:
            found.append(f"{status.parent.name} uid {uid}")
    return found


def leftover_cgroups() -> list[str]:
    return [str(p) for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids")
            for p in Path(root).rglob("cotdistill-sandbox-*")] if Path("/sys/fs/cgroup").is_dir() else []


@pytest.fixture(autouse=True)
def host_unchanged(tmp_path):
    """Every test here: the host as it was, afterwards."""
    ipc_before = ipc_ids()
    yield
    deadline = time.monotonic() + 5  # the kernel reaps a killed sandbox's processes within moments
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == [], "a sandbox's process outlived it"
    assert ipc_ids() - ipc_before == set(), "a SysV IPC object was left on the host"
    assert marked_files() == [], "a file appeared on the host"
    assert marked_sockets() == [], "a socket bound inside is visible on the host"
    assert [p for p in tmp_path.rglob("*") if MARK in p.name] == [], "a file appeared in the test's folder"
    assert leftover_cgroups() == [], "a sandbox's cgroup was left behind"


@pytest.fixture
def host_dir():
    """A folder of the host outside /tmp, where data files, checkouts and services' sockets live."""
    parent = next(p for p in (Path("/run"), Path.home()) if os.access(p, os.W_OK))
    folder = parent / f"cotdistill-test-{uuid.uuid4().hex[:12]}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder)


def verdict(program: str, tests: CodeTests = ADD, **sandbox):
    """The filter's verdict on a rationale ending with `program`."""
    judge = code_judge(SandboxConfig(**{"timeout_s": 5.0, "cpu_s": 5, **sandbox}))
    text = f"Let me write it.\n```python\n{program}\n```\n"
    [result] = judge.judge_texts(tests, [text], get_answer_format("code"))
    return result


# --- verdicts the program cannot forge --------------------------------------------------------------------------


@dataclass(frozen=True)
class Forgery:
    family: str
    program: str
    tests: CodeTests = ADD


FORGERIES = [
    Forgery("an object equal to everything", """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
def add(a, b):
    return Anything()
"""),
    Forgery("an int subclass equal to everything", """
class Int(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def add(a, b):
    return Int(0)
"""),
    Forgery("a builtin the tests use, shadowed", "def abs(x):\n    return 0\ndef half(x):\n    return x * 3\n", HALF),
    Forgery("isinstance and list redefined for the comparison helper", """
def isinstance(value, kind):
    return True
class list:
    def __init__(self, *args):
        pass
    def __eq__(self, other):
        return True
def pair(x):
    return (0, 0)
""", PAIR),
    Forgery("list alone redefined, a tuple returned", """
class list:
    def __init__(self, *args):
        pass
    def __eq__(self, other):
        return True
def pair(x):
    return (x, -x)
""", PAIR),
    Forgery("print replaced, rewriting the report line", """
import builtins, json
_print = builtins.print
def print(*args, **kwargs):
    text = " ".join(map(str, args))
    if text.startswith("__cotdistill_") and "[" in text:
        text = text[:text.index("[")] + json.dumps([4, 0, [], None, "0" * 16, 4])
    _print(text, **kwargs)
builtins.print = print
def add(a, b):
    return a - b
"""),
    Forgery("json.dumps replaced, rewriting the report", """
import json
_dumps = json.dumps
def forged(value, *args, **kwargs):
    if type(value) is list and len(value) == 6:
        return _dumps([4, 0, [], None, "0" * 16, 4])
    return _dumps(value, *args, **kwargs)
json.dumps = forged
def add(a, b):
    return a - b
"""),
    Forgery("the marker read from its own file, a report forged at exit", """
import atexit, re
SOURCE = open(__file__).read()
def forge():
    for marker in set(re.findall(r"__cotdistill_[0-9a-f]{16}__", SOURCE)):
        print(marker + '[4, 0, [], null, "0000000000000000", 4]', flush=True)
atexit.register(forge)
def add(a, b):
    return 0
"""),
    Forgery("the marker read from the code's constants, a report printed, then os._exit(0)", """
import os, sys
def add(a, b):
    frame = sys._getframe(1)
    while frame is not None:
        for const in frame.f_code.co_consts:
            if isinstance(const, str) and const.startswith("__cotdistill_") and const.endswith("__"):
                print(const + '[4, 0, [], null, "0000000000000000", 4]', flush=True)
                os._exit(0)
        frame = frame.f_back
    return 0
"""),
    Forgery("the marker from its file, a report printed at import, then os._exit(0)", """
import os, re
for marker in set(re.findall(r"__cotdistill_[0-9a-f]{16}__", open(__file__).read())):
    print(marker + '[4, 0, [], null, "0000000000000000", 4]', flush=True)
    os._exit(0)
def add(a, b):
    return 0
"""),
    Forgery("a sys.settrace hook rewriting the harness's counters", """
import sys
def tracer(frame, event, arg):
    names = frame.f_globals
    if type(names.get("__cd")) is list:
        names["__cd"][0], names["__cd"][1] = 4, 0
        names["__cd_aborted"] = None
        names["__cd_errors"] = []
    return tracer
sys.settrace(tracer)
def add(a, b):
    return 0
"""),
    Forgery("the tests read back from its own file", """
import re
def add(a, b):
    for line in open(__file__).read().splitlines():
        m = re.search(r'candidate\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)', line)
        if m and (int(m[1]), int(m[2])) == (a, b):
            return int(m[3])
    return -1
"""),
]
FORGED_ON_EVERY_FD = """
import os, json
for fd in range(64):
    try:
        os.write(fd, json.dumps([4, 0, [], None, "0" * 16, 4]).encode() + b"\\n")
    except OSError:
        pass
def add(a, b):
    return 0
"""
KILLS_EVERY_PROCESS = """
import os, signal
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
def add(a, b):
    return 0
"""
FORGERIES += [
    Forgery("a forged verdict written to every file descriptor", FORGED_ON_EVERY_FD),
    Forgery("the tests' other process found and killed, the verdict left to chance", KILLS_EVERY_PROCESS),
    Forgery("a value that is not plain data (a generator)", "def add(a, b):\n    yield a + b\n"),
]


@pytest.mark.parametrize("forgery", FORGERIES, ids=[f.family for f in FORGERIES])
def test_a_wrong_program_is_never_judged_passed(forgery):
    result = verdict(forgery.program, forgery.tests)
    assert not result.passed, (forgery.family, result)
    assert result.reason in ("tests_failed", "runtime_error"), result


@pytest.mark.parametrize("entry", sorted(CORRECT))
def test_the_correct_program_still_passes_each_problem(entry):
    tests = {"add": ADD, "half": HALF, "pair": PAIR, "join": JOIN}[entry]
    result = verdict(CORRECT[entry], tests)
    assert result.passed and result.tests_passed == result.tests_total > 1, result


def test_a_correct_program_survives_its_own_attempts_on_the_harness():
    """Killing every process it sees, writing to every descriptor: the harness goes on, the verdict is its own."""
    assert verdict(KILLS_EVERY_PROCESS.replace("return 0", "return a + b")).passed
    result = verdict(FORGED_ON_EVERY_FD.replace("return 0", "return a + b"))
    assert not result.passed and result.reason == "runtime_error", result  # a broken channel is no answer


def test_the_tests_and_the_harness_are_unreadable_from_the_program():
    """Everything it can read (files, other processes' /proc entries, its callers' constants): the secret expected
    output of the last test is in none of it, so that test fails (it would pass the moment the program found it)."""
    program = """
import os, re, sys
seen = []
def read(path):
    try:
        with open(path, "rb") as f:
            seen.append(f.read(1 << 20).decode("latin-1"))
    except OSError as e:
        seen.append(f"{path}: {e.strerror}")
for folder in (".", "/tmp", "/tmp/harness", "/tmp/work", "/"):
    try:
        for name in os.listdir(folder):
            if os.path.isfile(os.path.join(folder, name)):
                read(os.path.join(folder, name))
    except OSError as e:
        seen.append(f"{folder}: {e.strerror}")
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for part in ("cmdline", "environ", "mem", "maps", "root/tmp/harness/harness.py", "fd/0", "fd/1"):
            read(f"/proc/{pid}/{part}")
def join(a, b):
    frame = sys._getframe(1)
    while frame is not None:
        seen.extend(str(c) for c in frame.f_code.co_consts)
        frame = frame.f_back
    found = re.findall(r"secret-[0-9a-f]{32}", "\\n".join(seen))
    return found[0] if found else "not found"
"""
    result = verdict(program, JOIN)
    assert (result.passed, result.reason, result.tests_passed) == (False, "tests_failed", 0), result
    raw = run_python(program.replace("def join", "print(len(seen), 'read')\ndef join"), limits=FAST)
    assert raw.status == "ok" and raw.stdout.endswith(" read\n"), raw  # it did read what it could


def test_stdin_stdout_expected_outputs_are_not_on_any_path_it_can_walk(host_dir):
    """The data file with the expected outputs sits on the host; the program walks for it and finds nothing."""
    data = host_dir / "problems.jsonl"
    data.write_text(json.dumps({"input": "7 8\n", "output": f"15 {SECRET}\n"}) + "\n")
    tests = CodeTests(kind="stdio", inputs=("7 8\n",), outputs=(f"15 {SECRET}\n",))
    program = f"""
import json, os, sys
given = sys.stdin.read()
for top in ({str(host_dir.parent)!r}, "/tmp", "/root", "/work", "/home"):
    for folder, folders, files in os.walk(top):
        for name in files:
            if name.endswith(".jsonl"):
                try:
                    for line in open(os.path.join(folder, name)):
                        row = json.loads(line)
                        if row.get("input") == given:
                            print(row["output"], end="")
                            sys.exit(0)
                except (OSError, ValueError):
                    pass
print("15")
"""
    result = verdict(program, tests)
    assert not result.passed and result.reason == "tests_failed", result


# --- nothing shared with the host or between sandboxes ------------------------------------------------------------

LIBC = """import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
"""


def test_a_shared_memory_segment_made_inside_is_gone_with_the_sandbox():
    program = LIBC + """
shmid = libc.shmget(0, 64 << 20, 0o1000 | 0o666)  # IPC_PRIVATE, IPC_CREAT
address = libc.shmat(shmid, None, 0)
ctypes.memset(address, 1, 64 << 20)
print("made", shmid)
"""
    result = run_python(program, limits=FAST)
    assert result.status == "ok" and result.stdout.startswith("made"), result
    # the host_unchanged fixture: no new segment in /proc/sysvipc/shm


def test_a_message_queue_written_by_one_sandbox_is_not_read_by_the_next():
    key = 0x5AD0 + uuid.uuid4().int % 1000
    writer = LIBC + f"""
queue = libc.msgget({key}, 0o1000 | 0o666)
message = ctypes.create_string_buffer(ctypes.sizeof(ctypes.c_long) + 16)
ctypes.c_long.from_buffer(message).value = 1
message[8:14] = b"hello!"
print("sent", libc.msgsnd(queue, message, 16, 0))
"""
    reader = LIBC + f"""
queue = libc.msgget({key}, 0)
print("no queue" if queue < 0 else "found", ctypes.get_errno())
"""
    assert run_python(writer, limits=FAST).stdout == "sent 0\n"
    result = run_python(reader, limits=FAST)
    assert result.status == "ok" and result.stdout == f"no queue {errno.ENOENT}\n", result


def test_a_host_services_shared_memory_is_out_of_reach():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    key = 0x5AE0 + uuid.uuid4().int % 1000
    shmid = libc.shmget(key, 4096, 0o1000 | 0o666)  # world-writable, as a careless service leaves it
    assert shmid >= 0, os.strerror(ctypes.get_errno())
    try:
        address = libc.shmat(shmid, None, 0)
        ctypes.memmove(address, SECRET.encode(), len(SECRET))
        program = LIBC + f"""
shmid = libc.shmget({key}, 0, 0)
if shmid < 0:
    print("no segment", ctypes.get_errno())
else:
    address = libc.shmat(shmid, None, 0)
    print(ctypes.string_at(address, {len(SECRET)}))
    ctypes.memset(address, 0, 4096)
"""
        result = run_python(program, limits=FAST)
        assert result.stdout == f"no segment {errno.ENOENT}\n", result
        assert ctypes.string_at(address, len(SECRET)) == SECRET.encode()
        libc.shmdt(ctypes.c_void_p(address))
    finally:
        libc.shmctl(shmid, 0, None)  # IPC_RMID


def test_forked_children_share_one_memory_cap():
    """Three children of 200 MB each, in a sandbox of 300 MB: never all held at once."""
    program = """
import os, select, time
reads = []
for _ in range(3):
    r, w = os.pipe()
    if os.fork() == 0:
        block = bytearray(b"\\x01") * (200 << 20)  # touched: resident, not just reserved
        os.write(w, b"1")
        time.sleep(3)
        os._exit(0)
    reads.append(r)
held, deadline = 0, time.monotonic() + 3
while reads and time.monotonic() < deadline:
    ready, _, _ = select.select(reads, [], [], 0.1)
    for r in ready:
        held += os.read(r, 1) == b"1"
        reads.remove(r)
print("held", held)
"""
    result = run_python(program, limits=Limits(wall_s=8, cpu_s=8, memory_mb=300))
    assert "held 3" not in result.stdout, result
    assert result.status == "memory_limit", result


def test_a_unix_socket_on_a_visible_path_cannot_be_reached(host_dir):
    path = host_dir / f"{MARK}.sock"
    abstract = f"\0{MARK}-host"
    with socket.socket(socket.AF_UNIX) as on_path, socket.socket(socket.AF_UNIX) as on_name:
        on_path.bind(str(path))
        path.chmod(0o777)  # as many services leave theirs: anyone who sees it may connect
        on_name.bind(abstract)
        for server in (on_path, on_name):
            server.listen()
            server.settimeout(0.5)
        program = f"""
import socket
for address in ({str(path)!r}, {abstract!r}):
    try:
        socket.socket(socket.AF_UNIX).connect(address)
        print("connected", repr(address))
    except OSError as e:
        print("refused", e.errno)
"""
        result = run_python(program, limits=FAST)
        for server in (on_path, on_name):
            with pytest.raises(socket.timeout):
                server.accept()
        path.unlink()
    assert result.status == "ok" and "connected" not in result.stdout, result


def test_sockets_bound_inside_are_not_seen_outside():
    program = f"""
import socket
named = socket.socket(socket.AF_UNIX)
named.bind("\\0{MARK}-inside")
named.listen()
on_disk = socket.socket(socket.AF_UNIX)
on_disk.bind("{MARK}.sock")  # in its folder, /tmp/work
on_disk.listen()
print(open("/proc/net/unix").read().count("{MARK}"))
"""
    result = run_python(program, limits=FAST)
    assert result.status == "ok" and result.stdout == "2\n", result  # they exist, inside; the fixture: not outside


def test_a_mount_with_a_space_in_its_path_is_not_left_writable(host_dir):
    folder = host_dir / "with space"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)
    try:
        target = folder / f"{MARK}.txt"
        result = run_python(f"open({str(target)!r}, 'w').write('escaped')\n", limits=FAST)
        assert not target.exists(), "the program wrote into a host mount"
        assert result.status == "runtime_error" and "FileNotFoundError" in result.stderr, result
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_fork_bomb_does_not_starve_a_threaded_program_judged_beside_it():
    threaded = """
import threading
done = []
threads = [threading.Thread(target=done.append, args=(i,)) for i in range(30)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(len(done), "threads")
"""
    # every process it can have, held (each failed fork waits a moment: the point is the count, not the CPU)
    bomb = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.05)\n"
    results = {}
    worker = threading.Thread(target=lambda: results.setdefault("bomb", run_python(bomb, limits=Limits(wall_s=4))))
    worker.start()
    time.sleep(1.0)  # the bomb at its process limit
    results["threaded"] = run_python(threaded, limits=FAST)
    worker.join()
    assert results["threaded"].status == "ok" and results["threaded"].stdout == "30 threads\n", results["threaded"]
    assert results["bomb"].status in ("exec_timeout", "process_limit", "runtime_error"), results["bomb"]


def test_the_usual_device_files_work():
    program = """
with open("/dev/urandom", "rb") as f:
    assert len(f.read(16)) == 16
with open("/dev/random", "rb") as f:
    assert len(f.read(16)) == 16
with open("/dev/zero", "rb") as f:
    assert f.read(4) == bytes(4)
with open("/dev/null", "w") as f:
    f.write("gone")
import os, threading
threading.Thread(target=print).start()
pid = os.fork()
if pid == 0:
    os._exit(7)
assert os.waitpid(pid, 0)[1] >> 8 == 7
print("devices, threads and fork work")
"""
    result = run_python(program, limits=FAST)
    assert result.status == "ok" and result.stdout.endswith("devices, threads and fork work\n"), result


# x86_64 and aarch64 numbers: (name, number, arguments)
SYSCALLS = {
    "x86_64": {"unshare": 272, "io_uring_setup": 425, "perf_event_open": 298, "keyctl": 250, "ptrace": 101,
               "mount": 165, "bpf": 321, "setns": 308},
    "aarch64": {"unshare": 97, "io_uring_setup": 425, "perf_event_open": 241, "keyctl": 219, "ptrace": 117,
                "mount": 40, "bpf": 280, "setns": 268},
}
DENIED = [
    ("unshare", "0x10000000"),  # CLONE_NEWUSER: a user namespace, the first step of many escapes
    ("io_uring_setup", "8, ctypes.create_string_buffer(120)"),
    ("perf_event_open", "ctypes.create_string_buffer(128), 0, -1, -1, 0"),
    ("keyctl", "0, -3, 0"),  # KEYCTL_GET_KEYRING_ID of the session keyring
    ("ptrace", "0, 0, 0, 0"),  # PTRACE_TRACEME
    ("mount", "b'none', b'/tmp', b'tmpfs', 0, None"),
    ("bpf", "0, ctypes.create_string_buffer(128), 128"),
    ("setns", "-1, 0"),
]


@pytest.mark.parametrize("name,arguments", DENIED, ids=[d[0] for d in DENIED])
def test_system_calls_a_test_program_never_needs_are_refused(name, arguments):
    number = SYSCALLS[os.uname().machine][name]
    program = LIBC + f"result = libc.syscall({number}, {arguments})\nprint(result, ctypes.get_errno())\n"
    result = run_python(program, limits=FAST)
    assert result.status == "ok" and result.stdout == f"-1 {errno.EPERM}\n", (name, result)


def test_a_program_that_kills_itself_is_a_runtime_error():
    result = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", limits=Limits(wall_s=10))
    assert result.status == "runtime_error" and result.seconds < 5, result


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_flood_on_either_stream_is_cut_as_soon_as_it_passes_the_cap(stream):
    program = f"import sys\nblock = 'x' * 65536\nwhile True:\n    sys.{stream}.write(block)\n"
    started = time.monotonic()
    result = run_python(program, limits=Limits(wall_s=20, cpu_s=20))
    assert result.status == "output_limit", result.status
    assert time.monotonic() - started < 8, "the flood ran on towards the wall time"


def test_the_hosts_files_are_not_there(host_dir):
    reference = host_dir / "reference_solution.py"
    reference.write_text(f"# {SECRET}\n")
    program = f"""
import os
print(sorted(os.listdir("/")))
for path in ({str(reference)!r}, "/etc/passwd", "/etc/hostname", {str(Path.cwd())!r}):
    print(path, os.path.exists(path))
"""
    result = run_python(program, limits=FAST)
    assert result.status == "ok", result
    listing, *checks = result.stdout.splitlines()
    assert all(line.endswith(" False") for line in checks), result.stdout
    assert set(eval(listing)) <= {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "dev", "proc", "tmp",
                                  Path(os.path.realpath(sys.base_prefix)).parts[1]}, listing
    assert SECRET not in result.stdout
