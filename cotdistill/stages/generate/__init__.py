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
from collections import Counter
from dataclasses import asdict
from typing import Any

from cotdistill.config.run import RunConfig
from cotdistill.core.fingerprints import data_settings, file_digest, make_fingerprint, template_fingerprint
from cotdistill.core.paths import GENERATE, RunPaths
from cotdistill.core.prompts import PromptTemplate
from cotdistill.core.records import LOGPROB_COLUMNS
from cotdistill.core.shards import (
    Journal, column_bytes, create_json_once, list_shards, read_json, read_json_or_none, remove_stale_tmp, shard_name,
    write_json_atomic,
)
from cotdistill.questions.sources import QuestionSource
from cotdistill.stages.base import InputsMissing, Option, SettingsChanged, Stage
from cotdistill.stages.generate.dry_run import dry_run
from cotdistill.stages.generate.requests import RequestLoop
from cotdistill.teachers import backend_of, build_teacher, teacher_settings
from cotdistill.teachers.base import Teacher
from cotdistill.verify.answers import format_settings
from cotdistill.verify.judging import sandbox_settings, teacher_answer_format

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
    data = data_settings(config.data)
    if config.generate.adaptive is None and not config.generate.rationalize:
        data.pop("answer_kind_field", None)  # only judging reads it: the filter's fingerprint holds it
    return make_fingerprint({
        "data": data,
        "teacher": teacher_settings(config.teacher),
        "generate": generate_settings(config),
        "seed": config.seed,
    })


def generate_settings(config: RunConfig) -> dict[str, Any]:
    """generate's settings as fingerprinted. adaptive and rationalize appear only when on, so a fixed-N run keeps
    the fingerprint it had before they existed; when on, so does what their verdicts depend on (the filter's
    answer format and label)."""
    gen = config.generate
    # the request cache changes what is paid for, never a row; max_failed_fraction only whether the stage ends well
    extra = ("adaptive", "rationalize", "rationalize_prompt", "rationalize_samples", "max_reasoning_tokens",
             "cache", "max_failed_fraction")
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
        settings["answer_check"] = {"answer_format": config.filter.answer_format, "label": config.filter.label,
                                    **format_settings(teacher_answer_format(config))}
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
        shards = plan_part(config, part, num_shards)
    # The temporary files of these shards only: the other parts of a job array may be writing theirs.
    remove_stale_tmp(paths.samples, [shard_name(i) for i in shards])
    remove_stale_tmp(paths.generate_meta, [shard_name(i, ".json") for i in shards])

    todo = []
    for i in shards:
        if shard_done(paths, i):
            Journal(paths.journals / shard_name(i, ".jsonl")).remove()  # compacted, then killed
        else:
            todo.append(i)  # never written, or written with failed questions: its journal sends those again
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
        questions = sum(min(per_shard, len(source) - i * per_shard) for i in todo)
        bar = tqdm(total=questions, desc=f"generate{f' {config.teacher_name}' if config.teacher_name else ''}",
                   unit="question")
        try:
            for _ in RequestLoop(teacher, source, todo, template, config, bar).shards():
                pass
        finally:
            bar.close()
            if own_teacher:  # a teacher handed in stays open, cached or not
                teacher.close()

    stats = summarize(paths, shards, config)
    check_failures(stats, config, part)
    if part is not None:
        write_json_atomic(stats, paths.part_stats(*part))
        missing = paths.missing_parts()
        if missing:
            logger.info("generate: part %d/%d done (%s); %d parts still to finish, and the last one to finish "
                        "completes the stage", part[0], part[1], paths.part_stats(*part), len(missing))
            return stats
        logger.info("generate: part %d/%d was the last one: the stage is complete", *part)
        shards = list(range(num_shards))  # every part's: the stage's summary
        stats = summarize(paths, shards, config)
    if paths.journals.is_dir() and not any(paths.journals.iterdir()):
        paths.journals.rmdir()  # every shard compacted (every part done): no empty folder left behind
    write_json_atomic(stats, paths.generate / "stats.json")
    logger.info("generate: %s", {k: v for k, v in stats.items() if k not in ("skipped", "failed", "short")})
    return stats


def shard_done(paths: RunPaths, index: int) -> bool:
    """A shard compacted with every question answered (one with failed or short questions is sent again)."""
    meta = read_json_or_none(paths.generate_meta / shard_name(index, ".json"))
    return (meta is not None and (paths.samples / shard_name(index)).exists() and not meta["failed"]
            and not meta.get("short"))


def check_failures(stats: dict[str, Any], config: RunConfig, part: tuple[int, int] | None) -> None:
    """Stop non-zero when more questions failed than generate.max_failed_fraction allows: the shards and the
    journals of their failed questions stay, and the stage's summary is not written, so nothing downstream
    starts on an incomplete corpus."""
    failed = stats["failed"] + [{"reason": f"{s['missing']} samples short"} for s in stats["short"]]
    allowed = config.generate.max_failed_fraction
    if not failed or len(failed) <= allowed * stats["questions"]:
        return
    reasons = Counter(f["reason"][:200] for f in failed).most_common(1)[0]
    command = f"cotdistill generate CONFIG{f' --part {part[0]}/{part[1]}' if part else ''}"
    raise GenerateFailed(
        f"generate: {len(failed)} of {stats['questions']} questions failed ({len(failed) / stats['questions']:.1%}, "
        f"above generate.max_failed_fraction {allowed:g}); the commonest reason ({reasons[1]}x): {reasons[0]}. "
        f"Everything answered is kept: once the cause is fixed, rerun `{command}` with the same settings to send "
        "only the failed questions again")


class GenerateFailed(RuntimeError):
    """More questions failed than generate.max_failed_fraction allows."""


def plan_part(config: RunConfig, part: tuple[int, int], num_shards: int) -> list[int]:
    """Part i of K's shards (index = i mod K). The first part to start writes the plan, with its overrides: the
    later parts run with them too (the command line inherits them: recorded_overrides), and check_parts has
    refused any part that plans otherwise."""
    index, count = part
    create_json_once({"parts": count, "shards": num_shards, "overrides": list(config.overrides)},
                     config.paths.parts_plan)
    return list(range(index, num_shards, count))


def check_parts(config: RunConfig, part: tuple[int, int] | None = None, **options: Any) -> None:
    """Before anything is written: each teacher can answer (a served one's servers are there); a part must plan
    what the first part planned (K, the shards); a run without --part never starts while parts of a job array are
    not done (it would generate their shards twice)."""
    for run in config.teacher_runs():
        if not run.generate.cache.enabled:  # (with the cache, every request may hit: the teacher is asked then)
            backend_of(run.teacher).check(run.teacher)  # a served teacher with no server: stop before writing
        paths = run.paths
        if part is None:
            if paths.missing_parts():
                raise InputsMissing(paths.parts_missing_message())
            continue
        plan = read_json_or_none(paths.parts_plan)
        if plan is None:
            continue
        num_shards = math.ceil(len(QuestionSource(run.data)) / run.generate.questions_per_shard)
        if (plan["parts"], plan["shards"]) != (part[1], num_shards):
            raise SettingsChanged(f"{paths.parts_plan} plans {plan['parts']} parts of {plan['shards']} shards, and "
                                  f"this is --part {part[0]}/{part[1]} of {num_shards} shards: run every part with "
                                  "the same K and the same settings")


def recorded_overrides(config: RunConfig) -> list[str] | None:
    """The overrides the first part of a job array ran with (None: no part has started): every later part inherits
    them, so that `--part I/K` needs no more than the first part's command line with another I."""
    plans = [read_json_or_none(run.paths.parts_plan) for run in config.teacher_runs()]
    return next((plan.get("overrides", []) for plan in plans if plan is not None), None)


def summarize(paths: RunPaths, shards: list[int], config: RunConfig) -> dict[str, Any]:
    metas = [read_json(paths.generate_meta / shard_name(i, ".json")) for i in shards]
    seconds = sum(m["seconds"] for m in metas)
    prompt = sum(m["prompt_tokens"] for m in metas)
    completion = sum(m["completion_tokens"] for m in metas)
    generated = sum(m.get("generated_tokens", m["completion_tokens"]) for m in metas)  # older metas: all generated
    stats = {
        "shards": len(shards),
        "questions": sum(m["questions"] for m in metas),
        "rationales": sum(m["rationales"] for m in metas),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "generation_seconds": round(seconds, 3),
        # tokens the teacher generated in this stage over its time (what the request cache answered is not here)
        "tokens_per_s": round(generated / seconds, 2) if seconds and generated else None,
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
    """Every shard the summary counts is on disk, each with every question answered (with `teachers`: every
    teacher's, under its fingerprint): a failed question is not done work."""
    if config.teachers:
        return all(STAGE.is_complete(run) for run in config.teacher_runs())
    stats = read_json_or_none(config.paths.generate / "stats.json")
    return (stats is not None and len(list_shards(config.paths.samples)) == stats["shards"]
            and all(shard_done(config.paths, i) for i in range(stats["shards"])))


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
    preflight=read_questions, checks=check_parts,
    options=(
        Option("--part", "a job array's part I of K (0 <= I < K): generate only the shards whose index is I modulo "
               "K; K processes or Slurm array tasks share one run folder, the parts after the first run with its "
               "overrides, and the last part to finish completes the stage", parse=part_of, metavar="I/K",
               alone=True, inherits=recorded_overrides),
        Option("--dry-run", "count the requests, prompt tokens and estimated cost; send nothing",
               instead=show_dry_run),
    ),
    example="generate.num_samples=4",
)
