"""Resuming training after a kill while a checkpoint was being written (a partial `checkpoint-N`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.core.shards import read_json
from cotdistill.stages import train
from cotdistill.trainers import checkpoints as training
from tests.conftest import tiny_config_dict, write_finished_filter

COMPLETE = {"model.safetensors": b"weights", "config.json": b"{}", "optimizer.pt": b"optimizer",
            "scheduler.pt": b"scheduler", "rng_state.pth": b"rng"}


def make_checkpoint(folder: Path, step: int) -> Path:
    """A folder laid out as Trainer._save_checkpoint leaves a complete one (contents are stand-ins)."""
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    for name, data in COMPLETE.items():
        (checkpoint / name).write_bytes(data)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return checkpoint


def no_trainer_state(c: Path) -> None:
    os.remove(c / "trainer_state.json")


def half_written_trainer_state(c: Path) -> None:
    text = (c / "trainer_state.json").read_text()
    (c / "trainer_state.json").write_text(text[: len(text) // 2])


def no_optimizer(c: Path) -> None:
    os.remove(c / "optimizer.pt")


def empty_weights(c: Path) -> None:
    (c / "model.safetensors").write_bytes(b"")


def state_of_another_step(c: Path) -> None:
    (c / "trainer_state.json").write_text(json.dumps({"global_step": 2}))


@pytest.mark.parametrize("damage", [no_trainer_state, half_written_trainer_state, no_optimizer, empty_weights,
                                    state_of_another_step])
def test_partial_newest_checkpoint_is_set_aside_and_the_complete_one_chosen(tmp_path, caplog, damage):
    from transformers.trainer_utils import get_last_checkpoint, sort_checkpoints

    out = tmp_path / "checkpoints"
    complete = make_checkpoint(out, 2)
    partial = make_checkpoint(out, 4)
    damage(partial)
    files_before = sorted(p.name for p in partial.iterdir())
    assert get_last_checkpoint(str(out)) == str(partial)  # what transformers alone would resume from

    with caplog.at_level(logging.INFO, logger="cotdistill.trainers.checkpoints"):
        chosen = training.resume_checkpoint(out)

    assert chosen == complete
    assert not partial.exists()
    (parked,) = (out / "partial").iterdir()
    assert parked.name.startswith("checkpoint-4.")
    assert sorted(p.name for p in parked.iterdir()) == files_before  # moved, not deleted
    # Neither resuming nor save_total_limit rotation sees it any more.
    assert get_last_checkpoint(str(out)) == str(complete)
    assert sort_checkpoints(str(out)) == [str(complete)]
    (record,) = [r for r in caplog.records if r.name == "cotdistill.trainers.checkpoints" and "checkpoint-4" in r.getMessage()]
    assert record.levelno == logging.WARNING and str(parked) in record.getMessage()
    assert sorted(p.name for p in complete.iterdir()) == sorted([*COMPLETE, "trainer_state.json"])


def test_complete_checkpoints_are_left_alone(tmp_path, caplog):
    out = tmp_path / "checkpoints"
    make_checkpoint(out, 2)
    newest = make_checkpoint(out, 4)
    with caplog.at_level(logging.INFO, logger="cotdistill.trainers.checkpoints"):
        assert training.resume_checkpoint(out) == newest
    assert not (out / "partial").exists() and (out / "checkpoint-2").is_dir()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_only_partial_checkpoints_means_a_fresh_start(tmp_path):
    out = tmp_path / "checkpoints"
    no_trainer_state(make_checkpoint(out, 2))
    assert training.resume_checkpoint(out) is None
    assert [p.name.split(".")[0] for p in (out / "partial").iterdir()] == ["checkpoint-2"]
    assert training.resume_checkpoint(tmp_path / "missing") is None


def test_a_second_partial_of_the_same_step_does_not_overwrite_the_first(tmp_path):
    out = tmp_path / "checkpoints"
    no_trainer_state(make_checkpoint(out, 2))
    training.resume_checkpoint(out)
    no_optimizer(make_checkpoint(out, 2))
    training.resume_checkpoint(out)
    assert len(list((out / "partial").iterdir())) == 2


def test_optimizer_not_required_when_only_the_model_is_saved(tmp_path):
    out = tmp_path / "checkpoints"
    c = make_checkpoint(out, 2)
    no_optimizer(c)
    os.remove(c / "scheduler.pt")
    assert training.checkpoint_problem(c, require_optimizer=False) is None
    assert "optimizer.pt" in training.checkpoint_problem(c)


@pytest.fixture
def accepted_corpus(tmp_path, tiny_model, gsm8k_rows):
    """A run whose accepted corpus is GSM8K's own worked answers (as tests/test_pipeline.py's `trained`)."""
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[:5]))
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path, tiny_model, questions)))
    config = load_config(config_path, ["run_name=tiny-resume"])
    write_finished_filter(config.run_dir, gsm8k_rows[200:208])
    return config


def kill_before_trainer_state(c: Path) -> None:
    """Killed just before the last file: everything but trainer_state.json."""
    os.remove(c / "trainer_state.json")


def kill_during_model_save(c: Path) -> None:
    """Killed while save_pretrained ran: config.json only; transformers says "Can't find a valid checkpoint"."""
    for p in c.iterdir():
        if p.name != "config.json":
            shutil.rmtree(p) if p.is_dir() else os.remove(p)


@pytest.mark.parametrize("kill", [kill_before_trainer_state, kill_during_model_save])
def test_rerun_after_a_kill_mid_checkpoint_resumes_from_the_complete_one(accepted_corpus, caplog, kill):
    config = accepted_corpus
    train_dir = config.run_dir / "train"
    checkpoints = train_dir / "checkpoints"

    fresh = train.STAGE.run(config)  # max_steps=3, save_steps=2: checkpoint-2, and checkpoint-3 at the end
    assert fresh["global_steps"] == 3 and fresh["steps_this_run"] == 3
    assert fresh["resumed_from_checkpoint"] is None and fresh["resumed_from_step"] == 0
    assert (checkpoints / "checkpoint-2").is_dir() and (checkpoints / "checkpoint-3").is_dir()

    # A kill while saving checkpoint-3, before the final model.
    shutil.rmtree(train_dir / "model")
    os.remove(train_dir / "stats.json")
    kill(checkpoints / "checkpoint-3")
    files_left = sorted(p.name for p in (checkpoints / "checkpoint-3").iterdir())

    with caplog.at_level(logging.INFO, logger="cotdistill.trainers.checkpoints"):
        stats = train.STAGE.run(config)

    assert stats["resumed_from_checkpoint"] == "checkpoint-2"
    assert stats["resumed_from_step"] == 2 and stats["steps_this_run"] == 1 and stats["global_steps"] == 3
    assert read_json(train_dir / "stats.json") == stats
    assert train.STAGE.is_complete(config)
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "cotdistill.trainers.checkpoints" and r.levelno == logging.WARNING]
    assert any("checkpoint-3 is a partial checkpoint" in m and "trainer_state.json" in m for m in warnings)
    (parked,) = (checkpoints / "partial").iterdir()
    assert parked.name.startswith("checkpoint-3.") and sorted(p.name for p in parked.iterdir()) == files_left
    assert "resuming from the last checkpoint" in caplog.text
    # The resumed run wrote a new, complete checkpoint-3.
    assert training.checkpoint_problem(checkpoints / "checkpoint-3") is None
