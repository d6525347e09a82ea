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
    assert not (tmp_path / "runs").exists()  # refused before any stage ran: nothing written


def test_version():
    from cotdistill import __version__

    result = cotdistill("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"cotdistill {__version__}"


def test_the_top_level_help_says_what_it_is_and_where_outputs_go():
    result = cotdistill("--help")
    assert result.returncode == 0
    assert "Offline chain-of-thought distillation" in result.stdout and "The `cotdistill` command" not in result.stdout
    assert "<output_dir>/<run_name>/" in result.stdout and "cotdistill run pipelines/demo.yaml" in result.stdout


def test_each_command_has_its_own_example_and_run_lists_every_stage():
    examples = set()
    for stage in STAGES:
        result = cotdistill(stage.name, "--help")
        assert f"cotdistill {stage.name} pipelines/demo.yaml {stage.example}" in result.stdout
        assert "<output_dir>/<run_name>/" in result.stdout
        examples.add(stage.example)
    assert len(examples) == len(STAGES)  # not one example for all
    result = cotdistill("run", "--help")
    assert all(stage.name in result.stdout for stage in STAGES) and "--part" in result.stdout


def test_a_misspelt_key_is_named_with_the_nearest_one(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("run_name: x\nteacher: {model: t}\nstudent: {model: s}\ndata: {path: q.jsonl}\n"
                    "generate: {temprature: 0.5}\n")
    result = cotdistill("generate", str(path), cwd=tmp_path)
    assert result.returncode == 2 and "did you mean 'generate.temperature'" in result.stderr
    assert "run.yaml: unknown key 'generate.temprature'" in result.stderr
    path.write_text("run_name: x\nteacher: {model: t}\nstudent: {model: s}\ndata: {path: q.jsonl}\n")
    result = cotdistill("generate", str(path), "generate.num_sample=3", cwd=tmp_path)  # the command line's mistake
    assert result.returncode == 2 and "override 'generate.num_sample=3' on the command line" in result.stderr
    assert "did you mean 'generate.num_samples'" in result.stderr
