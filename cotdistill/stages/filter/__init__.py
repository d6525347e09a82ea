"""filter: Sample shards -> accepted and rejected shards, every rejected row with its `filter_reason`.

    cotdistill filter pipelines/demo.yaml

How the filter picks rationales is phases.py: each rationale is judged in phases (the question's verdicts,
per-rationale checks, the label's verdicts, the selection), and the first reason it fails is recorded;
phases.PHASES lists every reason with what it means, in order of precedence.
With `label: none` no answer is checked. Every row carries its question's pass rate: finished rationales
reaching the label over all its rationales (rationalized ones, written with the gold as a hint, left out: the
pass rate is the teacher's own).

generate writes all of a question's rationales into one shard, so each shard is filtered on its own, in
`num_workers` worker processes: memory is one shard per worker. Each shard's meta records the key it was judged
under (the settings and the generate shard's bytes), so a rerun judges only the shards whose key changed.
Outputs: filter/accepted/ (with a dataset card README.md), filter/rejected/, stats.json and audit.md; with
`preference_pairs`, filter/pairs/ (TRL's prompt/chosen/rejected, with its own card) for the dpo stage.

The package: phases.py (the phases; one shard's table), checks.py (per-text checks, decontamination), dedup.py
(near duplicates), difficulty.py (pass rates, the band, harder_more caps), audit.py (each shard's counts,
stats.json, audit.md, the dataset card), pairs.py (preference pairs for DPO), second.py (filter.audit_verifier:
a second verifier on a sample of the verdicts); here, the stage: workers over shards, the LLM judge's pass
(filter.judge, in this process before the workers start), the fingerprint, the work.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cotdistill.config.run import RunConfig
from cotdistill.config.sections import FilterConfig
from cotdistill.core.fingerprints import (
    data_settings, digest, file_digest, make_fingerprint, template_fingerprint, upstream,
)
from cotdistill.core.paths import FILTER, GENERATE, RunPaths
from cotdistill.core.prompts import PromptTemplate
from cotdistill.core.records import PAIR_SCHEMA, rows_to_table, student_text
from cotdistill.core.shards import (
    list_shards, read_json_or_none, remove_stale_tmp, write_json_atomic, write_parquet_atomic, write_text_atomic,
)
from cotdistill.models.resolve import model_fingerprint
from cotdistill.stages.base import Stage
from cotdistill.stages.filter.audit import audit_markdown, dataset_card, pairs_card, shard_stats, summarize
from cotdistill.stages.filter.checks import build_contamination_index
from cotdistill.stages.filter.pairs import preference_pairs
from cotdistill.stages.filter.phases import FilterContext, JudgeKey, judge_table, with_sample_columns
from cotdistill.verify.answers import ANSWER_RULES, THINK_DELIMITERS, format_settings
from cotdistill.verify.judging import sandbox_settings, teacher_answer_format

logger = logging.getLogger(__name__)


_worker_ctx: FilterContext | None = None


def student_token_counters(config: RunConfig) -> tuple[Callable, Callable]:
    """Two counts with the student's tokenizer: its chat-formatted prompt + rationale, as the train stage will
    see them (too_long), and the rationale alone (the length that filter.select and max_length_ratio compare)."""
    from transformers import AutoTokenizer

    from cotdistill.models.resolve import resolve_model
    from cotdistill.core.prompts import PromptTemplate

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.student.model))
    template = PromptTemplate(config.train.prompt)
    kwargs = config.student.chat_template_kwargs

    def with_prompt(questions: list[str], rationales: list[str], choices: list[list[str] | None]) -> list[int]:
        texts = [
            tokenizer.apply_chat_template(
                template.render(question=q, choices=c) + [{"role": "assistant", "content": r.strip()}],
                tokenize=False, **kwargs,
            )
            for q, r, c in zip(questions, rationales, choices)
        ]
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def alone(rationales: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer([r.strip() for r in rationales], add_special_tokens=False)["input_ids"]]

    return with_prompt, alone


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


def by_length(cfg: FilterConfig) -> bool:
    """Whether the filter compares rationales by length (select by it, or drop overlong ones)."""
    return cfg.select != "random" or cfg.max_length_ratio is not None


def make_context(config: RunConfig, contamination: frozenset[int],
                 judged: dict[JudgeKey, tuple[str, bool]] | None = None) -> FilterContext:
    cfg = config.filter
    max_tokens = student_max_tokens(config)
    with_prompt, alone = student_token_counters(config) if max_tokens or by_length(cfg) else (None, None)
    return FilterContext(cfg=cfg, fmt=teacher_answer_format(config), seed=config.seed,
                         contamination=contamination, count_student_tokens=with_prompt if max_tokens else None,
                         max_student_tokens=max_tokens, count_text_tokens=alone,
                         reasoning_format=config.train.reasoning_format, code=config.code_checks(),
                         answer_kinds=config.answer_kinds(),
                         judged=judged if cfg.judge is not None else None,
                         judge_model=cfg.judge.model(config).model if cfg.judge is not None else None,
                         student_prompt=PromptTemplate(config.train.prompt) if cfg.preference_pairs else None)


def _init_worker(config: RunConfig, contamination: frozenset[int],
                 judged: dict[JudgeKey, tuple[str, bool]] | None) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent handles it
    global _worker_ctx
    _worker_ctx = make_context(config, contamination, judged)


def filter_shard(shard: Path | list[Path], paths: RunPaths, shard_key: str,
                 ctx: FilterContext | None = None) -> dict[str, Any]:
    """Judge one generate shard and write its accepted, rejected and meta files (`shard_key`: the settings and
    input it was judged with, so a rerun knows whether it still holds). With several teachers, `shard` is the
    list of their shards of that name (the same questions), judged together."""
    ctx = ctx or _worker_ctx
    started = time.perf_counter()
    files = [shard] if isinstance(shard, Path) else shard
    shard = files[0]  # its name names the outputs
    table = read_samples(files)
    unused = 0
    if ctx.cfg.use_samples is not None:  # the pool a run of use_samples samples would have drawn
        used = table.filter(pc.less(table.column("sample_index"), ctx.cfg.use_samples))
        unused, table = len(table) - len(used), used
    judged = judge_table(table, ctx)
    is_accepted = judged.column("filter_reason").is_null()
    accepted, rejected = judged.filter(is_accepted), judged.filter(pc.invert(is_accepted))
    meta = {"shard": shard.name, "fingerprint": shard_key, **shard_stats(judged, code=ctx.code is not None),
            "seconds": time.perf_counter() - started}
    if ctx.judged is not None:  # filter.judge: its verdicts here, and how many the cache answered
        meta["judge"] = judge_counts(judged, ctx)
    if ctx.cfg.use_samples is not None:
        meta["unused_samples"] = unused
    outputs = [(paths.accepted, accepted), (paths.rejected, rejected)]
    if ctx.student_prompt is not None:  # filter.preference_pairs
        pairs = shard_pairs(judged, ctx)
        meta["pairs"] = {"pairs": len(pairs), "questions": len({p["question_id"] for p in pairs}),
                         "by_reason": dict(Counter(p["rejected_reason"] for p in pairs))}
        outputs.append((paths.pairs, rows_to_table(pairs, PAIR_SCHEMA)))
    else:  # pairs of an earlier setting are never left beside this shard's verdicts
        outputs.append((paths.pairs, None))
    # Only non-empty shards are written (`datasets` refuses a folder holding a Parquet file of zero rows); the
    # meta, with the key it was judged under, is written last and marks the shard as filtered.
    for folder, table in outputs:
        if table is not None and len(table):
            write_parquet_atomic(table, folder / shard.name)
        else:
            (folder / shard.name).unlink(missing_ok=True)
    write_json_atomic(meta, shard_meta(paths, shard))
    return meta


def read_samples(files: list[Path]) -> pa.Table:
    """A generate shard, or with several teachers their shards of one name, as one table."""
    if len(files) == 1:
        return pq.read_table(files[0])
    return pa.concat_tables([with_sample_columns(pq.read_table(f)) for f in files], promote_options="default")


def judge_counts(judged: pa.Table, ctx: FilterContext) -> dict[str, Any]:
    """One shard's judge verdicts by kind, and of those asked (not over budget) how many the cache answered."""
    cols = {name: judged.column(name).to_pylist()
            for name in ("question_id", "teacher_name", "sample_index", "judge_verdict")}
    verdicts = Counter(v for v in cols["judge_verdict"] if v is not None)
    cached = sum(ctx.judged.get((q, t, i), ("", False))[1]
                 for q, t, i, v in zip(cols["question_id"], cols["teacher_name"], cols["sample_index"],
                                       cols["judge_verdict"]) if v is not None and v != "over_budget")
    return {"verdicts": dict(verdicts), "cache_hits": cached}


def judge_unreadable(config: RunConfig, shards: list[list[Path]],
                     contamination: frozenset[int]) -> dict[JudgeKey, tuple[str, bool]]:
    """filter.judge, in this process before the shards are judged (one judge model, not one per worker): the
    rationales the rules cannot read (the phases' own pass, collecting), asked of the judge up to max_requests."""
    from cotdistill.teachers.judge import Judge

    wanted: list[tuple[JudgeKey, str, str, str]] = []
    collect = dataclasses.replace(make_context(config, contamination), judged=None, judge_wanted=wanted)
    for files in shards:
        judge_table(read_samples(files), collect)
    if not wanted:
        return {}
    judge = Judge.for_run(config)
    try:
        verdicts = judge.verdicts([(question, gold, text) for _, question, gold, text in wanted])
    finally:
        judge.close()
    logger.info("filter: the judge (%s) gave %d verdicts on rationales the rules could not read (%d from the "
                "cache, %d requests sent)", judge.model_name, len(wanted), judge.hits, judge.misses)
    return {key: (v.verdict, v.cached) for (key, *_), v in zip(wanted, verdicts)}


def shard_pairs(judged: Any, ctx: FilterContext) -> list[dict[str, Any]]:
    """The shard's preference pairs (pairs.py), with the student's prompt and text as train renders them."""
    cfg, template = ctx.cfg, ctx.student_prompt
    return preference_pairs(judged, cfg.pair_reasons, cfg.pairs_per_question, ctx.seed,
                            lambda question, choices: template.render(question=question, choices=choices),
                            lambda rationale, reasoning: student_text(rationale, reasoning, ctx.reasoning_format))


def shard_meta(paths: RunPaths, shard: Path) -> Path:
    """The filter's meta for a generate shard: its counts, examples and the key it was judged under."""
    return paths.filter_meta / shard.with_suffix(".json").name


def _is_filtered(shard: Path, paths: RunPaths, shard_key: str) -> bool:
    """Filtered with today's settings from today's generate shard (a regenerated shard is filtered again)."""
    meta = read_json_or_none(shard_meta(paths, shard))
    return meta is not None and meta.get("fingerprint") == shard_key


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """The stage's fingerprint: the settings, the upstream stage, and under `inputs` each generate shard's own
    key (the settings and the shard's bytes), which its meta records once it is judged."""
    cfg = config.filter
    settings: dict[str, Any] = {
        "generate": upstream(config.paths.generate),
        # difficulty included even when null: outputs from before it (and its pass_rate column) are redone.
        "filter": {k: v for k, v in vars(cfg).items() if k not in (
            "num_workers", "decontaminate", "difficulty", "select", "max_length_ratio", "preference_pairs",
            "pair_reasons", "pairs_per_question", "per_teacher", "math", "audit_verifier", "judge",
            "use_samples")},
        "difficulty": vars(cfg.difficulty) if cfg.difficulty is not None else None,
        "decontaminate": [data_settings(d) for d in cfg.decontaminate],
        "seed": config.seed,
    }
    settings.update(answer_rules(config))
    if config.uses_code().filtering:  # only when the filter runs programs: other runs keep their fingerprints
        settings["sandbox"] = sandbox_settings(config.sandbox)
    if by_length(cfg):  # only when on: runs without them keep their fingerprints
        settings["by_length"] = {"select": cfg.select, "max_length_ratio": cfg.max_length_ratio}
    if cfg.per_teacher:  # only when on: runs without it keep their fingerprints
        settings["per_teacher"] = True
    if cfg.judge is not None:  # only when on: runs without a judge keep their fingerprints (and FILTERED_SCHEMA)
        settings["judge"] = judge_settings(config)
    if cfg.use_samples is not None:  # only when set: runs without it keep their fingerprints
        settings["use_samples"] = cfg.use_samples
    if cfg.preference_pairs:  # only when on: runs without pairs keep their fingerprints
        settings["pairs"] = {"reasons": cfg.pair_reasons, "per_question": cfg.pairs_per_question,
                             "student_prompt": template_fingerprint(config.train.prompt),
                             "reasoning_format": config.train.reasoning_format}
    max_tokens = student_max_tokens(config)
    if max_tokens is not None or by_length(cfg):  # the student's tokenizer and template count the tokens
        settings["too_long"] = {"max_tokens": max_tokens, "student": model_fingerprint(config.student.model),
                                "student_prompt": template_fingerprint(config.train.prompt),
                                "reasoning_format": config.train.reasoning_format}
        if config.student.chat_template_kwargs:
            settings["too_long"]["chat_template_kwargs"] = config.student.chat_template_kwargs
    base = digest(settings)
    keys = {name: digest([base, *(file_digest(f) for f in files)]) for name, files in sample_shards(config).items()}
    audit: dict[str, Any] = {}
    if cfg.audit_verifier is not None:  # only when on; not in the shards' keys: it judges none of their rows
        audit["audit_verifier"] = vars(cfg.audit_verifier)
        if cfg.audit_verifier.second == "judge" and cfg.judge is not None:
            audit["audit_verifier"] = {**audit["audit_verifier"], "judge": judge_settings(config)}
    return make_fingerprint({**settings, **audit, "inputs": keys})


def judge_settings(config: RunConfig) -> dict[str, Any]:
    """What the LLM judge's verdicts depend on: its model (as the request cache keys it), prompt and budget."""
    from cotdistill.teachers import teacher_settings

    judge = config.filter.judge
    return {"model": teacher_settings(judge.model(config)), "prompt": template_fingerprint(judge.prompt),
            "max_requests": judge.max_requests, "max_tokens": judge.max_tokens}


def sample_shards(config: RunConfig) -> dict[str, list[Path]]:
    """generate's shards by name: one file each, or with several teachers one per teacher (each teacher cuts the
    same questions into the same shards), which are judged together."""
    groups: dict[str, list[Path]] = {}
    for run in config.teacher_runs():
        for shard in list_shards(run.paths.samples):
            groups.setdefault(shard.name, []).append(shard)
    return dict(sorted(groups.items()))


def answer_rules(config: RunConfig) -> dict[str, Any]:
    """What the answer formats read: the rules (answers.ANSWER_RULES: finished corpora are judged again when they
    change), the format's own (answers.format_settings: the math format's rules and settings), the field of the
    questions' answer kinds when set and, when not <think>...</think>, the teacher's reasoning delimiters."""
    rules: dict[str, Any] = {"answer_rules": ANSWER_RULES, **format_settings(teacher_answer_format(config))}
    if config.data.answer_kind_field:  # the questions' answer kinds (their values: in the data's fingerprint)
        rules["answer_kind_field"] = config.data.answer_kind_field
    if config.teacher.delimiters() != THINK_DELIMITERS:
        rules["reasoning_delimiters"] = list(config.teacher.delimiters())
    return rules


def leftovers(paths: RunPaths, shards: list[Path]) -> list[Path]:
    """Outputs of generate shards that no longer exist (an earlier, larger run): never part of the corpus."""
    names = {s.stem for s in shards}
    return [path for folder, suffix in ((paths.accepted, ".parquet"), (paths.rejected, ".parquet"),
                                        (paths.pairs, ".parquet"), (paths.filter_meta, ".json"))
            for path in sorted(folder.glob(f"[0-9]*{suffix}")) if path.stem not in names]


def contamination_index(config: RunConfig) -> frozenset[int]:
    from cotdistill.questions.sources import load_question_texts

    texts: list[str] = []
    for source in config.filter.decontaminate:
        texts.extend(load_question_texts(source))
    return build_contamination_index(texts, config.filter.decontamination_ngram)


def filter_shards(config: RunConfig, shards: list[list[Path]], keys: dict[str, str]) -> None:
    """Filter the shards (each its teachers' files) in worker processes (or in this one for num_workers <= 1),
    with a progress bar."""
    from tqdm import tqdm

    contamination = contamination_index(config)
    judged = judge_unreadable(config, shards, contamination) if config.filter.judge is not None else None
    workers = min(config.filter.num_workers, len(shards))
    if workers <= 1:
        ctx = make_context(config, contamination, judged)
        for files in tqdm(shards, desc="filter shards", unit="shard"):
            filter_shard(files, config.paths, keys[files[0].name], ctx)
        return
    # spawn, not fork: the parent may hold a vLLM engine's threads (cotdistill run).
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (config, contamination, judged)) as pool:
        jobs = [(files, config.paths, keys[files[0].name]) for files in shards]
        for _ in tqdm(pool.imap_unordered(_filter_shard_job, jobs), total=len(jobs), desc="filter shards",
                      unit="shard"):
            pass


def _filter_shard_job(job: tuple[list[Path], RunPaths, str]) -> dict[str, Any]:
    return filter_shard(*job)


def filter_corpus(config: RunConfig) -> dict[str, Any]:
    """The stage's work: judge every generate shard not yet judged under its key, then the summary."""
    paths = config.paths
    groups = sample_shards(config)
    shards = [files[0] for files in groups.values()]  # named as every teacher's shard of that name is
    if not shards:
        raise RuntimeError(f"{paths.generate}: generate wrote no sample shards; there is nothing to filter")
    keys = fingerprint(config)["settings"]["inputs"]
    for folder in (paths.accepted, paths.rejected, paths.pairs, paths.filter_meta):
        remove_stale_tmp(folder)
    for path in leftovers(paths, shards):
        logger.warning("filter: removing %s, left by an earlier run (no such generate shard now)", path)
        path.unlink()
    todo = [s for s in shards if not _is_filtered(s, paths, keys[s.name])]
    if todo:
        logger.info("filter: %d of %d shards to judge", len(todo), len(shards))
        filter_shards(config, [groups[s.name] for s in todo], keys)
    stats = summarize(paths, shards)
    if config.filter.audit_verifier is not None:  # a second verifier judges a sample of the verdicts again
        from cotdistill.stages.filter.second import audit_verdicts

        stats["audit_verifier"] = audit_verdicts(config, shards, stats)
    write_text_atomic(audit_markdown(stats, paths, shards, config.teacher.model), paths.audit)
    write_text_atomic(dataset_card(config, stats), paths.accepted / "README.md")
    if "pairs" in stats:
        write_text_atomic(pairs_card(config, stats), paths.pairs / "README.md")
    write_json_atomic(stats, paths.filter / "stats.json")  # last: the stage is done
    logger.info("filter: %d of %d rationales accepted; rejected: %s",
                stats["accepted"], stats["rationales"], {k: v for k, v in stats["rejected"].items() if v})
    return stats


def shards_judged(config: RunConfig) -> bool:
    """Every generate shard judged under its key, and nothing else in the corpus."""
    shards = [files[0] for files in sample_shards(config).values()]
    keys = fingerprint(config)["settings"]["inputs"]
    return (bool(shards) and all(_is_filtered(s, config.paths, keys[s.name]) for s in shards)
            and not leftovers(config.paths, shards))


STAGE = Stage(
    outputs=FILTER, help="check answers, drop bad and duplicate rationales -> runs/<run>/filter/{accepted,rejected}/",
    needs=lambda config: (GENERATE,), fingerprint=fingerprint, outputs_complete=shards_judged, work=filter_corpus,
    on_change="keep",  # each shard's meta holds the key it was judged under: only changed shards are judged again
    example="filter.max_per_question=4",
)
