"""generate on the real engine (vLLM with the tiny parrot Llama): N rows a question, prompts over the context
recorded, reruns that regenerate only what is missing, kills mid-shard, changed settings refused or forced."""

from __future__ import annotations

import os
import shutil

import datasets
import pyarrow.parquet as pq
import pytest

from cotdistill.config.load import load_config
from cotdistill.core.records import SAMPLE_SCHEMA
from cotdistill.core.shards import list_shards, read_json, read_shards
from cotdistill.stages import generate
from cotdistill.stages.base import SettingsChanged


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


