"""generate: Question -> prompt -> N teacher rationales -> Sample shards.

    cotdistill generate pipelines/demo.yaml            [--force] [--dry-run]

Questions are cut into shards of `generate.questions_per_shard`. The questions of every unfinished shard stream
through the teacher (cotdistill/teachers/: a local vLLM engine, an OpenAI-compatible server, or Ray actors), one
request of `SamplingParams(n=N)` per question, so the N samples share one prefill; the teacher keeps requests in
flight across shard boundaries. Each question whose samples are all back is appended at once to its shard's
journal (`generate/journal/00003.jsonl`, flushed and fsynced); a shard whose questions are all in is written as
`generate/meta/00003.json` then `generate/samples/00003.parquet`, and its journal removed. A rerun skips finished
shards, reads the journals and sends only the questions missing: a crash loses at most the requests in flight.

`generate.adaptive` samples in rounds instead: each open question is sent n = round_size (b), its answer journaled
at once as a round record, and it closes when `target_correct` of its rationales reach the gold (filter.label gold)
or, without gold (label majority), when the stopping rule (stopping.should_stop: Adaptive-Consistency's `beta` or
ESC's `window`) says its majority answer is settled, else at N samples. The verdict is the filter's own
(filter/judge.py rationale_reaches_gold: the answer format's extract and is_correct, a truncated rationale never
counting), so generate and filter cannot disagree. Sample indices go on across rounds (round 2 holds b..2b-1).

The rounds run as successive passes: pass 1 walks the shards lazily as fixed N does (with fixed N it is the whole
run); every later pass sends each still-open question of the unfinished shards its next round, the teacher drains
them, and so on until none is open. This is how Adaptive-Consistency batches its rounds, and it keeps the teacher
interface as it is (a stream of requests in, finished ones out): feeding follow-up rounds into the one stream
would need the request iterator to say "nothing now, ask again later", which a generator cannot, and a change to
all three backends. The cost is the tail of each pass, a few seconds of a partly idle engine per round.

A question's progress (samples, rounds, correct ones, why it closed) is a pure function of its journal records
(Policy.absorb), rebuilt by a rerun, which then sends only the next round: a kill between or inside rounds loses
only the requests in flight, and no (question, sample_index) is written twice. Each row records its `round`, and
every row of a question the question's `rounds`.

`generate.rationalize` (STaR): a question that ends with no rationale reaching the gold is asked once more with
`rationalize_prompt`, which is given the gold as `hint`. Its rationales are stored with rationalized = true, the
question's ordinary prompt_messages / prompt_text (train builds the student's prompt from the question alone) and
the prompt really sent in hint_prompt_text; no logprobs are asked for them (the distribution after the hint would
pass it on to a KD student). The filter drops those that quote the hint (quotes_hint).

Here: the stage (fingerprint, the request loop generate_shards, run, stats); progress.py where each question
stands and what it is sent next; compaction.py rows as journaled and the shard written; dry_run.py --dry-run.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from cotdistill.config import RunConfig
from cotdistill.fingerprints import (
    changed_keys, data_fingerprint, file_digest, make_fingerprint, matches, read_fingerprint, template_fingerprint,
    write_fingerprint,
)
from cotdistill.generate.compaction import compact, logprob_bytes, sample_rows
from cotdistill.generate.dry_run import dry_run
from cotdistill.generate.progress import Policy, Progress, Shard
from cotdistill.prompts import PromptTemplate
from cotdistill.records import Question
from cotdistill.shards import (
    Journal, list_shards, read_json, read_json_or_none, remove_stale_tmp, shard_name, write_json_atomic,
)
from cotdistill.sources import QuestionSource
from cotdistill.teachers import (
    Sampling, Teacher, TeacherRequest, build_teacher, prompt_too_long, render_prompt, teacher_settings,
)

__all__ = ["Policy", "Progress", "SettingsChanged", "dry_run", "fingerprint", "is_complete", "logprob_bytes", "run"]

logger = logging.getLogger(__name__)


def request_seed(base_seed: int, question_id: str) -> int:
    """A per-question seed that does not depend on shard order (used when seed_per_request is on)."""
    digest = hashlib.sha1(f"{base_seed}:{question_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class SettingsChanged(RuntimeError):
    """generate's outputs were made with other settings; regenerating is costly, so it is never implicit."""


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """What the shards' contents depend on: data, teacher weights and engine, prompt, sampling, seed."""
    return make_fingerprint({
        "data": {**vars(config.data), "contents": data_fingerprint(config.data.path)},
        "teacher": teacher_settings(config.teacher),
        "generate": generate_settings(config),
        "seed": config.seed,
    })


def generate_settings(config: RunConfig) -> dict[str, Any]:
    """generate's settings as fingerprinted. adaptive and rationalize appear only when on, so a fixed-N run keeps
    the fingerprint it had before they existed; when on, so does what their verdicts depend on (the filter's
    answer format and label)."""
    gen = config.generate
    extra = ("adaptive", "rationalize", "rationalize_prompt", "rationalize_samples")
    settings = {**{k: v for k, v in vars(gen).items() if k not in extra},
                "prompt_template": template_fingerprint(gen.prompt),
                "examples_file": file_digest(gen.examples) if gen.examples else None}
    if gen.adaptive is not None:
        settings["adaptive"] = asdict(gen.adaptive)
    if gen.rationalize:
        settings["rationalize"] = {"samples": gen.rationalize_samples, "prompt": gen.rationalize_prompt,
                                   "prompt_template": template_fingerprint(gen.rationalize_prompt)}
    if gen.adaptive is not None or gen.rationalize:
        settings["answer_check"] = {"answer_format": config.filter.answer_format, "label": config.filter.label}
    return settings


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


def generate_shards(teacher: Teacher, source: QuestionSource, todo: list[int], template: PromptTemplate,
                    config: RunConfig, out_dir: Path) -> Iterator[dict[str, Any]]:
    """The core: send the `todo` shards' questions through the teacher, journal every request's answer at once,
    and compact each shard as it completes (yielding its meta).

    In passes: the first walks the shards lazily (the teacher pulls requests while earlier ones run, across shard
    boundaries) and sends each question its next request: with fixed N the only one, so one pass is the whole
    run. Every later pass sends each question still open its next round (or its rationalization), until none is."""
    gen, per_shard = config.generate, config.generate.questions_per_shard
    policy = Policy(config)
    tokenizer, context = teacher.tokenizer(), teacher.max_model_len()
    hint_template = PromptTemplate(gen.rationalize_prompt, gen.examples) if gen.rationalize else None
    waiting: dict[str, tuple[Shard, Question, dict[str, Any]]] = {}  # request key -> what its record needs
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
        messages = template.render(question=q.question, choices=q.choices)
        text, ids = render_prompt(tokenizer, messages) if tokenizer is not None else ("", None)
        sent, sent_text, sent_ids, hint_text = messages, text, ids, None
        if kind == "hint":  # the student's prompt stays the ordinary one; this one is kept for audit only
            sent = hint_template.render(question=q.question, choices=q.choices, hint=q.gold_answer)
            sent_text, sent_ids = render_prompt(tokenizer, sent) if tokenizer is not None else ("", None)
            hint_text = sent_text or "\n\n".join(f"{m['role']}: {m['content']}" for m in sent)
        seed = request_seed(config.seed, q.question_id) if gen.seed_per_request else config.seed
        round_number = p.rounds + 1 if kind == "round" else None
        too_long = prompt_too_long(len(sent_ids), context) if sent_ids is not None else None
        if too_long:
            logger.warning("skipped question %s (row %d)%s: %s", q.question_id, q.source_row,
                           " rationalization" if kind == "hint" else "", too_long)
            shard.record({"question_id": q.question_id, "source_row": q.source_row, "samples": [],
                          "prompt_tokens": 0, "seconds": 0.0, "retries": 0, "skipped": too_long, "error": None,
                          "round": round_number, "rationalize": kind == "hint"})
            return None
        max_tokens = (min(gen.max_tokens, context - len(sent_ids)) if context and sent_ids is not None
                      else gen.max_tokens)
        waiting[q.question_id] = (shard, q, {
            "messages": messages, "text": text, "seed": seed, "start": p.sampled, "hint_text": hint_text,
            "round": round_number,
            "row_round": round_number if policy.adaptive is not None else None,
            "rationalized": (kind == "hint") if gen.rationalize else None,
        })
        return TeacherRequest(
            key=q.question_id, messages=sent, prompt_text=sent_text, prompt_token_ids=sent_ids,
            # A per-request seed goes on from the samples already drawn: vLLM seeds sample i of a request with
            # seed + i, so round after round gives the samples that one request of N would have given.
            sampling=Sampling(n=n, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k,
                              max_tokens=max_tokens, stop=list(gen.stop),
                              seed=seed + p.sampled if gen.seed_per_request else None,
                              # a distribution after the hint prompt would pass the hint on to a KD student
                              logprobs=gen.logprobs if kind == "round" else None),
        )

    def first_pass() -> Iterator[TeacherRequest]:
        for index in todo:
            journal = Journal(out_dir / "journal" / shard_name(index, ".jsonl"))
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
            shard, q, sent = waiting.pop(done.key)
            answered += 1
            if done.error:
                logger.warning("question %s (row %d) failed: %s", q.question_id, q.source_row, done.error)
            shard.record({"question_id": q.question_id, "source_row": q.source_row,
                          "samples": sample_rows(done, q, sent["messages"], sent["text"], config, sent["seed"],
                                                 sent["start"], sent["row_round"], sent["rationalized"],
                                                 sent["hint_text"]),
                          "prompt_tokens": done.prompt_tokens, "seconds": seconds(), "retries": done.retries,
                          "skipped": None, "error": done.error, "round": sent["round"],
                          "rationalize": sent["round"] is None})
            if shard.done and shard not in finished:
                finished.append(shard)
            while finished:
                yield compact(finished.pop(), out_dir)
        finished.extend(s for s in loaded if s.done and s not in finished)  # closed by a skipped request
        while finished:
            yield compact(finished.pop(), out_dir)
        if all(s.compacted for s in loaded):
            return
        if not answered:  # cannot happen: every pass moves every open question on
            raise RuntimeError("generate: a pass sent nothing while questions are still open")
        logger.info("generate: pass %d: %d questions still open", passes + 1,
                    sum(policy.next(p) is not None for s in loaded if not s.compacted for p in s.progress.values()))
        requests = next_pass()


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
    stats.update(rounds_stats(metas))
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


def is_complete(config: RunConfig) -> bool:
    """Every shard written, and made with today's settings."""
    out_dir = config.run_dir / "generate"
    stats = read_json_or_none(out_dir / "stats.json")
    if stats is None or not matches(out_dir, fingerprint(config)):
        return False
    return len(list_shards(out_dir / "samples")) == stats["shards"]
