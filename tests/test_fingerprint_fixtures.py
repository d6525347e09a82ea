"""Users' finished runs are not redone after an upgrade: tests/fixtures/finished_run/ holds a run whose
fingerprint.json files were written by the code before the stage contract (commit e079fc3; record.py there says
how). Today's code must compute the very same fingerprints, and `cotdistill run` must skip every stage of it."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from cotdistill.cli import STAGES, stage
from cotdistill.config import load_config
from cotdistill.fingerprints import read_fingerprint
from tests.conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "finished_run"
PIPELINE = FIXTURE / "pipeline.yaml"


def test_the_fixture_holds_every_stage():
    config = load_config(PIPELINE)
    assert [name for name in STAGES if (config.paths.stage(name) / "fingerprint.json").is_file()] == list(STAGES)


@pytest.mark.parametrize("name", STAGES)
def test_todays_code_computes_the_recorded_fingerprint(monkeypatch, name):
    monkeypatch.chdir(REPO)  # the fixture's data and output paths are relative to the repository
    config = load_config(PIPELINE.relative_to(REPO))
    recorded = read_fingerprint(config.paths.stage(name))
    computed = stage(name).fingerprint(config)
    assert computed["fingerprint"] == recorded["fingerprint"]
    assert computed["settings"] == recorded["settings"]
    assert stage(name).is_complete(config)


def test_cotdistill_run_skips_every_stage_of_a_finished_run(tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(FIXTURE / "finished", runs / "finished")
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
    result = subprocess.run([sys.executable, "-m", "cotdistill", "run", str(PIPELINE.relative_to(REPO)),
                             f"output_dir={runs}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in STAGES:
        assert f"{name}: up to date, skipping" in result.stderr, result.stderr
    assert "starting" not in result.stderr
    after = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file() and p.name != "config.yaml"}
    assert after == before  # nothing rewritten, nothing added (the resolved config.yaml aside)
