"""A crash loses only the requests in flight: every finished question is journaled at once, and a rerun sends
only what is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.core.shards import Journal, read_shards
from cotdistill.stages import generate
from tests.conftest import REPO, tiny_config_dict


def test_journal_keeps_whole_records_and_cuts_a_torn_line(tmp_path):
    journal = Journal(tmp_path / "j" / "00000.jsonl")
    for i in range(3):
        journal.append({"question_id": f"q{i}", "samples": [{"rationale": "é" * i}]})
    journal.close()
    with open(journal.path, "ab") as f:
        f.write(b'{"question_id": "q3", "samp')  # a kill in the middle of a write
    assert [r["question_id"] for r in Journal(journal.path).read()] == ["q0", "q1", "q2"]
    assert journal.path.read_bytes().endswith(b"\n")  # the torn tail is gone, so appends start clean
    again = Journal(journal.path)
    again.append({"question_id": "q3", "samples": []})
    again.close()
    assert [r["question_id"] for r in Journal(journal.path).read()] == ["q0", "q1", "q2", "q3"]


def test_group_commit_batches_fsyncs_but_every_record_reaches_the_os_at_once(tmp_path, monkeypatch):
    import cotdistill.core.shards as shards

    synced = []
    real_fsync = shards.os.fsync
    monkeypatch.setattr(shards.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    each = Journal(tmp_path / "each.jsonl", sync_interval_s=0.0)
    for i in range(5):
        each.append({"question_id": f"q{i}"})
    each.close()
    assert len(synced) - 1 == 5  # one per record (and the new file's folder)
    synced.clear()
    grouped = Journal(tmp_path / "grouped.jsonl", sync_interval_s=3600.0)
    for i in range(5):
        grouped.append({"question_id": f"q{i}"})
        # what a kill -9 now would leave: the record is with the OS already, fsynced or not
        assert [r["question_id"] for r in Journal(grouped.path).read()][-1] == f"q{i}"
    assert len(synced) == 1 + 1  # the folder and the first record: the interval has not come round again
    grouped.close()
    assert len(synced) == 3  # closing syncs what the interval held back
    grouped.remove()
    assert len(synced) == 3 and not grouped.path.exists()


class CountingTeacher:
    """A real teacher that also records which questions it was sent."""

    def __init__(self, inner):
        self.inner, self.name, self.sent = inner, inner.name, []

    def tokenizer(self):
        return self.inner.tokenizer()

    def max_model_len(self):
        return self.inner.max_model_len()

    def generate(self, requests):
        def counted():
            for request in requests:
                self.sent.append(request.key)
                yield request
        yield from self.inner.generate(counted())

    def close(self):
        self.inner.close()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, parrot_model, gsm8k_rows):
    tmp = tmp_path_factory.mktemp("journal")
    questions = tmp / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[:6]))
    data = tiny_config_dict(tmp, parrot_model, questions)
    data["generate"]["questions_per_shard"] = 4  # shards of 4 and 2 questions
    config_path = tmp / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(data))
    return tmp, config_path


def test_kill_9_mid_shard_resends_only_the_questions_not_journaled(local_run):
    from cotdistill.teachers.vllm_local import build

    tmp, config_path = local_run
    killed = subprocess.run([sys.executable, str(REPO / "tests" / "kill_at.py"), "journal-append", "3", "generate",
                             str(config_path)], capture_output=True, text=True, cwd=tmp, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    config = load_config(config_path)
    out = config.run_dir / "generate"
    records = Journal(out / "journal" / "00000.jsonl").read()
    journaled = [r["question_id"] for r in records]
    assert len(journaled) == 3 and not list((out / "samples").glob("*.parquet"))  # nothing compacted yet

    teacher = CountingTeacher(build(config.teacher, config.seed))
    try:
        stats = generate.STAGE.run(config, teacher=teacher)
    finally:
        teacher.close()
    assert len(teacher.sent) == 6 - 3 and not set(teacher.sent) & set(journaled)  # only what was missing
    table = read_shards(out / "samples")
    keys = list(zip(table.column("question_id").to_pylist(), table.column("sample_index").to_pylist()))
    assert len(keys) == len(set(keys)) == 6 * 3 == stats["rationales"]
    assert set(Counter(q for q, _ in keys).values()) == {3}
    assert not list((out / "journal").glob("*.jsonl"))  # compacted into the shards
    rows = table.to_pylist()
    for record in records:  # the journaled answers are kept as they were, not generated again
        kept = sorted((r for r in rows if r["question_id"] == record["question_id"]), key=lambda r: r["sample_index"])
        assert [r["rationale"] for r in kept] == [s["rationale"] for s in record["samples"]]


def test_dry_run_counts_requests_tokens_and_cost_and_sends_nothing(local_run, tmp_path, gsm8k_rows):
    from transformers import AutoTokenizer

    from cotdistill.core.prompts import PromptTemplate
    from cotdistill.teachers.base import render_prompt

    _, config_path = local_run
    config = load_config(config_path, [f"output_dir={tmp_path}"])
    tokenizer = AutoTokenizer.from_pretrained(config.teacher.model)
    template = PromptTemplate(config.generate.prompt)
    prompt_tokens = sum(len(render_prompt(tokenizer, template.render(question=r["question"].strip()))[1])
                        for r in gsm8k_rows[:6])
    plan = generate.dry_run(config)
    assert plan == {"questions": 6, "requests": 6, "prompt_tokens": prompt_tokens, "max_completion_tokens": 6 * 3 * 24}
    # The same teacher served at a price: the same requests, and what they may cost.
    overrides = [f"output_dir={tmp_path}", "teacher.backend=openai", f"teacher.openai.tokenizer={config.teacher.model}",
                 "teacher.openai.price_per_million_input=1.0", "teacher.openai.price_per_million_output=4.0"]
    priced = generate.dry_run(load_config(config_path, overrides))
    assert priced == {**plan, "max_estimated_cost": round((prompt_tokens * 1.0 + 6 * 3 * 24 * 4.0) / 1e6, 4)}
    # An API teacher asked for one sample a request: N requests a question, each billed for its prompt.
    split = generate.dry_run(load_config(config_path, overrides + ["teacher.openai.n_per_request=false"]))
    assert split["requests"] == 18 and split["prompt_tokens"] == 3 * prompt_tokens
    assert not (tmp_path / "tiny").exists()  # nothing written, no engine started

    result = subprocess.run([sys.executable, "-m", "cotdistill", "generate", str(config_path), "--dry-run", *overrides],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"questions 6, requests 6, prompt_tokens {prompt_tokens:,}" in result.stdout


def test_a_reasoning_teachers_reasoning_and_answer_are_joined_for_the_student(tmp_path):
    import pyarrow as pa

    from cotdistill.stages import train
    from cotdistill.core.prompts import PromptTemplate
    from cotdistill.core.records import FILTERED_SCHEMA, student_text
    from cotdistill.core.shards import write_parquet_atomic

    fmt = "<think>\n{reasoning}\n</think>\n\n{answer}"
    assert student_text(" The answer is 7. ", "  3 + 4 = 7 ", fmt) == "<think>\n3 + 4 = 7\n</think>\n\nThe answer is 7."
    assert student_text("The answer is 7.", None, fmt) == "The answer is 7."  # no separate reasoning: as is
    rows = [{name: None for name in FILTERED_SCHEMA.names} | {
        "question_id": f"q{i}", "sample_index": 0, "question": "What is 3 + 4?", "rationale": "The answer is 7.",
        "reasoning": reasoning, "prompt_messages": []} for i, reasoning in
        enumerate(["3 plus 4 makes 7.", None])]
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=FILTERED_SCHEMA), tmp_path / "00000.parquet")
    dataset = train.build_sft_dataset(tmp_path, PromptTemplate("student_question.jinja"), ["00000.parquet"], fmt)
    assert [r["completion"][0]["content"] for r in dataset] == [
        "<think>\n3 plus 4 makes 7.\n</think>\n\nThe answer is 7.", "The answer is 7."]
    assert dataset[0]["prompt"] == [{"role": "user", "content": "What is 3 + 4?"}]  # never the reasoning

