"""generate: Question -> prompt -> N teacher rationales -> Sample shards.

    cotdistill generate pipelines/demo.yaml            [--force] [--dry-run]

Questions are cut into shards of `generate.questions_per_shard`. The questions of every unfinished shard stream
through the teacher (cotdistill/teachers/: a local vLLM engine, an OpenAI-compatible server, or Ray actors), one
request of `SamplingParams(n=N)` per question, so the N samples share one prefill; the teacher keeps requests in
flight across shard boundaries. Each question whose samples are all back is appended at once to its shard's
journal (`generate/journal/00003.jsonl`, flushed and fsynced); a shard whose questions are all in is written as
`generate/meta/00003.json` then `generate/samples/00003.parquet`, and its journal removed. A rerun skips finished
shards, reads the journals and sends only the questions missing: a crash loses at most the requests in flight.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cotdistill.config import RunConfig
from cotdistill.fingerprints import (
    changed_keys, data_fingerprint, file_digest, make_fingerprint, matches, read_fingerprint, template_fingerprint,
    write_fingerprint,
)
from cotdistill.prompts import PromptTemplate
from cotdistill.records import (
    LOGPROB_COLUMNS, SAMPLE_SCHEMA, Question, Sample, decode_topk, encode_topk, samples_to_table,
)
from cotdistill.shards import (
    Journal, list_shards, read_json, read_json_or_none, remove_stale_tmp, shard_name, write_json_atomic,
    write_parquet_atomic,
)
from cotdistill.sources import QuestionSource
from cotdistill.teachers import (
    Finished, Sampling, Teacher, TeacherRequest, build_teacher, prompt_too_long, render_prompt, teacher_settings,
)

logger = logging.getLogger(__name__)


def request_seed(base_seed: int, question_id: str) -> int:
    """A per-question seed that does not depend on shard order (used when seed_per_request is on)."""
    digest = hashlib.sha1(f"{base_seed}:{question_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class SettingsChanged(RuntimeError):
    """generate's outputs were made with other settings; regenerating is costly, so it is never implicit."""


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """What the shards' contents depend on: data, teacher weights and engine, prompt, sampling, seed."""
    gen = config.generate
    return make_fingerprint({
        "data": {**vars(config.data), "contents": data_fingerprint(config.data.path)},
        "teacher": teacher_settings(config.teacher),
        "generate": {**vars(gen), "prompt_template": template_fingerprint(gen.prompt),
                     "examples_file": file_digest(gen.examples) if gen.examples else None},
        "seed": config.seed,
    })


def check_fingerprint(out_dir: Path, record: dict[str, Any], force: bool) -> None:
    """Refuse to mix shards of other settings into this run; with `force`, discard them first."""
    stored = read_fingerprint(out_dir)
    made = list_shards(out_dir / "samples") + sorted((out_dir / "meta").glob("*.json"))
    if stored is not None and stored["fingerprint"] == record["fingerprint"]:
        return
    if stored is None and not made:
        write_fingerprint(out_dir, record)
        return
    changed = changed_keys(stored["settings"], record["settings"]) if stored else ["(made without a fingerprint)"]
    if not force:
        raise SettingsChanged(
            f"{out_dir} holds {len(list_shards(out_dir / 'samples'))} shards made with other settings (changed: "
            f"{', '.join(changed)}); use a new run_name, or add --force to discard them and generate again"
        )
    logger.warning("generate: --force: discarding %s (changed: %s)", out_dir, ", ".join(changed))
    for sub in ("samples", "meta", "journal"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    for name in ("stats.json", "settings.json"):
        (out_dir / name).unlink(missing_ok=True)
    write_fingerprint(out_dir, record)


@dataclass
class Shard:
    """One shard's questions and what its journal holds so far."""

    index: int
    questions: list[Question]
    journal: Journal
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # question_id -> journal record
    all_sent: bool = False

    @property
    def done(self) -> bool:
        return self.all_sent and len(self.records) == len(self.questions)

    def record(self, record: dict[str, Any]) -> None:
        self.journal.append(record)
        self.records[record["question_id"]] = record


def sample_rows(done: Finished, q: Question, messages: list[dict[str, str]], text: str, config: RunConfig,
                seed: int) -> list[dict[str, Any]]:
    """The teacher's answer to one question as Sample records (dicts, as journaled)."""
    gen = config.generate
    sampling = {"n": gen.num_samples, "temperature": gen.temperature, "top_p": gen.top_p, "top_k": gen.top_k,
                "max_tokens": gen.max_tokens, "stop": list(gen.stop)}
    rows = []
    for i, c in enumerate(done.completions):
        row = asdict(Sample(
            question_id=q.question_id, sample_index=i, question=q.question, gold_answer=q.gold_answer,
            choices=q.choices, prompt_messages=messages, prompt_text=text, rationale=c.text,
            finish_reason=c.finish_reason, prompt_tokens=done.prompt_tokens, completion_tokens=c.completion_tokens,
            teacher=config.teacher.model, sampling=sampling, seed=seed, run_id=config.run_name,
            reasoning=c.reasoning,
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


def logprob_bytes(path: Path) -> int:
    """Bytes on disk of a Parquet shard's logprob columns (compressed column chunks, from its footer)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    total = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            if column.path_in_schema.split(".")[0] in LOGPROB_COLUMNS:
                total += column.total_compressed_size
    return total


def compact(shard: Shard, out_dir: Path) -> dict[str, Any]:
    """A complete shard's journal -> meta, then the Parquet shard (its completion marker), then no journal."""
    records = [shard.records[q.question_id] for q in shard.questions]  # source order, whatever the finish order
    rows = [decode_row(row) for r in records for row in r["samples"]]
    meta = {
        "shard": shard.index,
        "questions": len(records),
        "rationales": len(rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(row["completion_tokens"] for row in rows),
        "truncated": sum(row["finish_reason"] == "length" for row in rows),
        "seconds": sum(r["seconds"] for r in records),
        "retries": sum(r["retries"] for r in records),
        "skipped": [{"question_id": r["question_id"], "source_row": r["source_row"], "reason": r["skipped"]}
                    for r in records if r["skipped"]],
        "failed": [{"question_id": r["question_id"], "source_row": r["source_row"], "reason": r["error"]}
                   for r in records if r["error"]],
    }
    write_json_atomic(meta, out_dir / "meta" / shard_name(shard.index, ".json"))
    write_parquet_atomic(samples_to_table([Sample(**row) for row in rows], SAMPLE_SCHEMA),
                         out_dir / "samples" / shard_name(shard.index))
    shard.journal.remove()
    return meta


def generate_shards(teacher: Teacher, source: QuestionSource, todo: list[int], template: PromptTemplate,
                    config: RunConfig, out_dir: Path) -> Iterator[dict[str, Any]]:
    """The core: stream the missing questions of the `todo` shards through the teacher, journal each finished
    question, and compact each shard as it completes (yielding its meta)."""
    gen, per_shard = config.generate, config.generate.questions_per_shard
    tokenizer, context = teacher.tokenizer(), teacher.max_model_len()
    waiting: dict[str, tuple[Shard, Question, list[dict[str, str]], str, int]] = {}
    finished: list[Shard] = []
    clock = [time.perf_counter()]

    def seconds() -> float:  # wall time since the previous record: the shards' seconds add up to the run's
        now = time.perf_counter()
        elapsed, clock[0] = now - clock[0], now
        return elapsed

    def requests() -> Iterator[TeacherRequest]:
        for index in todo:
            journal = Journal(out_dir / "journal" / shard_name(index, ".jsonl"))
            shard = Shard(index, list(source.questions(index * per_shard, (index + 1) * per_shard)), journal)
            for record in journal.read():
                shard.records.setdefault(record["question_id"], record)
            if shard.records:
                logger.info("generate: shard %d: %d of %d questions already journaled", index, len(shard.records),
                            len(shard.questions))
            for q in shard.questions:
                if q.question_id in shard.records:
                    continue
                messages = template.render(question=q.question, choices=q.choices)
                text, ids = render_prompt(tokenizer, messages) if tokenizer is not None else ("", None)
                seed = request_seed(config.seed, q.question_id) if gen.seed_per_request else config.seed
                too_long = prompt_too_long(len(ids), context) if ids is not None else None
                if too_long:
                    logger.warning("skipped question %s (row %d): %s", q.question_id, q.source_row, too_long)
                    shard.record({"question_id": q.question_id, "source_row": q.source_row, "samples": [],
                                  "prompt_tokens": 0, "seconds": 0.0, "retries": 0, "skipped": too_long,
                                  "error": None})
                    continue
                max_tokens = min(gen.max_tokens, context - len(ids)) if context and ids is not None else gen.max_tokens
                waiting[q.question_id] = (shard, q, messages, text, seed)
                yield TeacherRequest(
                    key=q.question_id, messages=messages, prompt_text=text, prompt_token_ids=ids,
                    sampling=Sampling(n=gen.num_samples, temperature=gen.temperature, top_p=gen.top_p,
                                      top_k=gen.top_k, max_tokens=max_tokens, stop=list(gen.stop),
                                      seed=seed if gen.seed_per_request else None, logprobs=gen.logprobs),
                )
            shard.all_sent = True
            if shard.done:  # nothing was left to send, or every answer is already back
                finished.append(shard)

    for done in teacher.generate(requests()):
        shard, q, messages, text, seed = waiting.pop(done.key)
        if done.error:
            logger.warning("question %s (row %d) failed: %s", q.question_id, q.source_row, done.error)
        shard.record({"question_id": q.question_id, "source_row": q.source_row,
                      "samples": sample_rows(done, q, messages, text, config, seed),
                      "prompt_tokens": done.prompt_tokens, "seconds": seconds(), "retries": done.retries,
                      "skipped": None, "error": done.error})
        if shard.done:
            finished.append(shard)
        while finished:
            yield compact(finished.pop(), out_dir)
    while finished:
        yield compact(finished.pop(), out_dir)


def run(config: RunConfig, teacher: Teacher | None = None, force: bool = False) -> dict[str, Any]:
    """The stage with its I/O. `teacher`: one already built (benchmarks, notebooks); else the configured backend
    is started. `force`: discard outputs made with other settings instead of refusing."""
    from tqdm import tqdm

    out_dir = config.run_dir / "generate"
    source = QuestionSource(config.data)
    per_shard = config.generate.questions_per_shard
    num_shards = math.ceil(len(source) / per_shard)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_fingerprint(out_dir, fingerprint(config), force)
    remove_stale_tmp(out_dir / "samples")
    remove_stale_tmp(out_dir / "meta")

    todo = []
    for i in range(num_shards):
        if (out_dir / "samples" / shard_name(i)).exists() and (out_dir / "meta" / shard_name(i, ".json")).exists():
            (out_dir / "journal" / shard_name(i, ".jsonl")).unlink(missing_ok=True)  # compacted, then killed
        else:
            todo.append(i)
    logger.info("generate: %d questions in %d shards, %d to do", len(source), num_shards, len(todo))
    if todo:
        template = PromptTemplate(config.generate.prompt, config.generate.examples)
        own_teacher = teacher is None
        teacher = teacher or build_teacher(config.teacher, config.seed)
        try:
            for _ in tqdm(generate_shards(teacher, source, todo, template, config, out_dir), total=len(todo),
                          desc="generate shards", unit="shard"):
                pass
        finally:
            if own_teacher:
                teacher.close()

    stats = summarize(out_dir, num_shards, config)
    write_json_atomic(stats, out_dir / "stats.json")
    logger.info("generate: %s", {k: v for k, v in stats.items() if k not in ("skipped", "failed")})
    return stats


def dry_run(config: RunConfig) -> dict[str, Any]:
    """What generate would send, counted before anything is sent and without starting an engine: the requests,
    the prompt tokens (counted with the teacher's tokenizer), the most completion tokens they can return, and
    with prices in the config, the estimated cost. Shards already finished and questions already journaled
    are left out, as a run would leave them out."""
    from transformers import AutoTokenizer

    from cotdistill.models import resolve_model

    gen, teacher = config.generate, config.teacher
    out_dir = config.run_dir / "generate"
    source = QuestionSource(config.data)
    template = PromptTemplate(gen.prompt, gen.examples)
    name = (teacher.openai.tokenizer or teacher.model) if teacher.backend == "openai" else teacher.model
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
    except Exception as e:  # a hosted model's id has no local tokenizer: say how to give one
        raise ValueError(f"--dry-run counts prompt tokens with the teacher's tokenizer, and {name!r} has none here "
                         f"({type(e).__name__}); set teacher.openai.tokenizer to a Hugging Face tokenizer") from None
    per_shard = gen.questions_per_shard
    questions = prompt_tokens = 0
    for index in range(math.ceil(len(source) / per_shard)):
        if (out_dir / "samples" / shard_name(index)).exists():
            continue
        journaled = {r["question_id"] for r in Journal(out_dir / "journal" / shard_name(index, ".jsonl")).read()}
        for q in source.questions(index * per_shard, (index + 1) * per_shard):
            if q.question_id not in journaled:
                questions += 1
                prompt_tokens += len(render_prompt(tokenizer, template.render(question=q.question,
                                                                               choices=q.choices))[1])
    split = teacher.backend == "openai" and not teacher.openai.n_per_request  # N requests of n=1 per question
    per_question = gen.num_samples if split else 1
    plan = {
        "questions": questions, "requests": questions * per_question,
        "prompt_tokens": prompt_tokens * per_question,  # each request is billed for its prompt
        "max_completion_tokens": questions * gen.num_samples * gen.max_tokens,
    }
    price_in, price_out = teacher.openai.price_per_million_input, teacher.openai.price_per_million_output
    if price_in or price_out:
        plan["max_estimated_cost"] = round((plan["prompt_tokens"] * (price_in or 0)
                                            + plan["max_completion_tokens"] * (price_out or 0)) / 1e6, 4)
    return plan


def summarize(out_dir: Path, num_shards: int, config: RunConfig) -> dict[str, Any]:
    metas = [read_json(out_dir / "meta" / shard_name(i, ".json")) for i in range(num_shards)]
    seconds = sum(m["seconds"] for m in metas)
    prompt = sum(m["prompt_tokens"] for m in metas)
    completion = sum(m["completion_tokens"] for m in metas)
    stats = {
        "shards": num_shards,
        "questions": sum(m["questions"] for m in metas),
        "rationales": sum(m["rationales"] for m in metas),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "generation_seconds": round(seconds, 3),
        "tokens_per_s": round(completion / seconds, 2) if seconds else None,
        "truncated": sum(m["truncated"] for m in metas),
        "skipped": [s for m in metas for s in m["skipped"]],
        "num_skipped": sum(len(m["skipped"]) for m in metas),
        "failed": [s for m in metas for s in m["failed"]],
        "num_failed": sum(len(m["failed"]) for m in metas),
        "retries": sum(m["retries"] for m in metas),
    }
    if config.generate.logprobs:
        # What the logprob columns (token ids, top-k ids and logprobs) add on disk, per completion token.
        stored = sum(logprob_bytes(out_dir / "samples" / shard_name(i)) for i in range(num_shards))
        stats["logprobs_k"] = config.generate.logprobs
        stats["logprob_bytes"] = stored
        stats["logprob_bytes_per_token"] = round(stored / completion, 2) if completion else None
    price_in, price_out = config.teacher.openai.price_per_million_input, config.teacher.openai.price_per_million_output
    if config.teacher.backend == "openai" and (price_in or price_out):
        stats["estimated_cost"] = round((prompt * (price_in or 0) + completion * (price_out or 0)) / 1e6, 6)
    return stats


def is_complete(config: RunConfig) -> bool:
    """Every shard written, and made with today's settings."""
    out_dir = config.run_dir / "generate"
    stats = read_json_or_none(out_dir / "stats.json")
    if stats is None or not matches(out_dir, fingerprint(config)):
        return False
    return len(list_shards(out_dir / "samples")) == stats["shards"]
