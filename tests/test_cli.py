import subprocess
import sys

import pytest

from cotdistill.stages import STAGES


def cotdistill(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cotdistill", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("command", [*(s.name for s in STAGES), "run"])
def test_every_command_has_help(command):
    result = cotdistill(command, "--help")
    assert result.returncode == 0
    assert "key=value" in result.stdout and "config" in result.stdout


def test_bad_config_is_a_clear_error_not_a_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run_name: x\nteacher: {model: t}\nstudent: {model: s}\ndata: {path: q.jsonl}\nfilterr: {}\n")
    result = cotdistill("filter", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown key 'filterr'" in result.stderr and "bad.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_input_is_a_clear_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("run_name: x\nteacher: {model: t}\nstudent: {model: s}\ndata: {path: q.jsonl}\n")
    (tmp_path / "q.jsonl").write_text('{"question": "a"}\n')
    result = cotdistill("generate", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "q.jsonl: no field 'answer'" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "runs" / "x" / "config.yaml").exists()  # the resolved config is written beside outputs
