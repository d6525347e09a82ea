"""generate.logprobs' binary path: top-k arrays from vLLM's FlatLogprobs to numpy without a loop over tokens, into
the journal's binary side (checksummed frames: a torn one is cut like a torn line, and its question is sent
again), and from there into the Parquet columns without nested Python lists, equal to what the base64 JSON
journal wrote; a journal of that older form still compacts. On a stand-in teacher: no engine."""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.core.prompts import PromptTemplate
from cotdistill.core.records import SAMPLE_SCHEMA, LogprobColumns, Sample, encode_topk
from cotdistill.core.shards import FRAME_HEADER, Journal, read_shards, shard_name
from cotdistill.questions.sources import QuestionSource
from cotdistill.stages import generate
from cotdistill.stages.generate.compaction import journal_record
from cotdistill.teachers.base import Completion, Finished, Sampling, TeacherRequest
from tests.conftest import tiny_config_dict

K = 5
COLUMNS = ("completion_token_ids", "teacher_topk_ids", "teacher_topk_logprobs")


# --- the journal's binary side ----------------------------------------------------------------------------------


def arrays(i: int) -> list[np.ndarray]:
    return [np.arange(i * 7, dtype=np.int32), np.full((i, K), i, np.int32), np.full((i, K), -i / 3, np.float16)]


def write_journal(path, count: int = 3) -> Journal:
    journal = Journal(path)
    for i in range(count):
        journal.append({"question_id": f"q{i}"}, arrays(i + 1))
    journal.close()
    return journal


def frame_values(journal: Journal, record: dict) -> bytes:
    return bytes(journal.frame(record["arrays"]))


def test_records_name_whole_checksummed_frames_of_their_arrays(tmp_path):
    journal = write_journal(tmp_path / "00000.jsonl")
    assert journal.arrays_path.name == "00000.arrays"
    records = Journal(journal.path).read()
    assert [r["question_id"] for r in records] == ["q0", "q1", "q2"]
    for i, record in enumerate(records):
        assert frame_values(journal, record) == b"".join(a.tobytes() for a in arrays(i + 1))
        offset, size = record["arrays"]
        with open(journal.arrays_path, "rb") as f:
            f.seek(offset)
            magic, length, crc = FRAME_HEADER.unpack(f.read(FRAME_HEADER.size))
            assert (magic, FRAME_HEADER.size + length) == (b"CDA1", size) and zlib.crc32(f.read(length)) == crc
    assert records[-1]["arrays"][0] + records[-1]["arrays"][1] == journal.arrays_path.stat().st_size


def test_a_torn_frame_drops_its_record_and_every_later_one_and_appends_start_clean(tmp_path):
    journal = write_journal(tmp_path / "00000.jsonl")
    offset, size = Journal(journal.path).read()[2]["arrays"]
    with open(journal.arrays_path, "r+b") as f:
        f.truncate(offset + size // 2)  # a kill (or a power loss) in the middle of the last frame
    assert [r["question_id"] for r in Journal(journal.path).read()] == ["q0", "q1"]
    assert journal.path.read_bytes().count(b"\n") == 2 and journal.arrays_path.stat().st_size == offset
    again = Journal(journal.path)
    again.read()
    again.append({"question_id": "q2"}, arrays(3))
    again.close()
    records = Journal(journal.path).read()
    assert [r["question_id"] for r in records] == ["q0", "q1", "q2"]
    assert frame_values(journal, records[2]) == b"".join(a.tobytes() for a in arrays(3))


def test_a_frame_torn_inside_its_header_or_garbled_cuts_there(tmp_path):
    journal = write_journal(tmp_path / "a.jsonl")
    offset, _ = Journal(journal.path).read()[1]["arrays"]
    with open(journal.arrays_path, "r+b") as f:
        f.truncate(offset + 5)  # not even the frame's header is whole
    assert [r["question_id"] for r in Journal(journal.path).read()] == ["q0"]

    journal = write_journal(tmp_path / "b.jsonl")
    offset, size = Journal(journal.path).read()[1]["arrays"]
    data = bytearray(journal.arrays_path.read_bytes())
    data[offset + size - 1] ^= 0xFF  # one byte of the second frame's body changed: its checksum fails
    journal.arrays_path.write_bytes(bytes(data))
    assert [r["question_id"] for r in Journal(journal.path).read()] == ["q0"]  # the third, whole, follows it
    assert journal.arrays_path.stat().st_size == offset


def test_a_torn_line_after_its_whole_frame_drops_the_frame_too(tmp_path):
    journal = write_journal(tmp_path / "00000.jsonl")
    first_two = Journal(journal.path).read()[1]["arrays"]
    lines = journal.path.read_bytes().splitlines(keepends=True)
    journal.path.write_bytes(b"".join(lines[:2]) + lines[2][:9])  # the third frame is whole, its line torn
    assert [r["question_id"] for r in Journal(journal.path).read()] == ["q0", "q1"]
    assert journal.arrays_path.stat().st_size == sum(first_two)  # the files end together again
    journal.path.unlink()
    assert Journal(journal.path).read() == [] and not journal.arrays_path.exists()  # frames and no line at all


def test_a_read_only_reader_cuts_nothing_from_a_journal_being_written(tmp_path):
    """generate --dry-run reads a journal that a run may still be writing: a frame whose line is not written yet,
    or a half-written one, stays for the writer."""
    journal = write_journal(tmp_path / "00000.jsonl", count=2)
    writer = Journal(journal.path)
    writer.read()
    writer._append_frame([memoryview(a).cast("B") for a in arrays(3)])  # the frame, its line not written yet
    size = journal.arrays_path.stat().st_size
    with open(journal.arrays_path, "ab") as f:
        f.write(b"CDA1")  # and a frame begun
    lines = journal.path.read_bytes()
    assert [r["question_id"] for r in Journal(journal.path).read(repair=False)] == ["q0", "q1"]
    assert journal.arrays_path.stat().st_size == size + 4 and journal.path.read_bytes() == lines
    assert [r["question_id"] for r in Journal(journal.path).read()] == ["q0", "q1"]  # a rerun's read cuts both
    assert journal.arrays_path.stat().st_size < size
    writer.close()


def test_records_without_arrays_write_no_binary_side(tmp_path):
    journal = Journal(tmp_path / "00000.jsonl")
    journal.append({"question_id": "q0"})
    journal.close()
    assert Journal(journal.path).read() == [{"question_id": "q0"}] and not journal.arrays_path.exists()
    journal.remove()
    assert not journal.path.exists()


# --- FlatLogprobs -> arrays ---------------------------------------------------------------------------------------


def topk_arrays_by_loop(logprobs, k: int, start: int = 0):
    """The loop over every position and entry that topk_arrays replaced: the reference."""
    positions = range(start, len(logprobs.start_indices))
    ids = np.zeros((len(positions), k), dtype=np.int32)
    values = np.full((len(positions), k), -np.inf, dtype=np.float32)
    for row, p in enumerate(positions):
        for j in range(logprobs.start_indices[p], logprobs.end_indices[p]):
            rank = logprobs.ranks[j]
            if rank is not None and 1 <= rank <= k:
                ids[row, rank - 1], values[row, rank - 1] = logprobs.token_ids[j], logprobs.logprobs[j]
    return ids, values


def flat_logprobs(positions: int, k: int, seed: int = 0, prompt: bool = False):
    """A FlatLogprobs filled by vLLM's own code, as its engine fills it: per position the sampled token with its
    rank, then ranks 1..k (a prompt's starts with a position of None)."""
    from vllm.logprobs import append_logprobs_for_next_position, create_prompt_logprobs, create_sample_logprobs

    rng = np.random.default_rng(seed)
    flat = create_prompt_logprobs(True) if prompt else create_sample_logprobs(True)
    for _ in range(positions):
        top = rng.choice(50_000, k, replace=False)
        top_values = np.sort(rng.normal(-3, 2, k))[::-1]
        sampled_rank = int(rng.integers(1, 2 * k))  # within the top k or not
        sampled = int(top[sampled_rank - 1]) if sampled_rank <= k else int(rng.integers(50_000, 60_000))
        sampled_value = float(top_values[sampled_rank - 1]) if sampled_rank <= k else -30.0
        append_logprobs_for_next_position(flat, [sampled, *top.tolist()], [sampled_value, *top_values.tolist()],
                                          [None] * (k + 1), sampled_rank, k)
    return flat


@pytest.mark.parametrize("positions", [0, 1, 57])
def test_topk_arrays_equal_the_loop_over_tokens(positions):
    from cotdistill.teachers.vllm_local import topk_arrays

    flat = flat_logprobs(positions, K, seed=positions)
    ids, values = topk_arrays(flat, K)
    want_ids, want_values = topk_arrays_by_loop(flat, K)
    assert ids.dtype == np.int32 and values.dtype == np.float32 and ids.shape == (positions, K)
    assert np.array_equal(ids, want_ids) and np.array_equal(values, want_values)
    # the score step's use: a prompt's logprobs from a position on
    prompt = flat_logprobs(positions + 3, K, seed=1, prompt=True)
    for start in (1, 3):
        assert all(np.array_equal(a, b) for a, b in zip(topk_arrays(prompt, K, start),
                                                        topk_arrays_by_loop(prompt, K, start)))


def test_topk_arrays_of_an_uneven_layout_take_the_general_path():
    from vllm.logprobs import FlatLogprobs

    from cotdistill.teachers.vllm_local import topk_arrays

    flat = FlatLogprobs()  # ranks missing, out of order, None, beyond k
    flat.start_indices, flat.end_indices = [0, 3, 4], [3, 4, 8]
    flat.token_ids = [11, 12, 13, 21, 31, 32, 33, 34]
    flat.logprobs = [-1.0, -0.5, -2.0, -0.1, -3.0, -0.2, -9.0, -1.0]
    flat.ranks = [2, 1, 3, None, 4, 1, 9, 2]
    flat.decoded_tokens = [None] * 8
    for k in (2, 3):
        assert all(np.array_equal(a, b) for a, b in zip(topk_arrays(flat, k), topk_arrays_by_loop(flat, k)))


def test_logprob_columns_equal_nested_lists_with_nulls_and_empty_rows():
    rows = [(np.array([5, 6], np.int32), np.array([[1, 2], [3, 4]], np.int32),
             np.array([[-0.1, -2.5], [-0.333, -np.inf]], np.float16)), None,
            (np.zeros(0, np.int32), np.zeros((0, 2), np.int32), np.zeros((0, 2), np.float16))]
    columns = LogprobColumns()
    for row in rows:
        columns.add(*row) if row is not None else columns.add_none()
    schema = pa.schema([SAMPLE_SCHEMA.field(name) for name in COLUMNS])
    nested = pa.Table.from_pylist(
        [dict(zip(COLUMNS, (r[0].tolist(), r[1].tolist(), r[2].astype(np.float32).tolist()))) if r else {}
         for r in rows], schema=schema)
    assert pa.table(columns.columns(), schema=schema).equals(nested)


# --- the stage, on a stand-in teacher -----------------------------------------------------------------------------


class Stop(RuntimeError):
    """The stand-in teacher's way to stop a run in the middle (a kill, as far as the journal can tell)."""


def made_up_completion(key: str, index: int, k: int) -> Completion:
    """A completion as the local engine returns it, the same every time for (question, sample): token ids
    (int32) and top-k ids and logprobs (float32), ranks in order, -inf where vLLM had fewer than k."""
    seed = zlib.crc32(f"{key}/{index}".encode())
    rng = np.random.default_rng(seed)
    length = 0 if index == 2 else int(rng.integers(1, 9))  # every question's third completion is empty
    ids = rng.integers(0, 50_000, (length, k), dtype=np.int32)
    values = -np.sort(rng.exponential(3.0, (length, k)).astype(np.float32), axis=1)
    if length:
        values[0, -1] = -np.inf
        values[-1, 0] = -1.2345678  # not a float16: stored rounded
    return Completion(text=f"We count. The answer is {seed % 10}.", finish_reason="stop", completion_tokens=length,
                      token_ids=ids[:, 0].copy(), topk_ids=ids, topk_logprobs=values)


class ArrayTeacher:
    """Answers every request at once with made_up_completion; records what it was sent; with `stop_after`, stops
    the run after that many answers."""

    name = "array-teacher"

    def __init__(self, stop_after: int | None = None):
        self.sent: list[str] = []
        self.stop_after = stop_after

    def tokenizer(self):
        return None

    def max_model_len(self):
        return None

    def generate(self, requests):
        for request in requests:
            if self.stop_after is not None and len(self.sent) == self.stop_after:
                raise Stop("stopped")
            self.sent.append(request.key)
            yield Finished(key=request.key, prompt_tokens=9, completions=[
                made_up_completion(request.key, request.first_sample + i, request.sampling.logprobs)
                for i in range(request.sampling.n)])

    def close(self):
        pass


@pytest.fixture
def logprob_config(tmp_path, tiny_model, gsm8k_rows):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[:5]))
    data = tiny_config_dict(tmp_path, tiny_model, questions)
    data["generate"].update(logprobs=K, questions_per_shard=5, num_samples=3)
    path = tmp_path / "logprobs.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def logprob_table(config) -> pa.Table:
    table = read_shards(config.paths.samples)
    order = sorted(range(table.num_rows), key=lambda i: (table["question_id"][i].as_py(),
                                                         table["sample_index"][i].as_py()))
    return table.take(order)


def old_path_columns(table: pa.Table) -> pa.Table:
    """What the base64 JSON journal wrote for these rows: each completion's arrays as the teacher returned them,
    through encode_topk, nested lists and pa.Table.from_pylist."""
    rows = []
    for qid, index in zip(table["question_id"].to_pylist(), table["sample_index"].to_pylist()):
        c = made_up_completion(qid, index, K)
        encoded = encode_topk(c.topk_ids, c.topk_logprobs)
        import base64  # the old decode_topk: float16 back to float32, into lists

        shape = tuple(encoded["shape"])
        ids = np.frombuffer(base64.b64decode(encoded["ids"]), np.int32).reshape(shape)
        values = np.frombuffer(base64.b64decode(encoded["logprobs"]), np.float16).reshape(shape)
        rows.append({"completion_token_ids": list(c.token_ids.tolist()), "teacher_topk_ids": ids.tolist(),
                     "teacher_topk_logprobs": values.astype(np.float32).tolist()})
    return pa.Table.from_pylist(rows, schema=pa.schema([SAMPLE_SCHEMA.field(name) for name in COLUMNS]))


def test_binary_path_writes_the_columns_the_json_journal_wrote(logprob_config):
    config = load_config(logprob_config)
    teacher = ArrayTeacher()
    stats = generate.STAGE.run(config, teacher=teacher)
    assert stats["rationales"] == 15 and len(teacher.sent) == 5 and stats["logprobs_k"] == K
    assert pq.read_schema(config.paths.samples / shard_name(0)).equals(SAMPLE_SCHEMA)
    table = logprob_table(config)
    assert table.select(COLUMNS).equals(old_path_columns(table))  # ids exact, logprobs as float16 stored
    assert set(table["logprobs_context"].to_pylist()) == {"teacher"}
    assert any(len(ids) == 0 for ids in table["completion_token_ids"].to_pylist())  # empty, not null
    assert not config.paths.journals.exists()  # compacted: the journal and its binary side are gone


def test_a_torn_binary_tail_is_dropped_and_the_rerun_sends_only_those_questions(logprob_config, tmp_path):
    config = load_config(logprob_config)
    with pytest.raises(Stop):
        generate.STAGE.run(config, teacher=ArrayTeacher(stop_after=3))
    ids = [q.question_id for q in QuestionSource(config.data).questions(0, 5)]
    journal = Journal(config.paths.journals / shard_name(0, ".jsonl"))
    records = journal.read()
    assert [r["question_id"] for r in records] == ids[:3]
    offset, size = records[2]["arrays"]
    assert journal.arrays_path.stat().st_size == offset + size
    with open(journal.arrays_path, "r+b") as f:
        f.truncate(offset + size - 100)  # the third question's frame torn

    rerun = ArrayTeacher()
    generate.STAGE.run(config, teacher=rerun)
    assert rerun.sent == ids[2:]  # the torn one and those never answered; the first two kept
    table = logprob_table(config)
    assert table.num_rows == 15 and table.select(COLUMNS).equals(old_path_columns(table))

    whole = load_config(logprob_config, ["run_name=whole"])
    generate.STAGE.run(whole, teacher=ArrayTeacher())
    assert logprob_table(whole).drop_columns(["run_id"]).equals(table.drop_columns(["run_id"]))


def old_journal_record(config, question, done: Finished) -> dict:
    """A journal record exactly as generate wrote it before the binary side: rows of asdict(Sample), the token ids
    as a JSON list and the top-k arrays base64-encoded in teacher_topk_ids."""
    gen = config.generate
    messages = PromptTemplate(gen.prompt, gen.examples).render(question=question.question, choices=question.choices)
    sampling = {"n": gen.num_samples, "temperature": gen.temperature, "top_p": gen.top_p, "top_k": gen.top_k,
                "max_tokens": gen.max_tokens, "stop": list(gen.stop)}
    rows = []
    for i, c in enumerate(done.completions):
        row = asdict(Sample(
            question_id=question.question_id, sample_index=i, question=question.question,
            gold_answer=question.gold_answer, choices=question.choices, prompt_messages=messages, prompt_text="",
            rationale=c.text, finish_reason=c.finish_reason, prompt_tokens=done.prompt_tokens,
            completion_tokens=c.completion_tokens, teacher=config.teacher.model, sampling=sampling, seed=config.seed,
            run_id=config.run_name))
        row.update(completion_token_ids=c.token_ids.tolist(), logprobs_context="teacher",
                   teacher_topk_ids=encode_topk(c.topk_ids, c.topk_logprobs), teacher_topk_logprobs=None)
        rows.append(row)
    return journal_record(question, round=1, rationalize=False, samples=rows, prompt_tokens=done.prompt_tokens)


def test_a_base64_json_journal_still_compacts_beside_new_records(logprob_config):
    """A run resumed across the upgrade: its journal holds two questions in the older form; the rerun sends only
    the three others, journals them in frames, and the shard equals a run made entirely on the new path."""
    config = load_config(logprob_config)
    with pytest.raises(Stop):  # a run of the older version, stopped: its folder and fingerprint
        generate.STAGE.run(config, teacher=ArrayTeacher(stop_after=0))
    questions = list(QuestionSource(config.data).questions(0, 5))
    journal = Journal(config.paths.journals / shard_name(0, ".jsonl"))
    for q in questions[:2]:
        request = TeacherRequest(key=q.question_id, messages=[], prompt_text="", prompt_token_ids=None,
                                 sampling=Sampling(n=3, logprobs=K))
        journal.append(old_journal_record(config, q, next(ArrayTeacher().generate([request]))))
    journal.close()
    assert not journal.arrays_path.exists() and "teacher_topk_ids\": {\"shape\"" in journal.path.read_text()

    teacher = ArrayTeacher()
    generate.STAGE.run(config, teacher=teacher)
    assert teacher.sent == [q.question_id for q in questions[2:]]
    table = logprob_table(config)
    assert table.num_rows == 15 and table.select(COLUMNS).equals(old_path_columns(table))
    whole = load_config(logprob_config, ["run_name=whole"])
    generate.STAGE.run(whole, teacher=ArrayTeacher())
    assert logprob_table(whole).drop_columns(["run_id"]).equals(table.drop_columns(["run_id"]))
