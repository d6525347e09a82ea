"""Users' finished runs are not redone after an upgrade, unless what they depend on changed: tests/fixtures/
finished_run/ holds a run whose fingerprint.json files were written by the code before the stage contract (commit
e079fc3; record.py there says how). Today's code computes the very same fingerprints, except one change made on
purpose: the answer formats now read the answer after the reasoning (answers.ANSWER_RULES), so the filter judges
finished corpora again and evaluate scores its models again; nothing else of theirs changed."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from cotdistill.config.load import load_config
from cotdistill.core.fingerprints import read_fingerprint
from cotdistill.stages import evaluate
from cotdistill.stages import filter as filter_stage
from cotdistill.stages import BY_NAME, STAGES
from tests.conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "finished_run"
PIPELINE = FIXTURE / "pipeline.yaml"
UNCHANGED = ("generate", "prune", "score", "train")  # the answer rules touch none of these
LATER = ("dpo", "onpolicy")  # stages added since the fixture was recorded: a run has them only when its config asks


def test_the_fixture_holds_every_stage():
    config = load_config(PIPELINE)
    names = [s.name for s in STAGES]
    recorded = [name for name in names if (config.paths.stage(name) / "fingerprint.json").is_file()]
    assert recorded == [name for name in names if name not in LATER]
    assert not any(BY_NAME[name].wanted(config) for name in LATER)


@pytest.fixture
def config(monkeypatch):
    monkeypatch.chdir(REPO)  # the fixture's data and output paths are relative to the repository
    return load_config(PIPELINE.relative_to(REPO))


@pytest.mark.parametrize("name", UNCHANGED)
def test_todays_code_computes_the_recorded_fingerprint(config, name):
    recorded = read_fingerprint(config.paths.stage(name))
    computed = BY_NAME[name].fingerprint(config)
    assert computed["fingerprint"] == recorded["fingerprint"]
    assert computed["settings"] == recorded["settings"]
    assert BY_NAME[name].is_complete(config)


def test_the_filter_fingerprint_changed_by_the_answer_rules_alone(config, monkeypatch):
    recorded = read_fingerprint(config.paths.filter)
    computed = BY_NAME["filter"].fingerprint(config)
    assert computed["fingerprint"] != recorded["fingerprint"] and not BY_NAME["filter"].is_complete(config)
    assert computed["settings"]["answer_rules"] == 2
    monkeypatch.setattr(filter_stage, "answer_rules", lambda config: {})  # as the code before the rules had it
    assert BY_NAME["filter"].fingerprint(config) == recorded


def test_the_evaluate_fingerprint_changed_by_the_answer_rules_alone(config, monkeypatch):
    recorded = read_fingerprint(config.paths.evaluate)
    assert BY_NAME["evaluate"].fingerprint(config) != recorded
    # Each model's key as the code before the rules wrote it: the answer format's name alone.
    monkeypatch.setattr(evaluate, "answer_settings", lambda name, delimiters: {"answer_format": name})
    assert BY_NAME["evaluate"].fingerprint(config) == recorded


@pytest.mark.slow
def test_cotdistill_skips_the_stages_whose_fingerprint_held_and_judges_the_corpus_again(tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(FIXTURE / "finished", runs / "finished")
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}

    def cotdistill(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cotdistill", command, str(PIPELINE.relative_to(REPO)),
                               f"output_dir={runs}"], cwd=REPO, capture_output=True, text=True, timeout=300)

    for name in UNCHANGED:
        result = cotdistill(name)
        assert result.returncode == 0, result.stderr
        assert f"{name}: up to date, skipping" in result.stderr and "starting" not in result.stderr
    after = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file() and p.name != "config.yaml"}
    assert after == before  # nothing rewritten, nothing added (the resolved config.yaml aside)

    result = cotdistill("filter")  # the corpus is judged again, saying why
    assert result.returncode == 0, result.stderr
    assert "filter: settings or inputs changed (answer_rules, inputs.00000.parquet" in result.stderr
    assert BY_NAME["filter"].is_complete(load_config(PIPELINE, [f"output_dir={runs}"]))
