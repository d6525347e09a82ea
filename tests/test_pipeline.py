"""The stages on the real engines: vLLM generating with the tiny Llama, TRL training it, vLLM evaluating it."""

from __future__ import annotations

import json
import os
import shutil

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.core.prompts import PromptTemplate
from cotdistill.core.records import EVAL_SCHEMA, FILTERED_SCHEMA, SAMPLE_SCHEMA
from cotdistill.core.shards import list_shards, read_json, read_shards, write_parquet_atomic
from cotdistill.stages import evaluate
from cotdistill.stages import filter as filter_stage
from cotdistill.stages import generate
from cotdistill.stages import train
from cotdistill.stages.base import SettingsChanged
from cotdistill.stages.evaluate.report import format_table
from tests.conftest import tiny_config_dict, write_finished_filter

LONG_QUESTION = "How many apples are there? " + "The farmer counts apples in the orchard again. " * 60


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, parrot_model, gsm8k_rows):
    """generate on the parrot model (it answers 7 to everything): questions 1-3 have gold 7, so the filter has
    rationales to accept, and questions 4-5 keep their real gold, so it has wrong ones to reject."""
    tmp = tmp_path_factory.mktemp("pipeline")
    rows = [{"question": r["question"], "answer": "We count.\n#### 7"} for r in gsm8k_rows[:3]] + gsm8k_rows[3:5]
    rows.append({"question": LONG_QUESTION, "answer": "They count.\n#### 7"})
    questions = tmp / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test_questions = tmp / "test.jsonl"
    test_questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[100:103]))
    config_path = tmp / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config_dict(tmp, parrot_model, questions, test_questions)))
    config = load_config(config_path)
    stats = generate.STAGE.run(config)
    return config, config_path, stats


def test_generate_writes_n_rows_per_question(pipeline):
    config, _, stats = pipeline
    out = config.run_dir / "generate" / "samples"
    shards = list_shards(out)
    assert [s.name for s in shards] == ["00000.parquet", "00001.parquet", "00002.parquet"]
    table = pq.read_table(out)  # pyarrow reads the folder
    assert table.schema.equals(SAMPLE_SCHEMA)
    counts = {}
    for qid in table.column("question_id").to_pylist():
        counts[qid] = counts.get(qid, 0) + 1
    assert len(counts) == 5 and set(counts.values()) == {3}
    row = table.slice(0, 1).to_pylist()[0]
    assert row["prompt_text"].startswith("<|im_start|>system\n")
    assert row["prompt_messages"][-1]["role"] == "user"
    assert row["sampling"]["n"] == 3 and row["teacher"] == config.teacher.model
    assert row["finish_reason"] in ("stop", "length")
    assert 0 < row["completion_tokens"] <= 24

    loaded = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    assert len(loaded) == 15 and set(loaded["sample_index"]) == {0, 1, 2}

    assert stats["questions"] == 6 and stats["rationales"] == 15 and stats["num_skipped"] == 1
    assert stats["completion_tokens"] == sum(table.column("completion_tokens").to_pylist())
    assert stats["tokens_per_s"] > 0


def test_prompt_over_context_is_recorded_as_skipped(pipeline):
    config, _, _ = pipeline
    stats = read_json(config.run_dir / "generate" / "stats.json")
    (skipped,) = stats["skipped"]
    assert skipped["source_row"] == 6
    assert skipped["reason"].startswith("prompt_too_long:") and "max_model_len is 512" in skipped["reason"]


def test_rerun_regenerates_only_the_missing_shard(pipeline):
    config, _, _ = pipeline
    out = config.run_dir / "generate" / "samples"
    before = {p.name: p.stat().st_mtime_ns for p in list_shards(out)}
    ids_before = pq.read_table(out / "00001.parquet").column("question_id").to_pylist()
    os.remove(out / "00001.parquet")
    generate.STAGE.run(config)
    after = {p.name: p.stat().st_mtime_ns for p in list_shards(out)}
    assert set(after) == set(before)
    assert after["00000.parquet"] == before["00000.parquet"]
    assert after["00002.parquet"] == before["00002.parquet"]
    assert after["00001.parquet"] != before["00001.parquet"]
    assert pq.read_table(out / "00001.parquet").column("question_id").to_pylist() == ids_before
    assert read_json(out.parent / "stats.json")["rationales"] == 15


def test_a_run_killed_mid_shard_is_resumed_without_loss_or_duplicates(pipeline):
    config, _, _ = pipeline
    out = config.run_dir / "generate"
    # What a kill leaves behind: a half-written temporary file, and a meta whose shard was never renamed in.
    (out / "samples" / ".00002.parquet.tmp-99999").write_bytes(b"PAR1 half written")
    os.remove(out / "samples" / "00002.parquet")
    stats = generate.STAGE.run(config)
    assert not list((out / "samples").glob(".*tmp*"))
    assert stats["rationales"] == 15 and stats["questions"] == 6
    table = read_shards(out / "samples")
    keys = list(zip(table.column("question_id").to_pylist(), table.column("sample_index").to_pylist()))
    assert len(keys) == len(set(keys)) == 15


def test_rerun_of_a_finished_stage_starts_no_engine(pipeline, monkeypatch):
    config, _, _ = pipeline

    def no_engine(*args, **kwargs):
        raise AssertionError("a finished generate stage must not start vLLM")

    monkeypatch.setattr(generate, "build_teacher", no_engine)
    assert generate.STAGE.run(config)["rationales"] == 15
    assert generate.STAGE.is_complete(config)


def test_changed_settings_are_refused_on_rerun(pipeline):
    _, config_path, _ = pipeline
    changed = load_config(config_path, ["generate.num_samples=5", "generate.top_p=0.9"])
    with pytest.raises(SettingsChanged, match=r"changed: generate.num_samples, generate.top_p\); use a "
                       r"new run_name, or add --force"):
        generate.STAGE.run(changed)
    assert not generate.STAGE.is_complete(changed)  # so `cotdistill run` does not skip it either


def test_force_discards_shards_of_other_settings_and_generates_again(pipeline):
    config, config_path, _ = pipeline
    forced = load_config(config_path, ["run_name=tiny-forced", "generate.num_samples=2"])
    shutil.copytree(config.run_dir / "generate", forced.run_dir / "generate")
    with pytest.raises(SettingsChanged, match="changed: generate.num_samples"):
        generate.STAGE.run(forced)
    stats = generate.STAGE.run(forced, force=True)
    table = read_shards(forced.run_dir / "generate" / "samples")
    assert stats["rationales"] == len(table) == 10  # 5 questions x 2: none of the 3-sample shards kept
    assert {s["n"] for s in table.column("sampling").to_pylist()} == {2}
    assert generate.STAGE.is_complete(forced)
    assert not generate.STAGE.is_complete(load_config(config_path, ["run_name=tiny-forced"]))  # the old settings


def test_filter_on_real_generations_accounts_for_every_row(pipeline, tmp_path):
    config, _, _ = pipeline
    stats = filter_stage.STAGE.run(config)
    out = config.run_dir / "filter"
    accepted, rejected = read_shards(out / "accepted"), read_shards(out / "rejected")
    assert accepted.schema.equals(FILTERED_SCHEMA) and rejected.schema.equals(FILTERED_SCHEMA)
    assert len(accepted) + len(rejected) == 15 == stats["rationales"]
    # The parrot answers 7: only questions with gold 7 keep rationales, at least one each, the rest duplicates.
    assert len(accepted) >= 3 and set(accepted.column("extracted_answer").to_pylist()) == {"7"}
    assert set(accepted.column("gold_answer").to_pylist()) == {"7"} and all(accepted.column("is_correct").to_pylist())
    assert stats["rejected"]["wrong"] >= 6 and stats["rejected"]["duplicate"] >= 1
    reasons = rejected.column("filter_reason").to_pylist()
    assert all(r in filter_stage.REASONS for r in reasons)
    assert sum(stats["rejected"].values()) == len(rejected)
    truncated = [r for r in rejected.to_pylist() if r["finish_reason"] == "length"]
    assert all(r["filter_reason"] == "truncated" for r in truncated)
    assert sum(int(k) * v for k, v in stats["questions_by_accepted_count"].items()) == len(accepted)
    audit = (out / "audit.md").read_text()
    assert audit.startswith("# Filter audit") and "| truncated |" in audit
    for reason, count in stats["rejected"].items():
        if count:
            assert f"## {reason}" in audit
    card = (out / "accepted" / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and config.teacher.model in card
    loaded = datasets.load_dataset("parquet", data_dir=str(out / "rejected"), split="train")
    assert len(loaded) == len(rejected) and "filter_reason" in loaded.column_names
    if len(accepted):  # the card's front matter must point datasets at the shards
        assert len(datasets.load_dataset(str(out / "accepted"), split="train", cache_dir=str(tmp_path))) == len(accepted)


def test_filter_workers_give_the_same_verdicts_as_one_process(pipeline):
    config, config_path, _ = pipeline
    assert config.filter.num_workers == 2
    single = load_config(config_path, ["run_name=tiny-one-worker", "filter.num_workers=1"])
    shutil.copytree(config.run_dir / "generate", single.run_dir / "generate")
    filter_stage.STAGE.run(single)
    for sub in ("accepted", "rejected"):
        assert read_shards(single.run_dir / "filter" / sub).equals(read_shards(config.run_dir / "filter" / sub))
    assert len(read_shards(single.run_dir / "filter" / "accepted")) > 0  # not two empty tables


def test_a_changed_filter_setting_refilters_and_retrains(pipeline):
    config, config_path, _ = pipeline
    filter_stage.STAGE.run(config)
    assert filter_stage.STAGE.is_complete(config)
    meta = config.run_dir / "filter" / "meta" / "00000.json"
    before = meta.stat().st_mtime_ns
    assert filter_stage.STAGE.run(config) and meta.stat().st_mtime_ns == before  # unchanged: skipped

    changed = load_config(config_path, ["filter.drop_duplicates=false", "filter.near_duplicates=false"])
    assert not filter_stage.STAGE.is_complete(changed)
    stats = filter_stage.STAGE.run(changed)
    assert meta.stat().st_mtime_ns != before and stats["rejected"]["duplicate"] == 0
    card = (config.run_dir / "filter" / "accepted" / "README.md").read_text()
    assert "'drop_duplicates': False" in card  # the card and the verdicts describe the same settings
    assert filter_stage.STAGE.is_complete(changed) and not filter_stage.STAGE.is_complete(config)
    filter_stage.STAGE.run(config)  # back to the fixture's settings for the tests that follow


def test_filter_outputs_of_vanished_generate_shards_are_removed(pipeline):
    config, _, _ = pipeline
    accepted = config.run_dir / "filter" / "accepted"
    shutil.copy(accepted / "00000.parquet", accepted / "00099.parquet")  # a leftover of an earlier, larger run
    stats = filter_stage.STAGE.run(config)
    assert not (accepted / "00099.parquet").exists()
    assert stats["shards"] == 3 and set(stats["accepted_files"]) <= {"00000.parquet", "00001.parquet", "00002.parquet"}


def test_a_regenerated_shard_is_filtered_again(pipeline):
    config, _, _ = pipeline
    filter_stage.STAGE.run(config)
    meta = config.run_dir / "filter" / "meta" / "00001.json"
    before = read_json(meta)["fingerprint"]
    untouched = (config.run_dir / "filter" / "meta" / "00000.json").stat().st_mtime_ns
    # What a regenerated shard is (same settings, other random rationales): other bytes under the same name.
    shard = config.run_dir / "generate" / "samples" / "00001.parquet"
    original = pq.read_table(shard)
    rationales = original.column("rationale").to_pylist()
    rationales[0] = "Seven, by counting. The answer is 7."
    write_parquet_atomic(original.set_column(original.schema.get_field_index("rationale"), "rationale",
                                             pa.array(rationales, pa.string())), shard)
    try:
        assert not filter_stage.STAGE.is_complete(config)
        filter_stage.STAGE.run(config)
        assert read_json(meta)["fingerprint"] != before
        assert (config.run_dir / "filter" / "meta" / "00000.json").stat().st_mtime_ns == untouched
        assert "Seven, by counting. The answer is 7." in read_shards(config.run_dir / "filter" / "rejected").column(
            "rationale").to_pylist() + read_shards(config.run_dir / "filter" / "accepted").column("rationale").to_pylist()
    finally:
        write_parquet_atomic(original, shard)
        filter_stage.STAGE.run(config)


@pytest.fixture(scope="module")
def trained(pipeline, gsm8k_rows):
    """A run whose accepted corpus is GSM8K's own worked answers, so training has real rationales to learn."""
    config, config_path, _ = pipeline
    config = load_config(config_path, ["run_name=tiny-train"])
    write_finished_filter(config.run_dir, gsm8k_rows[200:208])
    return config


def test_dataset_card_lets_datasets_load_the_accepted_folder(trained, tmp_path):
    accepted = trained.run_dir / "filter" / "accepted"
    stats = {"accepted": 8, "rationales": 8, "questions": 8, "rejected": {r: 0 for r in filter_stage.REASONS}}
    (accepted / "README.md").write_text(filter_stage.dataset_card(trained, stats))
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


def trained_config_path(config):
    return config.run_dir.parent.parent / "tiny.yaml"


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


def test_evaluate_writes_every_output(trained, pipeline):
    teacher_generations = pipeline[0].run_dir / "generate" / "samples"
    config = load_config(pipeline[1], ["run_name=tiny-train", f"evaluate.stored={{stored_teacher: {teacher_generations}}}"])
    result = evaluate.STAGE.run(config)
    out = config.run_dir / "evaluate"
    metrics = read_json(out / "metrics.json")
    assert set(metrics["models"]) == {"teacher", "base_student", "student", "stored_teacher"}
    for name in ("teacher", "base_student", "student"):
        m = metrics["models"][name]
        assert m["questions"] == 3 and m["k"] == 3
        assert len(m["maj_at_k"]) == 3 and len(m["pass_at_k"]) == 3
        assert all(a <= b + 1e-9 for a, b in zip(m["pass_at_k"], m["pass_at_k"][1:]))  # pass@k grows with k
        assert m["maj_at_K_ci"][0] <= m["maj@3"] <= m["maj_at_K_ci"][1]
        assert 0.0 <= m["greedy_accuracy"] <= 1.0 and m["greedy_accuracy_ci"] is not None
        assert m["sampled_tokens"] > 0 and m["tokens_per_s"] > 0 and m["seconds_per_question"] > 0
        assert m["parameters"] > 100_000 and m["weights_mb"] > 0
        table = pq.read_table(out / f"{name}.parquet")
        assert table.schema.equals(EVAL_SCHEMA) and len(table) == 3
        assert all(len(s) == 3 for s in table.column("samples").to_pylist())
    assert 0.0 <= metrics["models"]["student"]["vs_teacher"]["agreement"] <= 1.0
    stored = metrics["models"]["stored_teacher"]
    assert stored["questions"] == 5 and stored["k"] == 3 and stored["greedy_accuracy"] is None
    report = (out / "report.md").read_text()
    assert "| student |" in report and "1/t" in report and "teacher's maj@3" in report
    for plot in ("accuracy_vs_k.png", "accuracy_vs_tokens.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "student" in format_table(result["models"]) and "maj@K" in format_table(result["models"])
    assert evaluate.STAGE.is_complete(config)


def test_a_retrained_student_is_evaluated_again_and_only_it(trained, pipeline):
    config = load_config(pipeline[1], ["run_name=tiny-train"])
    evaluate.STAGE.run(config)
    out = config.run_dir / "evaluate"
    before = {name: (out / f"{name}.cost.json").stat().st_mtime_ns for name in ("teacher", "base_student", "student")}
    retrain = load_config(pipeline[1], ["run_name=tiny-train", "train.sft.learning_rate=0.002"])
    assert not train.STAGE.is_complete(retrain)
    stats = train.STAGE.run(retrain)
    assert stats["resumed_from_step"] == 0  # checkpoints of the old settings were not resumed
    assert not evaluate.STAGE.is_complete(retrain)
    evaluate.STAGE.run(retrain)
    after = {name: (out / f"{name}.cost.json").stat().st_mtime_ns for name in before}
    assert after["teacher"] == before["teacher"] and after["base_student"] == before["base_student"]
    assert after["student"] != before["student"]
    assert evaluate.STAGE.is_complete(retrain)
