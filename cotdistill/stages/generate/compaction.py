"""From the teacher's answers to the shard on disk: a request in flight (Pending), the journal record of its
answer, and a complete shard's journal compacted into its meta and Parquet file (the shard's completion marker).

    shard.record(*pending.answered(done, config, seconds))    # requests.RequestLoop, as each answer comes back
    compact(shard, config.paths, writer)                       # once every question of the shard is in

With generate.logprobs the top-k arrays never become Python lists or JSON: the teacher returns numpy arrays, the
journal record's rows say only each one's shape (`topk_shape`: [tokens, k]), and the arrays go as one frame to
the journal's binary side (core/shards.py Journal): the record's token ids (int32, all its rows'), then its top-k
ids (int32), then its top-k logprobs (float16, as stored), each row after the other. compact() builds the Parquet
columns from those buffers (core/records.py LogprobColumns). Rows journaled before the binary side existed hold
the arrays base64-encoded in the line itself (`teacher_topk_ids: {shape, ids, logprobs}`), and are read as well.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa

from cotdistill.config.run import RunConfig
from cotdistill.core.paths import RunPaths
from cotdistill.core.records import SAMPLE_SCHEMA, LogprobColumns, Question, Sample, decode_topk, parquet_options
from cotdistill.core.shards import shard_name, write_json_atomic, write_parquet_atomic
from cotdistill.stages.generate.progress import Shard, record_key
from cotdistill.teachers.base import Finished
from cotdistill.verify.judging import question_reaching_gold

logger = logging.getLogger(__name__)


def journal_record(q: Question, *, round: int | None, rationalize: bool, samples: list[dict[str, Any]] = (),
                   prompt_tokens: int = 0, seconds: float = 0.0, retries: int = 0, skipped: str | None = None,
                   error: str | None = None, missing: int = 0, cached: bool = False) -> dict[str, Any]:
    """One line of a shard's journal: a request's answer (its Sample rows) or why it was never sent. `round` is
    the ordinary request's round (1, 2, ...; 1 with fixed N), None for the question's rationalization;
    `missing`, the samples asked for that the teacher never returned; `cached`, answered by the request cache."""
    record = {"question_id": q.question_id, "source_row": q.source_row, "samples": list(samples),
              "prompt_tokens": prompt_tokens, "seconds": seconds, "retries": retries, "skipped": skipped,
              "error": error, "missing": missing, "round": round, "rationalize": rationalize}
    if cached:
        record["cached"] = True
    return record


@dataclass
class Pending:
    """A request in flight, and what its answer's rows and journal record need."""

    shard: Shard
    question: Question
    round: int | None  # the ordinary request's round; None for a rationalization (STaR's hint request)
    rationalize: bool
    messages: list[dict[str, str]]  # the question's ordinary prompt: what the rows keep, also for a rationalization
    prompt_text: str
    seed: int
    start: int  # the sample_index of its first sample (rounds go on where the last one stopped)
    hint_prompt_text: str | None  # the prompt a rationalization really sent, kept for audit

    def answered(self, done: Finished, config: RunConfig,
                 seconds: float) -> tuple[dict[str, Any], list[np.ndarray] | None]:
        """The answer's journal record, and the buffers of its top-k arrays (None without logprobs)."""
        rows, buffers = self.sample_rows(done, config)
        record = journal_record(self.question, round=self.round, rationalize=self.rationalize, samples=rows,
                                prompt_tokens=done.prompt_tokens, seconds=seconds, retries=done.retries,
                                error=done.error, missing=done.missing, cached=done.cached)
        return record, buffers

    def sample_rows(self, done: Finished, config: RunConfig) -> tuple[list[dict[str, Any]], list[np.ndarray] | None]:
        """The teacher's answer as Sample records (dicts, as journaled), and with logprobs the buffers of the
        journal frame: every row's token ids, then every row's top-k ids, then every row's top-k logprobs
        (float16). A row holds its round only under generate.adaptive, and whether it was rationalized only under
        generate.rationalize (null otherwise)."""
        gen, q = config.generate, self.question
        sampling = {"n": gen.rationalize_samples if self.rationalize else gen.num_samples,
                    "temperature": gen.temperature, "top_p": gen.top_p, "top_k": gen.top_k,
                    "max_tokens": gen.max_tokens, "stop": list(gen.stop)}
        rows: list[dict[str, Any]] = []
        tokens: list[np.ndarray] = []
        ids: list[np.ndarray] = []
        logprobs: list[np.ndarray] = []
        for i, c in enumerate(done.completions):
            row = dict(vars(Sample(  # JSON next: a shallow dict, not asdict's deep copy
                question_id=q.question_id, sample_index=self.start + i, question=q.question,
                gold_answer=q.gold_answer, choices=q.choices, prompt_messages=self.messages,
                prompt_text=self.prompt_text, rationale=c.text, finish_reason=c.finish_reason,
                prompt_tokens=done.prompt_tokens, completion_tokens=c.completion_tokens, teacher=config.teacher.model,
                sampling=sampling, seed=self.seed, run_id=config.run_name, reasoning=c.reasoning,
                round=self.round if gen.adaptive is not None else None,
                rationalized=self.rationalize if gen.rationalize else None, hint_prompt_text=self.hint_prompt_text,
                reasoning_tokens=c.reasoning_tokens, reasoning_budget_hit=c.budget_hit,
                teacher_name=config.teacher_name,
            )))
            if c.topk_ids is not None:  # to the journal's binary side; compact() builds the Parquet columns
                token_ids = np.ascontiguousarray(c.token_ids, dtype=np.int32)
                topk_ids = np.ascontiguousarray(c.topk_ids, dtype=np.int32)
                topk_logprobs = np.ascontiguousarray(c.topk_logprobs, dtype=np.float16)
                if topk_ids.ndim != 2 or topk_ids.shape != topk_logprobs.shape or len(token_ids) != len(topk_ids):
                    raise ValueError(f"question {q.question_id}: top-k arrays of shapes {topk_ids.shape} and "
                                     f"{topk_logprobs.shape} for {len(token_ids)} tokens")
                row.update(logprobs_context="teacher", topk_shape=list(topk_ids.shape))
                tokens.append(token_ids)
                ids.append(topk_ids)
                logprobs.append(topk_logprobs)
            rows.append(row)
        return rows, (tokens + ids + logprobs) if tokens else None


SAMPLE_FIELDS = frozenset(f.name for f in fields(Sample))
WRITE_OPTIONS = parquet_options(SAMPLE_SCHEMA)  # the logprob columns without dictionary, in zstd


def frame_arrays(rows: list[dict[str, Any]], body: memoryview) -> tuple[list[tuple[int, int]], np.ndarray,
                                                                          np.ndarray, np.ndarray]:
    """A journal frame's arrays (Pending.sample_rows' layout): the shapes of the rows that have them, and their
    token ids, top-k ids and top-k logprobs, each concatenated over those rows."""
    shapes = [tuple(row["topk_shape"]) for row in rows if row.get("topk_shape") is not None]
    tokens = sum(t for t, _ in shapes)
    values = sum(t * k for t, k in shapes)
    if body.nbytes != 4 * tokens + 4 * values + 2 * values:
        raise ValueError(f"a journal frame of {body.nbytes} bytes for rows of shapes {shapes}")
    return (shapes, np.frombuffer(body, np.int32, tokens), np.frombuffer(body, np.int32, values, 4 * tokens),
            np.frombuffer(body, np.float16, values, 4 * tokens + 4 * values))


def add_record_rows(record: dict[str, Any], columns: LogprobColumns, read_frame: Any) -> list[dict[str, Any]]:
    """A journal record's rows as Sample records, without their logprob columns, which go to `columns` (from the
    record's frame, or from rows journaled in base64 before there were frames)."""
    rows = []
    if record.get("arrays") is not None:
        samples = record["samples"]
        shapes, tokens, ids, logprobs = frame_arrays(samples, read_frame(record["arrays"]))
        if len(shapes) == len(samples):  # every row has arrays (a request with logprobs): in one piece
            columns.add_many(shapes, tokens, ids, logprobs)
        else:
            token_at = value_at = 0
            for row in samples:
                if row.get("topk_shape") is None:
                    columns.add_none()
                    continue
                length, k = row["topk_shape"]
                columns.add_many([(length, k)], tokens[token_at:token_at + length],
                                 ids[value_at:value_at + length * k], logprobs[value_at:value_at + length * k])
                token_at, value_at = token_at + length, value_at + length * k
        return [{key: value for key, value in row.items() if key != "topk_shape"} for row in samples]
    for row in record["samples"]:
        encoded = row.get("teacher_topk_ids")
        if isinstance(encoded, dict):  # journaled before the binary side: base64 in the line
            ids, logprobs = decode_topk(encoded)
            columns.add(np.asarray(row["completion_token_ids"], dtype=np.int32), ids, logprobs)
            row = {**row, "completion_token_ids": None, "teacher_topk_ids": None, "teacher_topk_logprobs": None}
        else:
            columns.add_none()
        rows.append(row)
    return rows


def journaled_records(shard: Shard) -> dict[str, list[dict[str, Any]]]:
    """Each question's journal records, in the order written, read back from the journal (rows are not kept in
    memory while a question waits for its next round): the ones its progress was built from, each once."""
    records: dict[str, list[dict[str, Any]]] = {q.question_id: [] for q in shard.questions}
    for position, record in enumerate(shard.journal.read()):
        if shard.taken.get(record_key(record)) == position:
            records[record["question_id"]].append(record)
    return records


def shard_table(rows: list[dict[str, Any]], columns: LogprobColumns) -> pa.Table:
    """The shard's rows (dicts of Sample's fields; the logprob columns null) and their logprob columns as one
    SAMPLE_SCHEMA table."""
    for row in rows:
        if not row.keys() <= SAMPLE_FIELDS:
            raise ValueError(f"a journaled row with fields a Sample has not: {sorted(row.keys() - SAMPLE_FIELDS)}")
    return columns.set_on(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA))


class ShardWriter:
    """Writes compacted shards' Parquet files on a thread of its own, one at a time, while the request loop goes on
    (pyarrow writes without the GIL: about half of a logprob shard's compaction). A shard is handed over only once
    the one before it is on disk, so at most one table waits; `wait()` returns when all are written, and raises
    what a write raised. Killed mid-write, a run leaves the shard's journal and a temporary file, as before."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._last: Any = None

    def submit(self, write: Any) -> None:
        self.wait()
        self._last = self._pool.submit(write)

    def wait(self) -> None:
        last, self._last = self._last, None
        if last is not None:
            last.result()

    def close(self, quiet: bool = False) -> None:
        """Wait for the last write; `quiet`: log what it raised instead (another error is on its way)."""
        try:
            self.wait()
        except Exception as e:
            if not quiet:
                raise
            logger.warning("generate: writing a shard failed as well: %s", e)
        finally:
            self._pool.shutdown()


def compact(shard: Shard, paths: RunPaths, writer: ShardWriter | None = None) -> dict[str, Any]:
    """A complete shard's journal -> meta, then the Parquet shard (its completion marker), then no journal; with
    a `writer`, the last two on its thread."""
    policy = shard.policy
    by_question = journaled_records(shard)
    records = [r for q in shard.questions for r in by_question[q.question_id]]  # source order, then sample order
    frames = shard.journal.arrays_bytes() if any(r.get("arrays") for r in records) else b""
    columns = LogprobColumns()
    rows = []
    for q in shard.questions:
        rounds = shard.progress[q.question_id].rounds if policy.adaptive is not None else None
        for r in by_question[q.question_id]:
            added = add_record_rows(r, columns, lambda ref: shard.journal.frame(ref, frames))
            rows.extend(added if rounds is None else ({**row, "rounds": rounds} for row in added))
    meta = {
        "shard": shard.index,
        "questions": len(shard.questions),
        "rationales": len(rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(row["completion_tokens"] for row in rows),
        # generated here, in `seconds` (the request cache's answers took no time and are counted apart)
        "generated_tokens": sum(row["completion_tokens"] for r in records if not r.get("cached")
                                for row in r["samples"]),
        "truncated": sum(row["finish_reason"] == "length" for row in rows),
        "seconds": sum(r["seconds"] for r in records),
        "retries": sum(r["retries"] for r in records),
        "skipped": [{"question_id": r["question_id"], "source_row": r["source_row"], "reason": r["skipped"]}
                    for r in records if r["skipped"]],
        "failed": [{"question_id": r["question_id"], "source_row": r["source_row"], "reason": r["error"]}
                   for r in records if r["error"]],
        # questions with fewer samples than asked: the teacher's responses were short even after topping up
        "short": [{"question_id": r["question_id"], "source_row": r["source_row"], "missing": r["missing"]}
                  for r in records if r.get("missing")],
    }
    meta.update(rounds_meta(shard, rows))
    if policy.gen.cache.enabled:  # what the request cache answered: requests, and the tokens not paid for again
        cached = [r for r in records if r.get("cached")]
        meta["cache"] = {"hits": len(cached), "prompt_tokens_saved": sum(r["prompt_tokens"] for r in cached),
                         "completion_tokens_saved": sum(row["completion_tokens"] for r in cached
                                                        for row in r["samples"])}
    if any(row.get("reasoning_tokens") is not None for row in rows):  # a reasoning teacher (else as it was)
        meta["reasoning"] = {"rationales": sum(row.get("reasoning_tokens") is not None for row in rows),
                             "reasoning_tokens": sum(row.get("reasoning_tokens") or 0 for row in rows),
                             "budget_hits": sum(bool(row.get("reasoning_budget_hit")) for row in rows)}
    write_json_atomic(meta, paths.generate_meta / shard_name(shard.index, ".json"))
    table = shard_table(rows, columns)
    del frames, columns  # the journal's frames, read whole: not held while the shard is written
    keep_journal = bool(meta["failed"] or meta["short"])  # kept: a rerun replays it and sends only those again

    def write() -> None:
        write_parquet_atomic(table, paths.samples / shard_name(shard.index), **WRITE_OPTIONS)
        shard.journal.close() if keep_journal else shard.journal.remove()

    writer.submit(write) if writer is not None else write()
    shard.compacted = True
    return meta


def rounds_meta(shard: Shard, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The shard's adaptive and rationalization counts (nothing with both off: the meta stays as it was)."""
    policy, meta = shard.policy, {}
    answered = [p for p in shard.progress.values() if p.rounds]
    if policy.adaptive is not None:
        closed = Counter(p.closed for p in answered)
        meta["adaptive"] = {
            "questions": len(answered),
            "samples": sum(p.sampled for p in answered),
            "rounds": sum(p.rounds for p in answered),
            "closed": {why: closed.get(why, 0) for why in ("target", "rule", "cap", "error")},
        }
    if policy.gen.rationalize:
        hinted = [row for row in rows if row["rationalized"]]
        by_id = {q.question_id: q for q in shard.questions}
        meta["rationalized"] = {
            "questions_without_correct": sum(policy.needs_hint(p) for p in shard.progress.values()),
            "questions": len({row["question_id"] for row in hinted}),
            "rationales": len(hinted),
            "reaching_gold": sum(sum(question_reaching_gold(qid, rows[0]["gold_answer"], by_id[qid].choices, rows,
                                                            policy.fmt, policy.code))
                                 for qid, rows in by_question(hinted).items()),
            "completion_tokens": sum(row["completion_tokens"] for row in hinted),
        }
    return meta


def by_question(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["question_id"], []).append(row)
    return grouped
