"""Job arrays without Ray: `cotdistill generate CONFIG --part i/K` as K independent processes (or Slurm array
tasks), each with its own local engine, sharing one run folder. Three parts run at once on the tiny model, one is
killed with SIGKILL and rerun, and the run gets exactly the (question_id, sample_index, rationale) set a single
process gets with per-request seeds; until every part is done, the filter refuses, naming the missing part, and
the part that finishes last completes the stage, so that the filter can follow it directly."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from cotdistill.cli import main
from cotdistill.config.load import load_config
from cotdistill.core.shards import read_json
from cotdistill.stages import generate
from tests.conftest import REPO, tiny_config_dict

pytestmark = [pytest.mark.engine]

NUM_QUESTIONS, PER_SHARD, PARTS = 12, 2, 3  # 6 shards: 2 a part


@pytest.fixture
def config_file(tmp_path, tiny_model, gsm8k_rows):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[:NUM_QUESTIONS]))
    data = tiny_config_dict(tmp_path, tiny_model, questions)
    data["generate"].update(num_samples=2, max_tokens=16, questions_per_shard=PER_SHARD, seed_per_request=True)
    path = tmp_path / "array.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(config_file, *args: str, kill_at_journal_append: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    head = ([str(REPO / "tests" / "kill_at.py"), "journal-append", str(kill_at_journal_append)]
            if kill_at_journal_append else ["-m", "cotdistill"])
    return subprocess.Popen([sys.executable, *head, *args[:1], str(config_file), *args[1:]], cwd=config_file.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def rationales(config) -> set[tuple[str, int, str]]:
    return {(r["question_id"], r["sample_index"], r["rationale"]) for shard in config.paths.samples.glob("*.parquet")
            for r in pq.read_table(shard, columns=["question_id", "sample_index", "rationale"]).to_pylist()}


def in_process(config_file, *args: str) -> int:
    """The CLI in this process (no interpreter start): its exit code."""
    try:
        main([args[0], str(config_file), *args[1:]])
    except SystemExit as e:
        return e.code
    return 0


def test_three_parts_at_once_one_killed_and_rerun_give_what_one_process_gives(config_file, caplog):
    single = load_config(config_file, ["run_name=single"])
    generate.STAGE.run(single)
    parts = load_config(config_file, ["run_name=parts"])

    running = [cli(config_file, "generate", "run_name=parts", "--part", f"{i}/{PARTS}",
                   kill_at_journal_append=1 if i == 1 else None) for i in range(PARTS)]
    results = [finish(p) for p in running]
    assert [code for code, _ in results] == [0, -9, 0], [out[-2000:] for _, out in results]
    assert parts.paths.missing_parts() == [1]
    assert not (parts.paths.generate / "stats.json").exists()  # not while a part is missing

    with caplog.at_level(logging.INFO, logger="cotdistill"):
        assert in_process(config_file, "filter", "run_name=parts") == 2  # refused at once, naming the part
        assert in_process(config_file, "run", "run_name=parts") == 2
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refusals) == 2 and all("1 of them are not done: 1/3" in m and "--part I/3" in m for m in refusals)

    code, out = finish(cli(config_file, "generate", "run_name=parts", "--part", f"1/{PARTS}"))  # the rerun
    assert code == 0, out[-2000:]
    assert "was the last one: the stage is complete" in out  # the last part to finish writes the stage's stats
    assert in_process(config_file, "filter", "run_name=parts") == 0  # no extra step before the next stage

    assert rationales(parts) == rationales(single) and len(rationales(single)) == NUM_QUESTIONS * 2
    combined = read_json(parts.paths.generate / "stats.json")
    per_part = [read_json(parts.paths.part_stats(i, PARTS)) for i in range(PARTS)]
    assert [p["shards"] for p in per_part] == [2, 2, 2]
    assert combined["questions"] == sum(p["questions"] for p in per_part) == NUM_QUESTIONS
    assert combined["rationales"] == NUM_QUESTIONS * 2 and combined["num_failed"] == 0


def test_parts_must_agree_on_k_and_inherit_the_first_parts_overrides(config_file, caplog):
    # 2 questions: 1 shard, which part 0 owns; part 1 has nothing to do (no engine starts) but writes the plan.
    assert in_process(config_file, "generate", "run_name=k", "--part", "1/2", "data.limit=2") == 0
    assert not any("starting vLLM" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.ERROR, logger="cotdistill"):
        assert in_process(config_file, "generate", "run_name=k", "--part", "1/3", "data.limit=2") == 2
        assert "run every part with the same K" in caplog.text
        assert in_process(config_file, "generate", "run_name=k", "--part", "0/2", "data.limit=3") == 2
        assert "data.limit: this command sets data.limit=3, and the first part" in caplog.text
    code, out = finish(cli(config_file, "generate", "run_name=k", "--part", "3/3"))
    assert code == 2 and "I must be at least 0 and less than K" in out
    # Part 0 with no override at all: it runs with the first part's data.limit=2 (else it would plan 6 shards),
    # and, the last to finish, completes the stage.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cotdistill"):
        assert in_process(config_file, "generate", "run_name=k", "--part", "0/2") == 0
    assert "running with the first part's overrides too" in caplog.text
    stats = read_json(load_config(config_file, ["run_name=k", "data.limit=2"]).paths.generate / "stats.json")
    assert stats["questions"] == 2
