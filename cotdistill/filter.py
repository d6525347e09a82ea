"""filter: Sample shards -> accepted and rejected shards, every rejected row with its `filter_reason`.

    cotdistill filter pipelines/demo.yaml

The checks, in the order they are applied (the first that fails names the reason):

  contaminated            the question shares a word n-gram with a question of an evaluation set
  truncated               finish reason "length"
  empty                   no text
  degenerate              too large a share of repeated word n-grams (a looping rationale)
  too_long                over the student's max_length, counted with the student's tokenizer
  unparseable/ambiguous/timeout   no final answer / two different marked answers / math-verify gave up
  no_majority             (label: majority) no answer won majority_min_share of the question's votes
  wrong                   the answer is not the label (the gold, or in majority mode the teacher's majority)
  duplicate               the same text as a lower sample index, after whitespace normalisation
  near_duplicate          MinHash Jaccard >= near_duplicate_threshold with a kept lower sample index
  over_max_per_question   not drawn by the seeded uniform draw of max_per_question survivors (SCoTD's balance)
  under_min_per_question  the question kept fewer than min_per_question rationales

generate writes all of a question's rationales into one shard, so each shard is filtered on its own, in
`num_workers` worker processes: memory is one shard per worker, and a rerun skips the shards already filtered.
Outputs: filter/accepted/ (with a dataset card README.md), filter/rejected/, stats.json and audit.md.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cotdistill.answers import AnswerFormat, get_answer_format, group_equivalent
from cotdistill.config import FilterConfig, RunConfig, TrainConfig
from cotdistill.fingerprints import (
    data_fingerprint, digest, file_digest, make_fingerprint, matches, model_fingerprint, template_fingerprint,
    upstream, write_fingerprint,
)
from cotdistill.records import FILTERED_SCHEMA, Sample, student_text
from cotdistill.shards import (
    list_shards, read_json, read_json_or_none, remove_stale_tmp, write_json_atomic, write_parquet_atomic,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

REASONS = (
    "contaminated", "truncated", "empty", "degenerate", "too_long", "unparseable", "ambiguous", "timeout",
    "no_majority", "wrong", "duplicate", "near_duplicate", "over_max_per_question", "under_min_per_question",
)
EXAMPLES_PER_REASON = 3
_WORD = re.compile(r"\w+")


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


def repeated_ngram_share(text: str, n: int) -> float:
    """The share of word n-grams that repeat an earlier one: about 0 for prose, near 1 for a loop."""
    words = text.split()
    if len(words) < 2 * n:
        return 0.0
    grams = set(zip(*(words[i:] for i in range(n))))  # tuples built in C
    return 1.0 - len(grams) / (len(words) - n + 1)


def is_degenerate(text: str, n: int, max_share: float) -> bool:
    """repeated_ngram_share(text, n) > max_share, cheaply for the usual rationale: an n-gram can only repeat
    where its first word repeats, so when the share of repeated words is already at most max_share, it is not."""
    words = text.split()
    if len(words) < 2 * n:
        return False
    if (len(words) - len(set(words))) / (len(words) - n + 1) <= max_share:
        return False
    return repeated_ngram_share(text, n) > max_share


# --- decontamination ------------------------------------------------------------------------------------------


def question_ngrams(text: str, n: int) -> set[int]:
    """64-bit hashes of the lower-cased word n-grams of a question (the whole question if shorter than n).

    64 bits, not crc32's 32: with millions of evaluation n-grams, 32-bit collisions would flag clean
    training questions as contaminated."""
    import xxhash

    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {xxhash.xxh64_intdigest(" ".join(words).encode())} if words else set()
    return {xxhash.xxh64_intdigest(" ".join(words[i:i + n]).encode()) for i in range(len(words) - n + 1)}


def build_contamination_index(questions: Iterable[str], n: int) -> frozenset[int]:
    index: set[int] = set()
    for q in questions:
        index |= question_ngrams(q, n)
    return frozenset(index)


# --- near duplicates ------------------------------------------------------------------------------------------


def near_duplicate_flags(texts: Sequence[str], threshold: float, ngram: int, num_perm: int) -> list[bool]:
    """True for each text whose MinHash Jaccard estimate with an earlier kept text is >= threshold.

    datasketch computes the signatures; with at most a few dozen rationales per question, comparing each
    signature with the kept ones directly is cheaper than building an LSH index per question.
    """
    import numpy as np
    import xxhash
    from datasketch import MinHash

    shingles = []
    for text in texts:
        words = text.lower().split()
        grams = {g.encode() for g in map(" ".join, zip(*(words[i:] for i in range(ngram))))}
        shingles.append(grams or {" ".join(words).encode()})
    # xxh32 instead of datasketch's default sha1: the same 32-bit hashes for MinHash, several times faster.
    signatures = MinHash.bulk(shingles, num_perm=num_perm, hashfunc=xxhash.xxh32_intdigest)
    kept: list[Any] = []
    flags = []
    for sig in signatures:
        values = sig.hashvalues
        if kept and float(np.max(np.mean(np.stack(kept) == values, axis=1))) >= threshold:
            flags.append(True)
        else:
            flags.append(False)
            kept.append(values)
    return flags


# --- judging one question -------------------------------------------------------------------------------------


@dataclass
class FilterContext:
    """What judging needs besides the rows: the settings and the things built once per worker."""

    cfg: FilterConfig
    fmt: AnswerFormat
    seed: int
    contamination: frozenset[int] = frozenset()
    count_student_tokens: Callable[[list[str], list[str], list[list[str] | None]], list[int]] | None = None
    max_student_tokens: int | None = None
    reasoning_format: str = TrainConfig.reasoning_format  # train.reasoning_format (its default here)


@dataclass
class QuestionRows:
    """One question's rationales, as parallel lists (cheap to build from Parquet columns)."""

    question_id: str
    question: str
    gold_answer: str | None
    choices: list[str] | None
    sample_indices: list[int]
    rationales: list[str | None]
    finish_reasons: list[str]
    student_texts: list[str] | None = None  # what the student trains on, when not the rationale (reasoning)


@dataclass
class Verdicts:
    extracted_answer: list[str | None]
    is_correct: list[bool | None]
    filter_reason: list[str | None]


def judge_question(rows: QuestionRows, ctx: FilterContext) -> Verdicts:
    """The verdict on each of one question's rationales; filter_reason None means accepted."""
    cfg, fmt = ctx.cfg, ctx.fmt
    n = len(rows.rationales)
    extracted: list[str | None] = [None] * n
    correct: list[bool | None] = [None] * n
    reason: list[str | None] = [None] * n
    order = sorted(range(n), key=lambda i: rows.sample_indices[i])  # the lowest index is the one kept

    if ctx.contamination and question_ngrams(rows.question, cfg.decontamination_ngram) & ctx.contamination:
        return Verdicts(extracted, correct, ["contaminated"] * n)

    texts = [r or "" for r in rows.rationales]
    for i in order:
        if rows.finish_reasons[i] == "length":
            reason[i] = "truncated"
        elif not texts[i].strip():
            reason[i] = "empty"
        elif is_degenerate(texts[i], cfg.repetition_ngram, cfg.max_repeated_ngram_share):
            reason[i] = "degenerate"
    candidates = [i for i in order if reason[i] is None]
    if candidates and ctx.count_student_tokens is not None and ctx.max_student_tokens is not None:
        # Tokenizing is the costly check: only for the rationales still in the running.
        trained = rows.student_texts or texts
        lengths = ctx.count_student_tokens([rows.question] * len(candidates), [trained[i] for i in candidates],
                                           [rows.choices] * len(candidates))
        for i, length in zip(candidates, lengths):
            if length > ctx.max_student_tokens:
                reason[i] = "too_long"
    for i in order:
        text = texts[i]
        if reason[i] in ("truncated", "degenerate", "too_long", None) and text.strip():
            extraction = fmt.extract(text, rows.choices)
            extracted[i] = extraction.answer
            if rows.gold_answer is not None:
                correct[i] = fmt.is_correct(extraction.answer, rows.gold_answer)
            if reason[i] is None and extraction.answer is None:
                reason[i] = extraction.reason or "unparseable"

    if cfg.label == "majority":
        # The teacher's label: a vote of every finished rationale with an answer, taken before the
        # student-side checks (degenerate, too_long) remove any, so the student's max_length can never change
        # it. Equivalent answers (\frac{1}{2}, 0.5) are one answer. A tie for first place is no majority.
        voters = [i for i in order if rows.finish_reasons[i] != "length" and extracted[i] is not None]
        grouped = dict(zip(voters, group_equivalent([extracted[i] for i in voters], fmt)))
        ranked = Counter(grouped.values()).most_common(2)
        top, top_count = ranked[0] if ranked else (None, 0)
        tied = len(ranked) > 1 and ranked[1][1] == top_count
        if not voters or tied or top_count / len(voters) < cfg.majority_min_share:
            for i in order:
                if reason[i] is None:
                    reason[i] = "no_majority"
            return Verdicts(extracted, correct, reason)
        for i in order:
            if reason[i] is None and grouped[i] != top:
                reason[i] = "wrong"
    else:
        if rows.gold_answer is None:
            raise ValueError(f"question {rows.question_id} has no gold answer; use filter.label: majority")
        for i in order:
            if reason[i] is None and not correct[i]:
                reason[i] = "wrong"

    survivors = [i for i in order if reason[i] is None]
    if cfg.drop_duplicates:
        seen: set[str] = set()
        for i in survivors:
            key = normalize_whitespace(texts[i])
            if key in seen:
                reason[i] = "duplicate"
            seen.add(key)
        survivors = [i for i in survivors if reason[i] is None]
    if cfg.near_duplicates and len(survivors) > 1:
        flags = near_duplicate_flags([texts[i] for i in survivors], cfg.near_duplicate_threshold,
                                     cfg.near_duplicate_ngram, cfg.minhash_num_perm)
        for i, flag in zip(survivors, flags):
            if flag:
                reason[i] = "near_duplicate"
        survivors = [i for i in survivors if reason[i] is None]
    if cfg.max_per_question is not None and len(survivors) > cfg.max_per_question:
        # Seeded by question, so the draw does not depend on shard order or the number of workers.
        rng = random.Random(f"{ctx.seed}:{rows.question_id}")
        drawn = set(rng.sample(survivors, cfg.max_per_question))
        for i in survivors:
            if i not in drawn:
                reason[i] = "over_max_per_question"
        survivors = sorted(drawn)
    if len(survivors) < cfg.min_per_question:
        for i in survivors:
            reason[i] = "under_min_per_question"
    return Verdicts(extracted, correct, reason)


def filter_samples(samples: Iterable[Sample], ctx: FilterContext) -> Iterator[Sample]:
    """The pure core over records: samples in (a question's rationales together), judged samples out."""
    group: list[Sample] = []

    def flush() -> Iterator[Sample]:
        first = group[0]
        verdicts = judge_question(QuestionRows(
            first.question_id, first.question, first.gold_answer, first.choices,
            [s.sample_index for s in group], [s.rationale for s in group], [s.finish_reason for s in group],
        ), ctx)
        for s, answer, correct, reason in zip(group, verdicts.extracted_answer, verdicts.is_correct,
                                              verdicts.filter_reason):
            s.extracted_answer, s.is_correct, s.filter_reason = answer, correct, reason
            yield s

    for sample in samples:
        if group and sample.question_id != group[0].question_id:
            yield from flush()
            group = []
        group.append(sample)
    if group:
        yield from flush()


# --- one shard, in a worker -----------------------------------------------------------------------------------

SAMPLE_COLUMNS = FILTERED_SCHEMA.names[:-3]  # the generate columns, in order; the filter appends its three


def judge_table(table: pa.Table, ctx: FilterContext) -> pa.Table:
    """A generate shard -> the same rows with extracted_answer, is_correct and filter_reason appended.

    Works on columns rather than Sample objects: the filter has to keep up with 50,000 rationales/s.
    """
    qids = table.column("question_id").to_pylist()
    groups: dict[str, list[int]] = {}
    for row, qid in enumerate(qids):
        groups.setdefault(qid, []).append(row)
    cols = {name: table.column(name).to_pylist() for name in
            ("question", "gold_answer", "sample_index", "rationale", "finish_reason", "reasoning")}
    with_reasoning = any(r is not None for r in cols["reasoning"])
    choices = table.column("choices")
    extracted: list[str | None] = [None] * len(qids)
    correct: list[bool | None] = [None] * len(qids)
    reasons: list[str | None] = [None] * len(qids)
    for qid, rows in groups.items():
        first = rows[0]
        verdicts = judge_question(QuestionRows(
            qid, cols["question"][first], cols["gold_answer"][first], choices[first].as_py(),
            [cols["sample_index"][r] for r in rows], [cols["rationale"][r] for r in rows],
            [cols["finish_reason"][r] for r in rows],
            [student_text(cols["rationale"][r] or "", cols["reasoning"][r], ctx.reasoning_format) for r in rows]
            if with_reasoning else None,
        ), ctx)
        for r, a, c, why in zip(rows, verdicts.extracted_answer, verdicts.is_correct, verdicts.filter_reason):
            extracted[r], correct[r], reasons[r] = a, c, why
    table = table.select(SAMPLE_COLUMNS)
    table = table.append_column(FILTERED_SCHEMA.field("extracted_answer"), pa.array(extracted, pa.string()))
    table = table.append_column(FILTERED_SCHEMA.field("is_correct"), pa.array(correct, pa.bool_()))
    return table.append_column(FILTERED_SCHEMA.field("filter_reason"), pa.array(reasons, pa.string()))


_worker_ctx: FilterContext | None = None


def _student_token_counter(student_model: str, prompt_template: str) -> Callable:
    """Counts tokens of the student's chat-formatted prompt + rationale, as the train stage will see them."""
    from transformers import AutoTokenizer

    from cotdistill.models import resolve_model
    from cotdistill.prompts import PromptTemplate

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(student_model))
    template = PromptTemplate(prompt_template)

    def count(questions: list[str], rationales: list[str], choices: list[list[str] | None]) -> list[int]:
        texts = [
            tokenizer.apply_chat_template(
                template.render(question=q, choices=c) + [{"role": "assistant", "content": r.strip()}],
                tokenize=False,
            )
            for q, r, c in zip(questions, rationales, choices)
        ]
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return count


def student_max_tokens(config: RunConfig) -> int | None:
    """The length over which a rationale is `too_long`: the limit training will really apply.

    TRL truncates at SFTConfig.max_length, whose default (1024 in TRL 1.x) applies when train.sft does not set
    it; a rationale cut there could lose its final answer without a word, so the filter drops it instead.
    `filter.max_student_tokens` can only make the limit stricter. None: nothing truncates (max_length: null).
    """
    if "max_length" in config.train.sft:
        trained = config.train.sft["max_length"]
    else:  # only then: importing trl costs every filter worker a few hundred MB
        import dataclasses

        from trl import SFTConfig

        trained = next(f.default for f in dataclasses.fields(SFTConfig) if f.name == "max_length")
    limits = [v for v in (trained, config.filter.max_student_tokens) if v is not None]
    return min(limits) if limits else None


def make_context(config: RunConfig, contamination: frozenset[int]) -> FilterContext:
    cfg = config.filter
    max_tokens = student_max_tokens(config)
    counter = _student_token_counter(config.student.model, config.train.prompt) if max_tokens else None
    return FilterContext(cfg=cfg, fmt=get_answer_format(cfg.answer_format), seed=config.seed,
                         contamination=contamination, count_student_tokens=counter, max_student_tokens=max_tokens,
                         reasoning_format=config.train.reasoning_format)


def _init_worker(config: RunConfig, contamination: frozenset[int]) -> None:
    global _worker_ctx
    _worker_ctx = make_context(config, contamination)


def filter_shard(shard: Path, out_dir: Path, shard_key: str, ctx: FilterContext | None = None) -> dict[str, Any]:
    """Judge one generate shard and write its accepted, rejected and meta files (`shard_key`: the settings and
    input it was judged with, so a rerun knows whether it still holds)."""
    ctx = ctx or _worker_ctx
    started = time.perf_counter()
    judged = judge_table(pq.read_table(shard), ctx)
    reasons = judged.column("filter_reason")
    is_accepted = reasons.is_null()
    accepted, rejected = judged.filter(is_accepted), judged.filter(pc.invert(is_accepted))
    questions = set(judged.column("question_id").to_pylist())
    accepted_per_question = Counter(accepted.column("question_id").to_pylist())
    rejected_counts = Counter(r for r in reasons.to_pylist() if r is not None)
    example_columns = ["question_id", "sample_index", "question", "gold_answer", "rationale", "extracted_answer",
                       "filter_reason"]
    examples = {  # the first few of every reason in this shard, however far into the shard it first appears
        reason: rejected.filter(pc.equal(rejected.column("filter_reason"), reason))
        .select(example_columns).slice(0, EXAMPLES_PER_REASON).to_pylist()
        for reason in rejected_counts
    }
    meta = {
        "shard": shard.name,
        "fingerprint": shard_key,
        "rationales": len(judged),
        "accepted": len(accepted),
        "rejected": dict(rejected_counts),
        "questions": len(questions),
        "accepted_per_question": dict(Counter(accepted_per_question.get(q, 0) for q in questions)),
        "examples": examples,
        "seconds": time.perf_counter() - started,
    }
    # Only non-empty shards are written (`datasets` refuses a folder holding a Parquet file of zero rows); the
    # meta, with the key it was judged under, is written last and marks the shard as filtered.
    for sub, table in (("accepted", accepted), ("rejected", rejected)):
        if len(table):
            write_parquet_atomic(table, out_dir / sub / shard.name)
        else:
            (out_dir / sub / shard.name).unlink(missing_ok=True)
    write_json_atomic(meta, out_dir / "meta" / shard.with_suffix(".json").name)
    return meta


def _is_filtered(shard: Path, out_dir: Path, shard_key: str) -> bool:
    """Filtered with today's settings from today's generate shard (a regenerated shard is filtered again)."""
    meta = read_json_or_none(out_dir / "meta" / shard.with_suffix(".json").name)
    return meta is not None and meta.get("fingerprint") == shard_key


def fingerprint(config: RunConfig, shards: list[Path]) -> tuple[dict[str, Any], dict[str, str]]:
    """The stage's fingerprint (settings, upstream, every input shard's bytes) and each shard's own key."""
    cfg = config.filter
    settings: dict[str, Any] = {
        "generate": upstream(config.run_dir / "generate"),
        "filter": {k: v for k, v in vars(cfg).items() if k not in ("num_workers", "decontaminate")},
        "decontaminate": [{**vars(d), "contents": data_fingerprint(d.path)} for d in cfg.decontaminate],
        "seed": config.seed,
    }
    max_tokens = student_max_tokens(config)
    if max_tokens is not None:  # the student's tokenizer and template count the tokens
        settings["too_long"] = {"max_tokens": max_tokens, "student": model_fingerprint(config.student.model),
                                "student_prompt": template_fingerprint(config.train.prompt),
                                "reasoning_format": config.train.reasoning_format}
    base = digest(settings)
    keys = {s.name: digest([base, file_digest(s)]) for s in shards}
    return make_fingerprint({**settings, "inputs": keys}), keys


def remove_leftovers(out_dir: Path, shards: list[Path]) -> None:
    """Outputs of generate shards that no longer exist (an earlier, larger run): never part of the corpus."""
    names = {s.stem for s in shards}
    for sub, suffix in (("accepted", ".parquet"), ("rejected", ".parquet"), ("meta", ".json")):
        for path in sorted((out_dir / sub).glob(f"[0-9]*{suffix}")):
            if path.stem not in names:
                logger.warning("filter: removing %s, left by an earlier run (no such generate shard now)", path)
                path.unlink()


def contamination_index(config: RunConfig) -> frozenset[int]:
    from cotdistill.sources import load_question_texts

    texts: list[str] = []
    for source in config.filter.decontaminate:
        texts.extend(load_question_texts(source))
    return build_contamination_index(texts, config.filter.decontamination_ngram)


def filter_shards(config: RunConfig, shards: list[Path], out_dir: Path, keys: dict[str, str]) -> None:
    """Filter the shards in worker processes (or in this one for num_workers <= 1), with a progress bar."""
    from tqdm import tqdm

    contamination = contamination_index(config)
    workers = min(config.filter.num_workers, len(shards))
    if workers <= 1:
        ctx = make_context(config, contamination)
        for shard in tqdm(shards, desc="filter shards", unit="shard"):
            filter_shard(shard, out_dir, keys[shard.name], ctx)
        return
    # spawn, not fork: the parent may hold a vLLM engine's threads (cotdistill run).
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (config, contamination)) as pool:
        jobs = [(shard, out_dir, keys[shard.name]) for shard in shards]
        for _ in tqdm(pool.imap_unordered(_filter_shard_job, jobs), total=len(jobs), desc="filter shards",
                      unit="shard"):
            pass


def _filter_shard_job(job: tuple[Path, Path, str]) -> dict[str, Any]:
    return filter_shard(*job)


def run(config: RunConfig) -> dict[str, Any]:
    gen_dir, out_dir = config.run_dir / "generate", config.run_dir / "filter"
    shards = list_shards(gen_dir / "samples")
    if not shards or not (gen_dir / "stats.json").exists() or upstream(gen_dir) is None:
        raise RuntimeError(f"{gen_dir}: no finished generate output; run `cotdistill generate` first")
    record, keys = fingerprint(config, shards)
    for sub in ("accepted", "rejected", "meta"):
        remove_stale_tmp(out_dir / sub)
    remove_leftovers(out_dir, shards)
    todo = [s for s in shards if not _is_filtered(s, out_dir, keys[s.name])]
    if todo:
        logger.info("filter: %d of %d shards to judge", len(todo), len(shards))
        filter_shards(config, todo, out_dir, keys)
    stats = summarize(out_dir, shards)
    write_json_atomic(stats, out_dir / "stats.json")
    write_text_atomic(audit_markdown(stats, out_dir, shards), out_dir / "audit.md")
    write_text_atomic(dataset_card(config, stats), out_dir / "accepted" / "README.md")
    write_fingerprint(out_dir, record)  # last: the stage is done
    logger.info("filter: %d of %d rationales accepted; rejected: %s",
                stats["accepted"], stats["rationales"], {k: v for k, v in stats["rejected"].items() if v})
    return stats


def summarize(out_dir: Path, shards: list[Path]) -> dict[str, Any]:
    metas = [read_json(out_dir / "meta" / s.with_suffix(".json").name) for s in shards]
    rejected: Counter = Counter()
    per_question: Counter = Counter()
    for m in metas:
        rejected.update(m["rejected"])
        per_question.update({int(k): v for k, v in m["accepted_per_question"].items()})
    return {
        "shards": len(shards),
        # The corpus train reads: these files, nothing else in the folder (shards that kept no rationale have none).
        "accepted_files": [s.name for s, m in zip(shards, metas) if m["accepted"]],
        "rationales": sum(m["rationales"] for m in metas),
        "accepted": sum(m["accepted"] for m in metas),
        "rejected": {reason: rejected.get(reason, 0) for reason in REASONS},
        "questions": sum(m["questions"] for m in metas),
        "questions_by_accepted_count": {str(k): per_question[k] for k in sorted(per_question)},
        "seconds_in_workers": round(sum(m["seconds"] for m in metas), 3),
    }


def audit_markdown(stats: dict[str, Any], out_dir: Path, shards: list[Path]) -> str:
    lines = [
        "# Filter audit", "",
        f"{stats['accepted']:,} of {stats['rationales']:,} rationales accepted "
        f"({stats['accepted'] / max(1, stats['rationales']):.1%}), over {stats['questions']:,} questions.", "",
        "| reason | rationales | share |", "| --- | ---: | ---: |",
    ]
    for reason, count in stats["rejected"].items():
        lines.append(f"| {reason} | {count:,} | {count / max(1, stats['rationales']):.1%} |")
    lines += ["", "Questions by number of accepted rationales: "
              + ", ".join(f"{k}: {v}" for k, v in stats["questions_by_accepted_count"].items()), ""]
    examples: dict[str, list[dict[str, Any]]] = {}
    for shard in shards:
        for reason, rows in read_json(out_dir / "meta" / shard.with_suffix(".json").name)["examples"].items():
            bucket = examples.setdefault(reason, [])
            bucket.extend(rows[: EXAMPLES_PER_REASON - len(bucket)])
    for reason in REASONS:
        if not examples.get(reason):
            continue
        lines += [f"## {reason}", ""]
        for row in examples[reason]:
            rationale = (row["rationale"] or "").strip()
            if len(rationale) > 600:
                rationale = rationale[:300] + " [...] " + rationale[-300:]
            lines += [
                f"- question `{row['question_id']}`, sample {row['sample_index']}: extracted "
                f"`{row['extracted_answer']}`, gold `{row['gold_answer']}`", "",
                "  > " + rationale.replace("\n", "\n  > "), "",
            ]
    return "\n".join(lines) + "\n"


def dataset_card(config: RunConfig, stats: dict[str, Any]) -> str:
    gen, cfg = config.generate, config.filter
    settings = {k: v for k, v in vars(cfg).items() if k != "decontaminate"}
    decontaminated = ", ".join(f"`{d.path}`" for d in cfg.decontaminate) or "none"
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: "*.parquet"
tags:
- cotdistill
- chain-of-thought
- distillation
size_categories:
- {"n<1K" if stats["accepted"] < 1000 else "1K<n<10K" if stats["accepted"] < 10000 else "10K<n<100K" if stats["accepted"] < 100000 else "n>100K"}
---
# {config.run_name}: filtered teacher rationales

Chain-of-thought rationales sampled from a teacher and filtered by cotdistill, one row per rationale
(schema `FILTERED_SCHEMA` in `cotdistill/records.py`).

- Teacher: `{config.teacher.model}`
- Questions: `{config.data.path}` (split `{config.data.split}`), {stats["questions"]:,} questions
- Prompt template: `{gen.prompt}`{f" with few-shot examples `{gen.examples}`" if gen.examples else ""}
- Sampling: n={gen.num_samples}, temperature={gen.temperature}, top_p={gen.top_p}, top_k={gen.top_k},
  max_tokens={gen.max_tokens}, seed={config.seed}
- Filter: answer format `{cfg.answer_format}`, label `{cfg.label}`, decontaminated against {decontaminated}
- Filter settings: `{settings}`
- Counts: {stats["accepted"]:,} accepted of {stats["rationales"]:,} generated; rejected by reason:
  {", ".join(f"{k} {v:,}" for k, v in stats["rejected"].items() if v) or "none"}

Load it with `datasets.load_dataset("parquet", data_dir="{config.run_dir / 'filter' / 'accepted'}")`.
"""


def is_complete(config: RunConfig) -> bool:
    out_dir = config.run_dir / "filter"
    shards = list_shards(config.run_dir / "generate" / "samples")
    if not shards or not (out_dir / "stats.json").exists():
        return False
    record, keys = fingerprint(config, shards)
    return matches(out_dir, record) and all(_is_filtered(s, out_dir, keys[s.name]) for s in shards)
