"""generate: Question -> prompt -> N teacher rationales -> Sample shards.

    cotdistill generate pipelines/demo.yaml            [--force] [--dry-run] [--part I/K]

Questions are cut into shards of `generate.questions_per_shard`, and every unfinished shard's questions stream
through the teacher (cotdistill/teachers/), one request of n=N per question so the N samples share one prefill;
the teacher keeps requests in flight across shard boundaries, so the engine never drains between shards. Each
answered question is journaled at once (generate/journal/, flushed, fsynced by group commit) and a shard whose
questions are all in is compacted into its meta and Parquet file: a crash loses at most the requests in flight,
and a rerun sends only what its journals lack.

`generate.adaptive` samples in rounds and closes a question once enough of its rationales reach the gold, or its
majority is settled (verify/judging.py and verify/stopping.py: the filter's own verdicts, so generate and filter cannot
disagree); `generate.rationalize` (STaR) asks a question left with none once more with the gold as a hint, and
keeps its ordinary prompt on the rows. Rounds run as successive passes over the open questions, so the teacher
interface stays a stream of requests in, answers out; the price is the tail of each pass.

Here: the stage (its fingerprint, its work, the summary); requests.py the request loop; progress.py where each
question stands and what it is sent next; compaction.py what is in flight, the journal records and the shard
written; dry_run.py --dry-run.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict
from typing import Any

from cotdistill.config.run import RunConfig
from cotdistill.core.fingerprints import data_settings, file_digest, make_fingerprint, template_fingerprint
from cotdistill.core.paths import GENERATE, RunPaths
from cotdistill.core.prompts import PromptTemplate
from cotdistill.core.records import LOGPROB_COLUMNS
from cotdistill.core.shards import (
    column_bytes, create_json_once, list_shards, read_json, read_json_or_none, remove_stale_tmp, shard_name,
    write_json_atomic,
)
from cotdistill.questions.sources import QuestionSource
from cotdistill.stages.base import Option, Stage
from cotdistill.stages.generate.dry_run import dry_run
from cotdistill.stages.generate.requests import RequestLoop
from cotdistill.teachers import backend_of, build_teacher, teacher_settings
from cotdistill.teachers.base import Teacher
from cotdistill.verify.judging import sandbox_settings

logger = logging.getLogger(__name__)


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
            for _ in tqdm(RequestLoop(teacher, source, todo, template, config).shards(), total=len(todo),
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
    price = backend_of(config.teacher).price(config.teacher)
    if price is not None:
        stats["estimated_cost"] = round((prompt * price[0] + completion * price[1]) / 1e6, 6)
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
        return all(STAGE.is_complete(run) for run in config.teacher_runs())
    stats = read_json_or_none(config.paths.generate / "stats.json")
    return stats is not None and len(list_shards(config.paths.samples)) == stats["shards"]


def generate_teachers(config: RunConfig, teacher: Teacher | None = None, part: tuple[int, int] | None = None,
                      force: bool = False) -> dict[str, Any]:
    """The stage's work: one teacher's (generate), or with `teachers` each one's in turn, each through this same
    stage in its own folder (the run as that teacher sees it): a finished teacher is skipped, one whose settings
    changed refused (unless forced), a new one generated; then the summed stats, with each teacher's under
    `teachers`."""
    if not config.teachers:
        return generate(config, teacher, part)
    if teacher is not None:
        raise ValueError("generate: a teacher built beforehand serves a run of one teacher, not `teachers`")
    per_teacher = {}
    for run in config.teacher_runs():
        logger.info("generate: teacher %s (%s)", run.teacher_name, run.teacher.model)
        per_teacher[run.teacher_name] = STAGE.run(run, force=force, part=part)
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


def part_of(text: str) -> tuple[int, int]:
    """`--part I/K` -> (I, K)."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/K, e.g. 0/4") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text!r}: I must be at least 0 and less than K")
    return index, count


def read_questions(config: RunConfig) -> None:
    """Every question row read now: a bad one fails before any engine starts (SourceError names it)."""
    QuestionSource(config.data)


def show_dry_run(config: RunConfig) -> str:
    QuestionSource(config.data)  # a bad row fails here as it would in the run
    plan = dry_run(config)
    return "generate --dry-run (nothing sent): " + ", ".join(f"{k} {v:,}" for k, v in plan.items())


STAGE = Stage(
    outputs=GENERATE, help="teacher rationales with vLLM -> runs/<run>/generate/samples/*.parquet",
    fingerprint=fingerprint, outputs_complete=shards_written, work=generate_teachers, passes_force=True,
    # Remaking teacher rationales costs hours or money: settings changed under finished shards stop the run. With
    # several teachers the stage holds each teacher's run in its own folder, which refuses its own changed settings;
    # a teacher added or removed changes only the list.
    on_change=lambda config: "keep" if config.teachers else "refuse",
    preflight=read_questions,
    options=(
        Option("--part", "a job array's part I of K (0 <= I < K): generate only the shards whose index is I modulo "
               "K, then stop; K processes or Slurm array tasks share one run folder", parse=part_of, metavar="I/K",
               alone=True),
        Option("--dry-run", "count the requests, prompt tokens and estimated cost; send nothing",
               instead=show_dry_run),
    ),
)
