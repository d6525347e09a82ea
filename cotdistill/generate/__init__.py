"""generate: Question -> prompt -> N teacher rationales -> Sample shards.

    cotdistill generate pipelines/demo.yaml            [--force] [--dry-run]

Questions are cut into shards of `generate.questions_per_shard`, and every unfinished shard's questions stream
through the teacher (cotdistill/teachers/), one request of n=N per question so the N samples share one prefill;
the teacher keeps requests in flight across shard boundaries, so the engine never drains between shards. Each
answered question is journaled at once (generate/journal/, flushed, fsynced by group commit) and a shard whose
questions are all in is compacted into its meta and Parquet file: a crash loses at most the requests in flight,
and a rerun sends only what its journals lack.

`generate.adaptive` samples in rounds and closes a question once enough of its rationales reach the gold, or its
majority is settled (judging.py and stopping.py: the filter's own verdicts, so generate and filter cannot
disagree); `generate.rationalize` (STaR) asks a question left with none once more with the gold as a hint, and
keeps its ordinary prompt on the rows. Rounds run as successive passes over the open questions, so the teacher
interface stays a stream of requests in, answers out; the price is the tail of each pass.

Here: the stage (its fingerprint, the request loop generate_shards, the summary); progress.py where each question
stands and what it is sent next; compaction.py what is in flight, the journal records and the shard written;
dry_run.py --dry-run.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict
from typing import Any, Iterator

from cotdistill.config import RunConfig
from cotdistill.fingerprints import data_settings, file_digest, make_fingerprint, template_fingerprint
from cotdistill.generate.compaction import Pending, compact, journal_record
from cotdistill.generate.dry_run import dry_run
from cotdistill.generate.progress import Policy, Progress, Shard
from cotdistill.judging import sandbox_settings
from cotdistill.paths import RunPaths
from cotdistill.prompts import PromptTemplate
from cotdistill.records import LOGPROB_COLUMNS, Question
from cotdistill.shards import (
    Journal, column_bytes, create_json_once, list_shards, read_json, read_json_or_none, remove_stale_tmp, shard_name,
    write_json_atomic,
)
from cotdistill.sources import QuestionSource
from cotdistill.stages import Stage
from cotdistill.teachers import (
    Sampling, Teacher, TeacherRequest, build_teacher, prompt_too_long, render_prompt, teacher_settings,
)

__all__ = ["STAGE", "Policy", "Progress", "dry_run", "fingerprint", "is_complete", "run"]

logger = logging.getLogger(__name__)


def request_seed(base_seed: int, question_id: str) -> int:
    """A per-question seed that does not depend on shard order (used when seed_per_request is on)."""
    digest = hashlib.sha1(f"{base_seed}:{question_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """The stage's fingerprint: one teacher's (teacher_fingerprint), or with `teachers` each one's by name (adding a
    teacher adds a key; each teacher's folder holds its own fingerprint, which refuses changed settings)."""
    if config.teachers:
        return make_fingerprint({"teachers": {run.teacher_name: teacher_fingerprint(run)["fingerprint"]
                                              for run in config.teacher_runs()}})
    return teacher_fingerprint(config)


def teacher_fingerprint(config: RunConfig) -> dict[str, Any]:
    """What one teacher's shards' contents depend on: data, teacher weights and engine, prompt, sampling, seed."""
    return make_fingerprint({
        "data": data_settings(config.data),
        "teacher": teacher_settings(config.teacher),
        "generate": generate_settings(config),
        "seed": config.seed,
    })


def generate_settings(config: RunConfig) -> dict[str, Any]:
    """generate's settings as fingerprinted. adaptive and rationalize appear only when on, so a fixed-N run keeps
    the fingerprint it had before they existed; when on, so does what their verdicts depend on (the filter's
    answer format and label)."""
    gen = config.generate
    extra = ("adaptive", "rationalize", "rationalize_prompt", "rationalize_samples", "max_reasoning_tokens",
             "cache")  # the request cache changes what is paid for, never a row
    settings = {**{k: v for k, v in vars(gen).items() if k not in extra},
                "prompt_template": template_fingerprint(gen.prompt),
                "examples_file": file_digest(gen.examples) if gen.examples else None}
    if gen.adaptive is not None:
        settings["adaptive"] = asdict(gen.adaptive)
    if gen.rationalize:
        settings["rationalize"] = {"samples": gen.rationalize_samples, "prompt": gen.rationalize_prompt,
                                   "prompt_template": template_fingerprint(gen.rationalize_prompt)}
    if gen.max_reasoning_tokens is not None:
        settings["max_reasoning_tokens"] = gen.max_reasoning_tokens
    if gen.adaptive is not None or gen.rationalize:
        settings["answer_check"] = {"answer_format": config.filter.answer_format, "label": config.filter.label}
        if config.filter.answer_format == "code":  # its verdicts depend on the sandbox's limits
            settings["answer_check"]["sandbox"] = sandbox_settings(config.sandbox)
    return settings


def generate_shards(teacher: Teacher, source: QuestionSource, todo: list[int], template: PromptTemplate,
                    config: RunConfig) -> Iterator[dict[str, Any]]:
    """The core: send the `todo` shards' questions through the teacher, journal every request's answer at once,
    and compact each shard as it completes (yielding its meta).

    In passes: the first walks the shards lazily (the teacher pulls requests while earlier ones run, across shard
    boundaries) and sends each question its next request: with fixed N the only one, so one pass is the whole
    run. Every later pass sends each question still open its next round (or its rationalization), until none is."""
    gen, per_shard, paths = config.generate, config.generate.questions_per_shard, config.paths
    policy = Policy(config)
    tokenizer, context = teacher.tokenizer(), teacher.max_model_len()
    kwargs = config.teacher.chat_template_kwargs
    hint_template = PromptTemplate(gen.rationalize_prompt, gen.examples) if gen.rationalize else None
    waiting: dict[str, Pending] = {}  # request key -> the request in flight
    loaded: list[Shard] = []
    finished: list[Shard] = []
    clock = [time.perf_counter()]

    def seconds() -> float:  # wall time since the previous record: the shards' seconds add up to the run's
        now = time.perf_counter()
        elapsed, clock[0] = now - clock[0], now
        return elapsed

    def request(shard: Shard, q: Question) -> TeacherRequest | None:
        """The question's next request; None when it is done (or its prompt is too long: journaled here)."""
        p = shard.progress[q.question_id]
        step = policy.next(p)
        if step is None:
            return None
        kind, n = step
        rationalize = kind == "hint"
        messages = template.render(question=q.question, choices=q.choices)
        text, ids = render_prompt(tokenizer, messages, kwargs) if tokenizer is not None else ("", None)
        sent, sent_text, sent_ids, hint_text = messages, text, ids, None
        if rationalize:  # the student's prompt stays the ordinary one; this one is kept for audit only
            sent = hint_template.render(question=q.question, choices=q.choices, hint=q.gold_answer)
            sent_text, sent_ids = render_prompt(tokenizer, sent, kwargs) if tokenizer is not None else ("", None)
            hint_text = sent_text or "\n\n".join(f"{m['role']}: {m['content']}" for m in sent)
        seed = request_seed(config.seed, q.question_id) if gen.seed_per_request else config.seed
        round_number = None if rationalize else p.rounds + 1
        too_long = prompt_too_long(len(sent_ids), context) if sent_ids is not None else None
        if too_long:
            logger.warning("skipped question %s (row %d)%s: %s", q.question_id, q.source_row,
                           " rationalization" if rationalize else "", too_long)
            shard.record(journal_record(q, round=round_number, rationalize=rationalize, skipped=too_long))
            return None
        max_tokens = (min(gen.max_tokens, context - len(sent_ids)) if context and sent_ids is not None
                      else gen.max_tokens)
        waiting[q.question_id] = Pending(shard, q, round_number, rationalize, messages, text, seed, p.sampled,
                                         hint_text)
        return TeacherRequest(
            key=q.question_id, messages=sent, prompt_text=sent_text, prompt_token_ids=sent_ids,
            # A per-request seed goes on from the samples already drawn: vLLM seeds sample i of a request with
            # seed + i, so round after round gives the samples that one request of N would have given.
            sampling=Sampling(n=n, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k,
                              max_tokens=max_tokens, stop=list(gen.stop),
                              seed=seed + p.sampled if gen.seed_per_request else None,
                              # a distribution after the hint prompt would pass the hint on to a KD student
                              logprobs=None if rationalize else gen.logprobs,
                              max_reasoning_tokens=gen.max_reasoning_tokens),
            first_sample=p.sampled,
        )

    def first_pass() -> Iterator[TeacherRequest]:
        for index in todo:
            journal = Journal(paths.journals / shard_name(index, ".jsonl"))
            shard = Shard(index, list(source.questions(index * per_shard, (index + 1) * per_shard)), journal,
                          policy)
            if shard.replay():
                logger.info("generate: shard %d: %d of %d questions already journaled", index,
                            sum(p.closed is not None for p in shard.progress.values()), len(shard.questions))
            loaded.append(shard)
            for q in shard.questions:
                r = request(shard, q)
                if r is not None:
                    yield r
            shard.all_sent = True
            if shard.done:  # nothing was left to send, or every answer is already back
                finished.append(shard)

    def next_pass() -> Iterator[TeacherRequest]:
        for shard in loaded:
            if not shard.compacted:
                for q in shard.questions:
                    r = request(shard, q)
                    if r is not None:
                        yield r

    requests, passes = first_pass(), 0
    while True:
        passes += 1
        answered = 0
        for done in teacher.generate(requests):
            pending = waiting.pop(done.key)
            answered += 1
            if done.error:
                logger.warning("question %s (row %d) failed: %s", pending.question.question_id,
                               pending.question.source_row, done.error)
            elif done.missing:
                logger.warning("question %s (row %d): %d samples short", pending.question.question_id,
                               pending.question.source_row, done.missing)
            pending.shard.record(pending.answered(done, config, seconds()))
            if pending.shard.done and pending.shard not in finished:
                finished.append(pending.shard)
            while finished:
                yield compact(finished.pop(), paths)
        finished.extend(s for s in loaded if s.done and s not in finished)  # closed by a skipped request
        while finished:
            yield compact(finished.pop(), paths)
        if all(s.compacted for s in loaded):
            return
        if not answered:  # cannot happen: every pass moves every open question on
            raise RuntimeError("generate: a pass sent nothing while questions are still open")
        logger.info("generate: pass %d: %d questions still open", passes + 1,
                    sum(policy.next(p) is not None for s in loaded if not s.compacted for p in s.progress.values()))
        requests = next_pass()


def generate(config: RunConfig, teacher: Teacher | None = None,
             part: tuple[int, int] | None = None) -> dict[str, Any]:
    """The stage's work, in a folder the runner has claimed: every shard not yet written, resuming its journal.
    `teacher`: one already built (benchmarks, notebooks); else the configured backend is started.
    `part` (i, K), a job array's part: only the shards whose index is i modulo K; its stats go to parts/, and the
    stage's own stats.json is written by a run without a part once every part is done."""
    from tqdm import tqdm

    paths = config.paths
    source = QuestionSource(config.data)
    per_shard = config.generate.questions_per_shard
    num_shards = math.ceil(len(source) / per_shard)
    shards = list(range(num_shards))
    if part is not None:
        shards = plan_part(paths, part, num_shards)
    elif paths.missing_parts():
        raise RuntimeError(paths.parts_missing_message())
    # The temporary files of these shards only: the other parts of a job array may be writing theirs.
    remove_stale_tmp(paths.samples, [shard_name(i) for i in shards])
    remove_stale_tmp(paths.generate_meta, [shard_name(i, ".json") for i in shards])

    todo = []
    for i in shards:
        if (paths.samples / shard_name(i)).exists() and (paths.generate_meta / shard_name(i, ".json")).exists():
            (paths.journals / shard_name(i, ".jsonl")).unlink(missing_ok=True)  # compacted, then killed
        else:
            todo.append(i)
    logger.info("generate: %d questions in %d shards, %d to do%s", len(source), num_shards, len(todo),
                f" (part {part[0]}/{part[1]}: {len(shards)} shards)" if part else "")
    if todo:
        template = PromptTemplate(config.generate.prompt, config.generate.examples)
        own_teacher = teacher is None
        if config.generate.cache.enabled:  # the backend is started at the first miss, if any
            from cotdistill.teachers.cache import CachedTeacher, RequestCache

            given = teacher
            teacher = CachedTeacher(config.teacher, teacher_settings(config.teacher),
                                    RequestCache.open(config.generate.cache),
                                    build=lambda: given or build_teacher(config.teacher, config.seed))
        teacher = teacher or build_teacher(config.teacher, config.seed)
        try:
            for _ in tqdm(generate_shards(teacher, source, todo, template, config), total=len(todo),
                          desc="generate shards", unit="shard"):
                pass
        finally:
            if own_teacher:  # a teacher handed in stays open, cached or not
                teacher.close()

    stats = summarize(paths, shards, config)
    if part is not None:
        write_json_atomic(stats, paths.part_stats(*part))
        logger.info("generate: part %d/%d done (%s); once every part is, `cotdistill run` (or generate) without "
                    "--part combines their stats and goes on", part[0], part[1], paths.part_stats(*part))
        return stats
    write_json_atomic(stats, paths.generate / "stats.json")
    logger.info("generate: %s", {k: v for k, v in stats.items() if k not in ("skipped", "failed", "short")})
    return stats


def plan_part(paths: RunPaths, part: tuple[int, int], num_shards: int) -> list[int]:
    """Part i of K's shards (index = i mod K), after checking that every part plans the same K and shards: the
    first part to start writes the plan, the others must agree with it."""
    index, count = part
    plan = {"parts": count, "shards": num_shards}
    if not create_json_once(plan, paths.parts_plan) and read_json(paths.parts_plan) != plan:
        raise RuntimeError(f"{paths.parts_plan} plans {read_json(paths.parts_plan)}, but this is --part "
                           f"{index}/{count} of {num_shards} shards: run every part with the same K")
    return list(range(index, num_shards, count))


def summarize(paths: RunPaths, shards: list[int], config: RunConfig) -> dict[str, Any]:
    metas = [read_json(paths.generate_meta / shard_name(i, ".json")) for i in shards]
    seconds = sum(m["seconds"] for m in metas)
    prompt = sum(m["prompt_tokens"] for m in metas)
    completion = sum(m["completion_tokens"] for m in metas)
    stats = {
        "shards": len(shards),
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
        "short": [s for m in metas for s in m.get("short", [])],  # metas of older runs have none
        "num_short": sum(len(m.get("short", [])) for m in metas),
        "retries": sum(m["retries"] for m in metas),
    }
    stats.update(rounds_stats(metas))
    caches = [m["cache"] for m in metas if "cache" in m]
    if caches:  # generate.cache on: the requests answered from it, and the tokens they would have cost
        stats["cache"] = {key: sum(c[key] for c in caches) for key in caches[0]}
    reasoning = [m["reasoning"] for m in metas if "reasoning" in m]
    if reasoning:  # the teacher's thinking: its tokens, and how often the budget closed it
        total = {key: sum(r[key] for r in reasoning) for key in reasoning[0]}
        stats["reasoning"] = {"reasoning_tokens": total["reasoning_tokens"],
                              "reasoning_tokens_mean": round(total["reasoning_tokens"] / total["rationales"], 2),
                              "budget_hits": total["budget_hits"]}
    if config.generate.logprobs:
        # What the logprob columns (token ids, top-k ids and logprobs) add on disk, per completion token.
        stored = sum(column_bytes(paths.samples / shard_name(i), LOGPROB_COLUMNS) for i in shards)
        stats["logprobs_k"] = config.generate.logprobs
        stats["logprob_bytes"] = stored
        stats["logprob_bytes_per_token"] = round(stored / completion, 2) if completion else None
    price_in, price_out = config.teacher.openai.price_per_million_input, config.teacher.openai.price_per_million_output
    if config.teacher.backend == "openai" and (price_in or price_out):
        stats["estimated_cost"] = round((prompt * (price_in or 0) + completion * (price_out or 0)) / 1e6, 6)
    return stats


def rounds_stats(metas: list[dict[str, Any]]) -> dict[str, Any]:
    """generate.adaptive's and generate.rationalize's totals (nothing when both are off)."""
    stats: dict[str, Any] = {}
    adaptive = [m["adaptive"] for m in metas if "adaptive" in m]
    if adaptive:
        questions = sum(a["questions"] for a in adaptive)

        def mean(key: str) -> float | None:
            return round(sum(a[key] for a in adaptive) / questions, 3) if questions else None

        stats["adaptive"] = {
            "questions": questions,
            "samples_per_question_mean": mean("samples"),
            "rounds_mean": mean("rounds"),
            # why each question stopped: target_correct reached (gold), the stopping rule (majority), the N cap
            "closed": {why: sum(a["closed"][why] for a in adaptive) for why in adaptive[0]["closed"]},
        }
    hinted = [m["rationalized"] for m in metas if "rationalized" in m]
    if hinted:
        stats["rationalized"] = {key: sum(h[key] for h in hinted) for key in hinted[0]}
    return stats


def shards_written(config: RunConfig) -> bool:
    """Every shard the summary counts is on disk (with `teachers`: every teacher's, under its fingerprint)."""
    if config.teachers:
        return all(TEACHER_STAGE.is_complete(run) for run in config.teacher_runs())
    stats = read_json_or_none(config.paths.generate / "stats.json")
    return stats is not None and len(list_shards(config.paths.samples)) == stats["shards"]


def generate_teachers(config: RunConfig, teacher: Teacher | None = None, part: tuple[int, int] | None = None,
                      force: bool = False) -> dict[str, Any]:
    """The stage's work: one teacher's (generate), or with `teachers` each one's in turn, each through the stage
    runner in its own folder: a finished teacher is skipped, one whose settings changed refused (unless forced),
    a new one generated; then the summed stats, with each teacher's under `teachers`."""
    if not config.teachers:
        return generate(config, teacher, part)
    if teacher is not None:
        raise ValueError("generate: a teacher built beforehand serves a run of one teacher, not `teachers`")
    per_teacher = {}
    for run in config.teacher_runs():
        logger.info("generate: teacher %s (%s)", run.teacher_name, run.teacher.model)
        per_teacher[run.teacher_name] = TEACHER_STAGE.run(run, force=force, **({"part": part} if part else {}))
    if part is not None:
        return {"teachers": per_teacher}
    summed = ("rationales", "prompt_tokens", "completion_tokens", "generation_seconds", "truncated", "num_skipped",
              "num_failed", "num_short", "retries")
    stats = {"shards": max(s["shards"] for s in per_teacher.values()),
             "questions": max(s["questions"] for s in per_teacher.values()),
             **{key: sum(s[key] for s in per_teacher.values()) for key in summed},
             "teachers": per_teacher}
    write_json_atomic(stats, config.paths.generate / "stats.json")
    logger.info("generate: %d rationales from %d teachers", stats["rationales"], len(per_teacher))
    return stats


# One teacher's generate, in its own folder: what a run of one teacher is, and each teacher of several.
TEACHER_STAGE = Stage(
    name="generate", help="one teacher's rationales", fingerprint=teacher_fingerprint, outputs_complete=shards_written,
    work=generate,
    # Remaking teacher rationales costs hours or money: settings changed under finished shards stop the run.
    on_change="refuse",
)
STAGE = Stage(
    name="generate", help="teacher rationales with vLLM -> runs/<run>/generate/samples/*.parquet",
    fingerprint=fingerprint, outputs_complete=shards_written, work=generate_teachers, passes_force=True,
    # One teacher: refused (above). Several: a teacher added or removed changes only the list; each teacher's
    # folder refuses its own changed settings.
    on_change=lambda config: "keep" if config.teachers else "refuse",
)
run, is_complete = STAGE.run, STAGE.is_complete
