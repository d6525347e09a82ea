"""What a command leaves in the run folder is true: a refused command writes nothing (every check runs before the
first byte), a stage that runs records the configuration it ran with in its own folder and as the run's
config.yaml, and its log lines (the libraries' too) in logs/. On a copy of the finished run of
tests/fixtures/finished_run (no engine starts: every refusal comes before one would)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from cotdistill.cli import main
from cotdistill.core.shards import write_json_atomic
from tests.conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "finished_run"
PIPELINE = str((FIXTURE / "pipeline.yaml").relative_to(REPO))


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the fixture's data paths are relative to the repository
    shutil.copytree(FIXTURE / "finished", tmp_path / "runs" / "finished")
    return tmp_path / "runs"


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} \
        if folder.exists() else {}


def cotdistill(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as e:
        return e.code
    return 0


@pytest.mark.parametrize("prepare,command,phrase", [
    (None, ["generate", "generate.num_samples=2"], "changed: generate.num_samples"),
    ("generate/stats.json", ["filter"], "no finished generate output"),
    ("filter/stats.json", ["train"], "no finished filter output"),
    ("train/stats.json", ["evaluate"], "no finished train output"),
    ("plan", ["generate", "--part", "0/3"], "plans 2 parts"),
    ("plan", ["generate", "--part", "0/2", "generate.max_tokens=32"], "generate.max_tokens"),
    ("plan", ["generate"], "generate runs in 2 parts"),
])
def test_a_refused_command_leaves_the_run_folder_byte_for_byte(runs, caplog, prepare, command, phrase):
    run = runs / "finished"
    if prepare == "plan":  # a job array of 2 parts under way: part 0 started with generate.max_tokens=64
        (run / "generate" / "stats.json").unlink()
        write_json_atomic({"parts": 2, "shards": 2, "overrides": ["generate.max_tokens=64"]},
                          run / "generate" / "parts" / "plan.json")
    elif prepare:
        (run / prepare).unlink()
    before = snapshot(run)
    assert cotdistill(command[0], PIPELINE, f"output_dir={runs}", *command[1:]) == 2
    assert phrase in caplog.text, caplog.text
    assert snapshot(run) == before


def test_commands_refused_before_a_run_exists_create_no_folder(runs, caplog):
    new = runs / "new"
    assert cotdistill("dpo", PIPELINE, f"output_dir={runs}", "run_name=new") == 2
    assert "dpo is not set" in caplog.text
    assert cotdistill("filter", PIPELINE, f"output_dir={runs}", "run_name=new") == 2
    assert cotdistill("train", PIPELINE, f"output_dir={runs}", "run_name=new", "train.sft.max_stepz=3") == 2
    assert "unknown SFTConfig field 'max_stepz'" in caplog.text
    assert not new.exists()


def test_a_stage_that_runs_records_its_config_and_its_log(runs):
    run = runs / "finished"
    before = (run / "config.yaml").read_bytes() if (run / "config.yaml").exists() else None
    assert cotdistill("filter", PIPELINE, f"output_dir={runs}", "filter.num_workers=1") == 0  # judged again
    recorded = (run / "filter" / "config.yaml").read_text()
    assert recorded.startswith("# overrides: output_dir=") and "filter.num_workers=1" in recorded.splitlines()[0]
    assert yaml.safe_load(recorded)["filter"]["num_workers"] == 1
    assert (run / "config.yaml").read_text() == recorded != before
    assert not (run / "generate" / "config.yaml").exists()  # generate did not run: its folder is as it was
    log = (run / "logs" / "filter.log").read_text()
    assert "filter: starting" in log
    assert not [p for p in run.rglob("*") if p.is_dir() and not any(p.iterdir())]  # no empty folder left


def test_a_later_part_inherits_the_first_parts_overrides_and_refuses_other_values():
    from cotdistill.config.load import merge_overrides
    from cotdistill.core.fields import ConfigError

    recorded = ["generate.questions_per_shard=4", "run_name=x"]
    assert merge_overrides(recorded, ["run_name=x", "generate.seed_per_request=true"], "the first part") == [
        "generate.questions_per_shard=4", "run_name=x", "generate.seed_per_request=true"]
    assert merge_overrides(recorded, [], "the first part") == recorded
    with pytest.raises(ConfigError, match="generate.questions_per_shard: this command sets "
                                          "generate.questions_per_shard=5, and the first part ran with"):
        merge_overrides(recorded, ["generate.questions_per_shard=5"], "the first part")
