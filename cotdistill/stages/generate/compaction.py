"""From the teacher's answers to the shard on disk: a request in flight (Pending), the journal record of its
answer, and a complete shard's journal compacted into its meta and Parquet file (the shard's completion marker).

    shard.record(pending.answered(done, config, seconds))     # requests.RequestLoop, as each answer comes back
    compact(shard, config.paths)                               # once every question of the shard is in
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from cotdistill.config.run import RunConfig
from cotdistill.core.paths import RunPaths
from cotdistill.core.records import SAMPLE_SCHEMA, Question, Sample, decode_topk, encode_topk, samples_to_table
from cotdistill.core.shards import shard_name, write_json_atomic, write_parquet_atomic
from cotdistill.stages.generate.progress import Shard, record_key
from cotdistill.teachers.base import Finished
from cotdistill.verify.judging import question_reaching_gold


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

    def answered(self, done: Finished, config: RunConfig, seconds: float) -> dict[str, Any]:
        return journal_record(self.question, round=self.round, rationalize=self.rationalize,
                              samples=self.sample_rows(done, config), prompt_tokens=done.prompt_tokens,
                              seconds=seconds, retries=done.retries, error=done.error, missing=done.missing,
                              cached=done.cached)

    def sample_rows(self, done: Finished, config: RunConfig) -> list[dict[str, Any]]:
        """The teacher's answer as Sample records (dicts, as journaled). A row holds its round only under
        generate.adaptive, and whether it was rationalized only under generate.rationalize (null otherwise)."""
        gen, q = config.generate, self.question
        sampling = {"n": gen.rationalize_samples if self.rationalize else gen.num_samples,
                    "temperature": gen.temperature, "top_p": gen.top_p, "top_k": gen.top_k,
                    "max_tokens": gen.max_tokens, "stop": list(gen.stop)}
        rows = []
        for i, c in enumerate(done.completions):
            row = asdict(Sample(
                question_id=q.question_id, sample_index=self.start + i, question=q.question,
                gold_answer=q.gold_answer, choices=q.choices, prompt_messages=self.messages,
                prompt_text=self.prompt_text, rationale=c.text, finish_reason=c.finish_reason,
                prompt_tokens=done.prompt_tokens, completion_tokens=c.completion_tokens, teacher=config.teacher.model,
                sampling=sampling, seed=self.seed, run_id=config.run_name, reasoning=c.reasoning,
                round=self.round if gen.adaptive is not None else None,
                rationalized=self.rationalize if gen.rationalize else None, hint_prompt_text=self.hint_prompt_text,
                reasoning_tokens=c.reasoning_tokens, reasoning_budget_hit=c.budget_hit,
                teacher_name=config.teacher_name,
            ))
            if c.topk_ids is not None:  # journaled compactly; compact() turns them into the Parquet columns
                row.update(completion_token_ids=c.token_ids, logprobs_context="teacher",
                           teacher_topk_ids=encode_topk(c.topk_ids, c.topk_logprobs), teacher_topk_logprobs=None)
            rows.append(row)
        return rows


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """A journaled Sample row as the Sample record (the journal holds top-k logprobs base64-encoded)."""
    if isinstance(row.get("teacher_topk_ids"), dict):
        row = dict(row)
        row["teacher_topk_ids"], row["teacher_topk_logprobs"] = decode_topk(row["teacher_topk_ids"])
    return row


def journaled_records(shard: Shard) -> dict[str, list[dict[str, Any]]]:
    """Each question's journal records, in the order written, read back from the journal (rows are not kept in
    memory while a question waits for its next round): the ones its progress was built from, each once."""
    records: dict[str, list[dict[str, Any]]] = {q.question_id: [] for q in shard.questions}
    for position, record in enumerate(shard.journal.read()):
        if shard.taken.get(record_key(record)) == position:
            records[record["question_id"]].append(record)
    return records


def compact(shard: Shard, paths: RunPaths) -> dict[str, Any]:
    """A complete shard's journal -> meta, then the Parquet shard (its completion marker), then no journal."""
    policy = shard.policy
    by_question = journaled_records(shard)
    records = [r for q in shard.questions for r in by_question[q.question_id]]  # source order, then sample order
    rows = []
    for q in shard.questions:
        rounds = shard.progress[q.question_id].rounds if policy.adaptive is not None else None
        for r in by_question[q.question_id]:
            rows.extend({**decode_row(row), "rounds": rounds} if rounds is not None else decode_row(row)
                        for row in r["samples"])
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
    write_parquet_atomic(samples_to_table([Sample(**row) for row in rows], SAMPLE_SCHEMA),
                         paths.samples / shard_name(shard.index))
    if meta["failed"] or meta["short"]:  # kept: a rerun replays it and sends only those again
        shard.journal.close()
    else:
        shard.journal.remove()
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
