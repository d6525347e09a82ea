"""filter: Sample shards -> accepted and rejected shards, every rejected row with its `filter_reason`.

    cotdistill filter pipelines/demo.yaml

The checks, in the order they are applied (the first that fails names the reason):

  contaminated            the question shares a word n-gram with a question of an evaluation set
  too_easy/too_hard       (filter.difficulty) the question's pass rate is above / below the band: every one of
                          its rationales, whatever else it fails (decided once the label is known)
  truncated               finish reason "length"
  empty                   no text
  degenerate              too large a share of repeated word n-grams (a looping rationale)
  too_long                over the student's max_length, counted with the student's tokenizer
  unparseable/ambiguous/timeout   no final answer / two different marked answers / math-verify gave up
  no_majority             (label: majority) no answer won majority_min_share of the question's votes
  wrong                   the answer is not the label (the gold, or in majority mode the teacher's majority)
  quotes_hint             (generate.rationalize) a rationalized rationale that names its hint ("hint", "given
                          answer", ...) or states the gold number before its first calculation (checks.quotes_hint)
  duplicate               the same text as a lower sample index, after whitespace normalisation
  near_duplicate          MinHash Jaccard >= near_duplicate_threshold with a kept lower sample index
  over_max_per_question   not drawn by the seeded uniform draw of max_per_question survivors (SCoTD's balance;
                          with difficulty weight harder_more, the question's own, smaller cap)
  under_min_per_question  the question kept fewer than min_per_question rationales

With `label: none` no answer is checked (unparseable, ambiguous, timeout, no_majority and wrong never apply).
Every row carries its question's pass rate: finished rationales reaching the label over all its rationales
(rationalized ones, written with the gold as a hint, left out: the pass rate is the teacher's own).

generate writes all of a question's rationales into one shard, so each shard is filtered on its own, in
`num_workers` worker processes: memory is one shard per worker, and a rerun skips the shards already filtered.
Outputs: filter/accepted/ (with a dataset card README.md), filter/rejected/, stats.json and audit.md.

The package: checks.py (per-text checks, decontamination), dedup.py (near duplicates), difficulty.py (pass
rates, the band, harder_more caps), judge.py (one question's verdicts, one shard's table), audit.py (stats.json,
audit.md, the dataset card); here, the stage: workers over shards, fingerprints, run and is_complete.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pyarrow.compute as pc
import pyarrow.parquet as pq

from cotdistill.answers import get_answer_format
from cotdistill.config import RunConfig
from cotdistill.filter.audit import EXAMPLES_PER_REASON, audit_markdown, dataset_card, summarize
from cotdistill.filter.checks import (
    build_contamination_index, is_degenerate, normalize_whitespace, question_ngrams, repeated_ngram_share,
)
from cotdistill.filter.dedup import near_duplicate_flags
from cotdistill.filter.judge import (
    REASONS, SAMPLE_COLUMNS, FilterContext, QuestionRows, Verdicts, filter_samples, judge_question, judge_table,
)
from cotdistill.fingerprints import (
    data_fingerprint, digest, file_digest, finished_stats, make_fingerprint, matches, model_fingerprint,
    template_fingerprint, upstream, write_fingerprint,
)
from cotdistill.shards import (
    list_shards, read_json_or_none, remove_stale_tmp, write_json_atomic, write_parquet_atomic, write_text_atomic,
)

__all__ = [
    "EXAMPLES_PER_REASON", "REASONS", "SAMPLE_COLUMNS", "FilterContext", "QuestionRows", "Verdicts",
    "audit_markdown", "build_contamination_index", "contamination_index", "dataset_card", "filter_samples",
    "filter_shard", "fingerprint", "is_complete", "is_degenerate", "judge_question", "judge_table", "make_context",
    "near_duplicate_flags", "normalize_whitespace", "question_ngrams", "repeated_ngram_share", "run",
    "student_max_tokens", "summarize",
]

logger = logging.getLogger(__name__)


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
    pass_rates: dict[str, float | None] = {}  # per question (every row of a question holds the same)
    for qid, rate in zip(judged.column("question_id").to_pylist(), judged.column("pass_rate").to_pylist()):
        pass_rates.setdefault(qid, rate)
    questions = set(pass_rates)
    first_reasons = {}  # too_easy / too_hard are question-level: counted once per question too
    for qid, why in zip(judged.column("question_id").to_pylist(), reasons.to_pylist()):
        first_reasons.setdefault(qid, why)
    accepted_per_question = Counter(accepted.column("question_id").to_pylist())
    hinted = judged.column("rationalized").to_pylist()
    rejected_counts = Counter(r for r in reasons.to_pylist() if r is not None)
    example_columns = ["question_id", "sample_index", "question", "gold_answer", "rationale", "extracted_answer",
                       "filter_reason", "pass_rate", "rationalized"]
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
        "pass_rates": [round(r, 6) for r in pass_rates.values() if r is not None],
        "questions_out_of_band": dict(Counter(w for w in first_reasons.values() if w in ("too_easy", "too_hard"))),
        "examples": examples,
        "seconds": time.perf_counter() - started,
    }
    if any(hinted):  # generate.rationalize: its questions and rationales counted apart
        kept = [h and why is None for h, why in zip(hinted, reasons.to_pylist())]
        qids = judged.column("question_id").to_pylist()
        meta["rationalized"] = {
            "questions": len({q for q, h in zip(qids, hinted) if h}),
            "rationales": sum(bool(h) for h in hinted),
            "accepted": sum(kept),
            "questions_served": len({q for q, k in zip(qids, kept) if k}),
            "quotes_hint": sum(bool(h) and why == "quotes_hint" for h, why in zip(hinted, reasons.to_pylist())),
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
        # difficulty included even when null: outputs from before it (and its pass_rate column) are redone.
        "filter": {k: v for k, v in vars(cfg).items() if k not in ("num_workers", "decontaminate", "difficulty")},
        "difficulty": vars(cfg.difficulty) if cfg.difficulty is not None else None,
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
    finished_stats(gen_dir, "generate")
    shards = list_shards(gen_dir / "samples")
    if not shards:
        raise RuntimeError(f"{gen_dir}: generate wrote no sample shards; there is nothing to filter")
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


def is_complete(config: RunConfig) -> bool:
    out_dir = config.run_dir / "filter"
    shards = list_shards(config.run_dir / "generate" / "samples")
    if not shards or not (out_dir / "stats.json").exists():
        return False
    record, keys = fingerprint(config, shards)
    return matches(out_dir, record) and all(_is_filtered(s, out_dir, keys[s.name]) for s in shards)
