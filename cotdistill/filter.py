"""filter: Sample shards -> accepted and rejected shards, every rejected row with its `filter_reason`.

    cotdistill filter pipelines/demo.yaml

For each question, in order: drop truncated rationales (finish reason "length"), empty ones, those whose final
answer cannot be found (`unparseable`) or is given twice differently (`ambiguous`), those whose answer is not the
gold (`wrong`), exact duplicates after whitespace normalisation (`duplicate`, the lowest sample index is kept),
and, with `max_per_question`, a uniform draw with the run's seed keeps at most that many (`over_max_per_question`).

generate writes all of a question's rationales into one shard, so each shard is filtered on its own: memory is
one shard, and a rerun skips the shards already filtered.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from itertools import groupby
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow.parquet as pq

from cotdistill.answers import AnswerFormat, get_answer_format
from cotdistill.config import FilterConfig, RunConfig
from cotdistill.records import FILTERED_SCHEMA, Sample, samples_to_table, table_to_samples
from cotdistill.shards import list_shards, read_json, remove_stale_tmp, write_json_atomic, write_parquet_atomic

logger = logging.getLogger(__name__)

REASONS = ("truncated", "empty", "unparseable", "ambiguous", "wrong", "duplicate", "over_max_per_question")
_WHITESPACE = re.compile(r"\s+")


def normalize_whitespace(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def judge_question(samples: list[Sample], fmt: AnswerFormat, cfg: FilterConfig, seed: int) -> list[Sample]:
    """Set extracted_answer, is_correct and filter_reason on one question's rationales (None = accepted)."""
    seen: set[str] = set()
    survivors: list[Sample] = []
    for s in sorted(samples, key=lambda s: s.sample_index):
        s.filter_reason = None
        if s.rationale is not None and s.rationale.strip():
            extraction = fmt.extract(s.rationale, s.choices)
            s.extracted_answer = extraction.answer
            s.is_correct = fmt.is_correct(extraction.answer, s.gold_answer)
        else:
            extraction, s.extracted_answer, s.is_correct = None, None, False
        if s.finish_reason == "length":
            s.filter_reason = "truncated"
        elif extraction is None:
            s.filter_reason = "empty"
        elif extraction.answer is None:
            s.filter_reason = extraction.reason or "unparseable"
        elif not s.is_correct:
            s.filter_reason = "wrong"
        elif cfg.drop_duplicates:
            key = normalize_whitespace(s.rationale)
            if key in seen:
                s.filter_reason = "duplicate"
            seen.add(key)
        if s.filter_reason is None:
            survivors.append(s)
    if cfg.max_per_question is not None and len(survivors) > cfg.max_per_question:
        # Seeded by question, so the draw does not depend on shard order or worker count.
        rng = random.Random(f"{seed}:{survivors[0].question_id}")
        kept = {id(s) for s in rng.sample(survivors, cfg.max_per_question)}
        for s in survivors:
            if id(s) not in kept:
                s.filter_reason = "over_max_per_question"
    return samples


def filter_samples(samples: Iterable[Sample], cfg: FilterConfig, seed: int) -> Iterator[Sample]:
    """The pure core: samples (grouped by question, as generate writes them) in, judged samples out."""
    fmt = get_answer_format(cfg.answer_format)
    for _, group in groupby(samples, key=lambda s: s.question_id):
        yield from judge_question(list(group), fmt, cfg, seed)


def filter_shard(shard: Path, out_dir: Path, cfg: FilterConfig, seed: int) -> dict[str, Any]:
    samples = table_to_samples(pq.read_table(shard))
    judged = list(filter_samples(samples, cfg, seed))
    accepted = [s for s in judged if s.filter_reason is None]
    rejected = [s for s in judged if s.filter_reason is not None]
    per_question = Counter(s.question_id for s in accepted)
    questions = {s.question_id for s in judged}
    meta = {
        "shard": shard.name,
        "rationales": len(judged),
        "accepted": len(accepted),
        "rejected": dict(Counter(s.filter_reason for s in rejected)),
        "questions": len(questions),
        "accepted_per_question": dict(Counter(per_question.get(q, 0) for q in questions)),
    }
    # rejected and meta first, accepted last: the accepted shard marks the shard as filtered.
    write_parquet_atomic(samples_to_table(rejected, FILTERED_SCHEMA), out_dir / "rejected" / shard.name)
    write_json_atomic(meta, out_dir / "meta" / shard.with_suffix(".json").name)
    write_parquet_atomic(samples_to_table(accepted, FILTERED_SCHEMA), out_dir / "accepted" / shard.name)
    return meta


def _is_filtered(shard: Path, out_dir: Path) -> bool:
    """Filtered, and not older than its generate shard (a regenerated shard is filtered again)."""
    accepted = out_dir / "accepted" / shard.name
    return accepted.exists() and accepted.stat().st_mtime >= shard.stat().st_mtime


def run(config: RunConfig) -> dict[str, Any]:
    from tqdm import tqdm

    gen_dir, out_dir = config.run_dir / "generate", config.run_dir / "filter"
    shards = list_shards(gen_dir / "samples")
    if not shards or not (gen_dir / "stats.json").exists():
        raise RuntimeError(f"{gen_dir}: no finished generate output; run `cotdistill generate` first")
    get_answer_format(config.filter.answer_format)  # fail on a bad name before any work
    for sub in ("accepted", "rejected", "meta"):
        remove_stale_tmp(out_dir / sub)
    todo = [s for s in shards if not _is_filtered(s, out_dir)]
    for shard in tqdm(todo, desc="filter shards", unit="shard"):
        filter_shard(shard, out_dir, config.filter, config.seed)
    stats = summarize(out_dir, shards)
    write_json_atomic(stats, out_dir / "stats.json")
    logger.info("filter: %d of %d rationales accepted; rejected: %s",
                stats["accepted"], stats["rationales"], stats["rejected"])
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
        "rationales": sum(m["rationales"] for m in metas),
        "accepted": sum(m["accepted"] for m in metas),
        "rejected": {reason: rejected.get(reason, 0) for reason in REASONS},
        "questions": sum(m["questions"] for m in metas),
        "questions_by_accepted_count": {str(k): per_question[k] for k in sorted(per_question)},
    }


def is_complete(config: RunConfig) -> bool:
    out_dir = config.run_dir / "filter"
    gen_shards = list_shards(config.run_dir / "generate" / "samples")
    return (out_dir / "stats.json").exists() and all(_is_filtered(s, out_dir) for s in gen_shards)
