"""train on the real trainer (TRL's SFTTrainer, the tiny Llama): the corpus as prompt/completion pairs with the loss
on the completion only, the model and its card saved, checkpoints resumed, and a partial checkpoint (a kill while
one was being written) set aside."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.core.prompts import PromptTemplate
from cotdistill.core.records import FILTERED_SCHEMA
from cotdistill.core.shards import read_json
from cotdistill.stages import filter as filter_stage
from cotdistill.stages import train
from cotdistill.stages.filter.audit import dataset_card
from cotdistill.stages.filter.phases import REASONS
from cotdistill.trainers import checkpoints as training
from tests.conftest import tiny_config_dict, trained_config_path, write_finished_filter

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
    """A run whose accepted corpus is GSM8K's own worked answers (as tests/conftest.py's `trained`)."""
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


@pytest.mark.slow  # two real trainings, each killed and rerun: about 25 s apiece
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


# --- the stage on the session's run (tests/conftest.py `trained`) ---


def test_dataset_card_lets_datasets_load_the_accepted_folder(trained, tmp_path):
    accepted = trained.run_dir / "filter" / "accepted"
    stats = {"accepted": 8, "rationales": 8, "questions": 8, "rejected": {r: 0 for r in REASONS}}
    (accepted / "README.md").write_text(dataset_card(trained, stats))
    # A cache of its own: datasets 5.2 caches a folder loaded by path under the folder's name ("accepted"), so
    # two runs' accepted folders would share one cache entry (the card points users to the data_dir= form).
    loaded = datasets.load_dataset(str(accepted), split="train", cache_dir=str(tmp_path))
    assert len(loaded) == 8 and loaded.column_names == FILTERED_SCHEMA.names
    card = (accepted / "README.md").read_text()
    assert "configs:" in card and 'path: "*.parquet"' in card and "Sampling: n=3" in card


def test_train_labels_mask_every_prompt_token(trained):
    raw = train.build_sft_dataset(trained.run_dir / "filter" / "accepted", PromptTemplate(trained.train.prompt))
    trainer = train.build_trainer(trained, raw)
    tokenizer = trainer.processing_class
    for i in range(3):
        prompt_text = tokenizer.apply_chat_template(raw[i]["prompt"], tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        row = trainer.train_dataset[i]
        labels = trainer.data_collator([row])["labels"][0].tolist()
        assert row["input_ids"][: len(prompt_ids)] == prompt_ids
        assert all(label == -100 for label in labels[: len(prompt_ids)])
        completion = labels[len(prompt_ids):]
        assert completion and all(label != -100 for label in completion)
        assert completion == row["input_ids"][len(prompt_ids):]
    # The student sees the bare question, not the teacher's instructions.
    assert "step by step" not in raw[0]["prompt"][0]["content"]


def test_filter_counts_student_tokens_as_training_does(trained):
    # too_long must use the length TRL will see: the same tokens, and TRL's own max_length when none is set.
    raw = train.build_sft_dataset(trained.run_dir / "filter" / "accepted", PromptTemplate(trained.train.prompt))
    trainer = train.build_trainer(trained, raw)
    count, _ = filter_stage.student_token_counters(trained)
    rows = pq.read_table(trained.run_dir / "filter" / "accepted" / "00000.parquet").to_pylist()
    counted = count([r["question"] for r in rows], [r["rationale"] for r in rows], [r["choices"] for r in rows])
    assert counted == [len(trainer.train_dataset[i]["input_ids"]) for i in range(len(rows))]
    assert filter_stage.student_max_tokens(trained) == 512  # train.sft.max_length of the fixture
    unset = load_config(trained_config_path(trained), ["train.sft={max_steps: 3}"])
    assert filter_stage.student_max_tokens(unset) == 1024  # TRL's SFTConfig default, applied when unset
    stricter = load_config(trained_config_path(trained), ["filter.max_student_tokens=100"])
    assert filter_stage.student_max_tokens(stricter) == 100


def test_train_runs_and_saves_model_and_card(trained):
    stats = train.STAGE.run(trained)
    model_dir = trained.run_dir / "train" / "model"
    assert stats["global_steps"] == 3 and stats["examples"] == 8
    assert (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").exists()
    card = (model_dir / "README.md").read_text()
    assert "8 accepted rationales" in card and str(trained.run_dir / "filter" / "accepted") in card
    assert train.STAGE.is_complete(trained)


def test_train_resumes_from_its_last_checkpoint(trained, caplog):
    # A kill after the checkpoint at step 2 but before the final model: rerun resumes instead of starting over.
    shutil.rmtree(trained.run_dir / "train" / "model")
    os.remove(trained.run_dir / "train" / "stats.json")
    checkpoints = trained.run_dir / "train" / "checkpoints"
    assert (checkpoints / "checkpoint-2").is_dir()
    for later in checkpoints.glob("checkpoint-*"):
        if later.name != "checkpoint-2":
            shutil.rmtree(later)
    with caplog.at_level("INFO", logger="cotdistill.trainers.checkpoints"):
        stats = train.STAGE.run(trained)
    assert "resuming from the last checkpoint" in caplog.text
    assert stats["global_steps"] == 3 and (trained.run_dir / "train" / "model" / "config.json").exists()
    # Resumed, not restarted: one step ran in this invocation, from step 2.
    assert stats["resumed_from_step"] == 2 and stats["steps_this_run"] == 1


def test_target_label_trains_on_gold_answers_alone(pipeline):
    """train.target label: one example per question of the generate shards, its completion the gold answer as
    label_format writes it; no teacher text. Its fingerprint differs from the rationale student's."""
    config, config_path, _ = pipeline
    labels = load_config(config_path, ["run_name=tiny-labels", "train.target=label",
                                       "train.label_format=Result {answer}."])
    shutil.copytree(config.run_dir / "generate", labels.run_dir / "generate")
    filter_stage.STAGE.run(labels)
    dataset = train.build_label_dataset(labels.paths.samples, PromptTemplate(labels.train.prompt),
                                        labels.train.label_format)
    questions = {r["question_id"]: r for r in pq.read_table(labels.paths.samples).to_pylist()}
    assert len(dataset) == len({q for q, r in questions.items() if r["gold_answer"] is not None})
    golds = {r["gold_answer"] for r in questions.values()}
    assert {row["completion"][0]["content"] for row in dataset} == {f"Result {g}." for g in golds}
    stats = train.STAGE.run(labels)
    assert stats["target"] == "label" and stats["examples"] == len(dataset)
    assert train.fingerprint(labels) != train.fingerprint(load_config(config_path, ["run_name=tiny-labels"]))
