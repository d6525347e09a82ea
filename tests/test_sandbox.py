"""The code sandbox (cotdistill/verify/sandbox.py) against hostile programs, as real processes: each gets its verdict and
leaves the host unchanged (no new file outside the sandbox, no surviving process, no connection received, the
planted secret in no output)."""

from __future__ import annotations

import socket
import subprocess
import uuid

import pytest

from cotdistill.verify.sandbox import Limits, isolation_problem, run_python

FAST = Limits(wall_s=3, cpu_s=3)


@pytest.fixture(scope="module", autouse=True)
def isolated():
    problem = isolation_problem()
    assert problem is None, f"this machine must isolate programs for these tests: {problem}"


def survivors(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def test_an_ordinary_program_reads_stdin_and_writes_its_own_directory():
    result = run_python("import sys\nopen('out.txt', 'w').write(sys.stdin.read()[::-1])\n"
                        "print(open('out.txt').read())", stdin="abc", limits=FAST)
    assert result.status == "ok" and result.stdout == "cba\n", result


def test_fork_bomb():
    result = run_python("import os\nwhile True:\n    os.fork()\n", limits=FAST)
    assert result.status in ("process_limit", "runtime_error"), result
    assert survivors_of_sandbox_users() == []  # none of it left


def survivors_of_sandbox_users() -> list[str]:
    """Processes of the users sandbox.py runs programs as (each a uid of its own, at or above 2^20)."""
    out = subprocess.run(["ps", "-e", "-o", "uid=,pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if int(line.split()[0]) >= 2**20]


def test_memory_bomb():
    result = run_python("blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))\n",
                        limits=Limits(wall_s=5, memory_mb=256))
    assert result.status == "memory_limit", result


def test_infinite_loop():
    result = run_python("while True:\n    pass\n", limits=Limits(wall_s=2, cpu_s=10))
    assert result.status == "exec_timeout" and result.seconds < 4, result


def test_sleep_past_the_timeout():
    result = run_python("import time\ntime.sleep(60)\n", limits=Limits(wall_s=1.5))
    assert result.status == "exec_timeout" and result.seconds < 3, result


def test_double_forked_daemon_does_not_survive():
    marker = str(31_000 + uuid.uuid4().int % 1000)
    program = f"""import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", "{marker}"])
    os._exit(0)
print("parent done")
"""
    result = run_python(program, limits=FAST)
    assert result.status == "ok" and result.stdout == "parent done\n", result
    assert survivors(f"sleep {marker}") == []


def test_files_outside_its_directory_never_appear(tmp_path):
    targets = [tmp_path / "escaped.txt", f"/tmp/cotdistill-escape-{uuid.uuid4().hex}", "/var/tmp/cotdistill-escape",
               "/dev/shm/cotdistill-escape"]
    program = "import sys\nfor path in sys.argv[1:] or %r:\n    try:\n        open(path, 'w').write('x')\n" \
              "        print('wrote', path)\n    except OSError as e:\n        print('refused', path, e.errno)\n" % (
                  [str(t) for t in targets],)
    result = run_python(program, limits=FAST)
    assert result.status == "ok", result
    for target in targets:
        assert not __import__("os").path.exists(target), f"{target} appeared on the host"


def test_planted_secret_appears_in_no_output(monkeypatch):
    secret = f"sk-planted-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    program = """import os, glob
print(dict(os.environ))
for path in glob.glob('/proc/*/environ'):
    try:
        print(path, open(path, 'rb').read())
    except OSError as e:
        print(path, e)
"""
    result = run_python(program, limits=FAST)
    assert result.status == "ok", result
    assert secret not in result.stdout and secret not in result.stderr
    assert "OPENAI_API_KEY" not in result.stdout


def test_no_connection_reaches_a_local_socket():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(1.0)
        port = server.getsockname()[1]
        program = f"""import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"hello")
    print("connected")
except OSError as e:
    print("refused", e)
"""
        result = run_python(program, limits=FAST)
        with pytest.raises(socket.timeout):
            server.accept()
    assert result.status == "ok" and "refused" in result.stdout, result


def test_printing_200_mb_is_an_output_limit():
    result = run_python("import sys\nblock = 'x' * (1 << 20)\nfor _ in range(200):\n    sys.stdout.write(block)\n",
                        limits=Limits(wall_s=10, output_bytes=1 << 20))
    assert result.status == "output_limit" and len(result.stdout) <= 1 << 20, result.status


def test_killing_its_parent_does_not_stop_the_run():
    result = run_python("import os, signal\nfor pid in (os.getppid(), 1):\n    try:\n"
                        "        os.kill(pid, signal.SIGKILL)\n    except OSError as e:\n        print(e)\n"
                        "print('still here')\n", limits=FAST)
    assert result.status == "ok" and result.stdout.endswith("still here\n"), result
    assert run_python("print(2 + 2)", limits=FAST).stdout == "4\n"  # the next program runs as ever


def test_os_system_runs_inside_the_same_limits(tmp_path):
    marker = str(32_000 + uuid.uuid4().int % 1000)
    target = tmp_path / "from-shell.txt"
    result = run_python(f"import os\nos.system('echo x > {target}; sleep {marker}')\n", limits=Limits(wall_s=2))
    assert result.status == "exec_timeout", result
    assert not target.exists()
    assert survivors(f"sleep {marker}") == []


# --- a remote executor: Piston's API, served here by a small service over the local sandbox -------------------


@pytest.fixture
def piston_service():
    """A Piston-compatible /api/v2/execute on 127.0.0.1, running each program in the local sandbox."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            limits = Limits(wall_s=body["run_timeout"] / 1000, cpu_s=max(1, body["run_cpu_time"] // 1000),
                            memory_mb=body["run_memory_limit"] >> 20)
            result = run_python(body["files"][0]["content"], body.get("stdin", ""), limits)
            status = {"exec_timeout": "TO", "output_limit": "OL"}.get(result.status,
                                                                      None if result.status == "ok" else "RE")
            out = {"language": "python", "version": "3", "run": {
                "stdout": result.stdout, "stderr": result.stderr, "output": result.stdout + result.stderr,
                "code": result.exit_code, "signal": None, "status": status}}
            data = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_piston_client_against_a_local_piston_service(piston_service):
    from cotdistill.verify.code import check_program, humaneval_tests, read_humaneval
    from cotdistill.verify.sandbox import PistonExecutor

    remote = PistonExecutor(piston_service)
    assert remote.run("print(input() * 2)", "ab\n", FAST).stdout == "abab\n"
    assert remote.run("while True: pass", "", Limits(wall_s=1.5)).status == "exec_timeout"
    assert remote.run("raise ValueError('x')", "", FAST).status == "runtime_error"
    problem = read_humaneval()[0]
    verdict = check_program(problem["prompt"] + problem["canonical_solution"], humaneval_tests(problem), remote)
    assert verdict.passed and verdict.tests_passed == verdict.tests_total > 1, verdict
    with pytest.raises(RuntimeError, match="code executor .* failed"):
        PistonExecutor("http://127.0.0.1:9").run("print(1)", "", FAST)
