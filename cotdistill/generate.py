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
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cotdistill.answers import get_answer_format, group_equivalent
from cotdistill.config import RunConfig
from cotdistill.filter.judge import rationale_reaches_gold
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
from cotdistill.stopping import should_stop
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


@dataclass
class Progress:
    """Where one question stands: what its journal records add up to. Built by Policy.absorb, the same way live and
    when a rerun replays the journal, so a resumed question goes on exactly where it stopped."""

    sampled: int = 0  # ordinary samples back (sample_index of the next one)
    rounds: int = 0  # ordinary requests back
    correct: int = 0  # of those samples, the ones reaching the gold (filter.label gold)
    answers: list[str | None] = field(default_factory=list)  # their answers, for the stopping rule (label majority)
    closed: str | None = None  # why sampling ended: fixed | target | rule | cap | skipped | error
    hinted: bool = False  # its rationalization request is back (or was skipped)


class Policy:
    """When a question is done, and what it is sent next: fixed N (one request of n=N), adaptive rounds, and the
    STaR rationalization after them. Pure over the journaled records."""

    def __init__(self, config: RunConfig):
        gen = config.generate
        self.gen, self.adaptive, self.label = gen, gen.adaptive, config.filter.label
        # The filter's own answer check (filter/judge.py), only when a verdict is needed here.
        self.fmt = get_answer_format(config.filter.answer_format) if gen.adaptive or gen.rationalize else None

    def absorb(self, p: Progress, record: dict[str, Any], q: Question) -> bool:
        """Add one journaled record to the question's progress; False for a record that does not follow on (a
        duplicate), which is then ignored, here and at compaction (Shard.taken)."""
        if record.get("rationalize"):
            if p.closed is None or p.hinted or not self.needs_hint(p):
                return False
            p.hinted = True
            return True
        if p.closed is not None or record.get("round", 1) != p.rounds + 1:
            return False
        if record["skipped"]:
            p.closed = "skipped"
            return True
        p.rounds += 1
        if record["error"] or not record["samples"]:
            p.closed = "error"
            return True
        for row in record["samples"]:
            p.sampled += 1
            if self.fmt is not None and self.label == "gold":
                p.correct += rationale_reaches_gold(row["rationale"], row["finish_reason"], q.gold_answer,
                                                    q.choices, self.fmt)
            elif self.fmt is not None and self.label == "majority":
                # A vote as the filter's majority counts it: a finished rationale's answer; else no vote.
                text = row["rationale"] or ""
                finished = row["finish_reason"] != "length" and text.strip()
                p.answers.append(self.fmt.extract(text, q.choices).answer if finished else None)
        p.closed = self.close_reason(p)
        return True

    def close_reason(self, p: Progress) -> str | None:
        ad = self.adaptive
        if ad is None:
            return "fixed"
        if self.label == "gold" and p.correct >= ad.target_correct:
            return "target"
        if self.label == "majority" and should_stop(group_equivalent(p.answers, self.fmt), ad.rule, ad.confidence,
                                                    ad.window):
            return "rule"
        return "cap" if p.sampled >= self.gen.num_samples else None

    def needs_hint(self, p: Progress) -> bool:
        """STaR: sampling over, and no rationale reached the gold."""
        return self.gen.rationalize and p.closed in ("fixed", "target", "rule", "cap") and p.correct == 0

    def next(self, p: Progress) -> tuple[str, int] | None:
        """("round", n), ("hint", n), or None when the question is done."""
        if p.closed is None:
            n = self.gen.num_samples if self.adaptive is None else min(self.adaptive.round_size,
                                                                        self.gen.num_samples - p.sampled)
            return "round", n
        if self.needs_hint(p) and not p.hinted:
            return "hint", self.gen.rationalize_samples
        return None


@dataclass(eq=False)
class Shard:
    """One shard's questions and where each stands, as its journal says."""

    index: int
    questions: list[Question]
    journal: Journal
    policy: Policy
    progress: dict[str, Progress] = field(default_factory=dict)  # question_id -> its progress
    all_sent: bool = False  # every question has been through one pass
    compacted: bool = False
    taken: set[tuple[str, int | None, bool]] = field(default_factory=set)  # the journal records absorbed

    def __post_init__(self) -> None:
        self.progress = {q.question_id: Progress() for q in self.questions}
        self._by_id = {q.question_id: q for q in self.questions}

    def absorb(self, record: dict[str, Any]) -> bool:
        qid = record["question_id"]
        if qid not in self._by_id or not self.policy.absorb(self.progress[qid], record, self._by_id[qid]):
            return False
        self.taken.add(record_key(record))
        return True

    @property
    def done(self) -> bool:
        return self.all_sent and not self.compacted and all(
            self.policy.next(self.progress[q.question_id]) is None for q in self.questions)

    def replay(self) -> int:
        """Rebuild every question's progress from the journal (a rerun); returns the records taken."""
        return sum(self.absorb(record) for record in self.journal.read())

    def record(self, record: dict[str, Any]) -> None:
        self.journal.append(record)
        self.absorb(record)


def record_key(record: dict[str, Any]) -> tuple[str, int | None, bool]:
    """What a journal record is: its question, its round, or its question's rationalization."""
    return record["question_id"], record.get("round", 1), bool(record.get("rationalize"))


def sample_rows(done: Finished, q: Question, messages: list[dict[str, str]], text: str, config: RunConfig,
                seed: int, start: int = 0, round: int | None = None, rationalized: bool | None = None,
                hint_prompt_text: str | None = None) -> list[dict[str, Any]]:
    """The teacher's answer to one request as Sample records (dicts, as journaled): sample indices from `start`
    (adaptive rounds go on where the last stopped); `messages` and `text` are the question's ordinary prompt, also
    for a rationalization, whose real prompt is kept in hint_prompt_text."""
    gen = config.generate
    sampling = {"n": gen.rationalize_samples if hint_prompt_text is not None else gen.num_samples,
                "temperature": gen.temperature, "top_p": gen.top_p, "top_k": gen.top_k,
                "max_tokens": gen.max_tokens, "stop": list(gen.stop)}
    rows = []
    for i, c in enumerate(done.completions):
        row = asdict(Sample(
            question_id=q.question_id, sample_index=start + i, question=q.question, gold_answer=q.gold_answer,
            choices=q.choices, prompt_messages=messages, prompt_text=text, rationale=c.text,
            finish_reason=c.finish_reason, prompt_tokens=done.prompt_tokens, completion_tokens=c.completion_tokens,
            teacher=config.teacher.model, sampling=sampling, seed=seed, run_id=config.run_name,
            reasoning=c.reasoning, round=round, rationalized=rationalized, hint_prompt_text=hint_prompt_text,
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


def journaled_records(shard: Shard) -> dict[str, list[dict[str, Any]]]:
    """Each question's journal records, in the order written, read back from the journal (rows are not kept in
    memory while a question waits for its next round): the ones its progress was built from, each once."""
    seen: set[tuple[str, int | None, bool]] = set()
    records: dict[str, list[dict[str, Any]]] = {q.question_id: [] for q in shard.questions}
    for record in shard.journal.read():
        key = record_key(record)
        if key in shard.taken and key not in seen:
            seen.add(key)
            records[record["question_id"]].append(record)
    return records


def compact(shard: Shard, out_dir: Path) -> dict[str, Any]:
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
        "truncated": sum(row["finish_reason"] == "length" for row in rows),
        "seconds": sum(r["seconds"] for r in records),
        "retries": sum(r["retries"] for r in records),
        "skipped": [{"question_id": r["question_id"], "source_row": r["source_row"], "reason": r["skipped"]}
                    for r in records if r["skipped"]],
        "failed": [{"question_id": r["question_id"], "source_row": r["source_row"], "reason": r["error"]}
                   for r in records if r["error"]],
    }
    meta.update(rounds_meta(shard, rows))
    write_json_atomic(meta, out_dir / "meta" / shard_name(shard.index, ".json"))
    write_parquet_atomic(samples_to_table([Sample(**row) for row in rows], SAMPLE_SCHEMA),
                         out_dir / "samples" / shard_name(shard.index))
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
            "reaching_gold": sum(rationale_reaches_gold(row["rationale"], row["finish_reason"], row["gold_answer"],
                                                        by_id[row["question_id"]].choices, policy.fmt)
                                 for row in hinted),
            "completion_tokens": sum(row["completion_tokens"] for row in hinted),
        }
    return meta


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
    # At most: adaptive sampling sends up to ceil(N / round_size) rounds, rationalization one request more.
    per_question = gen.num_samples if split else math.ceil(gen.num_samples / gen.adaptive.round_size) \
        if gen.adaptive else 1
    samples = gen.num_samples
    if gen.rationalize:
        per_question += gen.rationalize_samples if split else 1
        samples += gen.rationalize_samples
    plan = {
        "questions": questions, "requests": questions * per_question,
        "prompt_tokens": prompt_tokens * per_question,  # each request is billed for its prompt
        "max_completion_tokens": questions * samples * gen.max_tokens,
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
