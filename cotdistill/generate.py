"""generate: Question -> prompt -> N teacher rationales -> Sample shards.

    cotdistill generate pipelines/demo.yaml

One vLLM request per question with `SamplingParams(n=N)`, so the N rationales share one prefill. Questions are
cut into shards of `generate.questions_per_shard`; each shard is written atomically as
`generate/samples/00000.parquet` (after its `generate/meta/00000.json` of counts and skipped questions) and a
rerun skips the shards that exist, so a killed run resumes where it stopped. Memory holds one shard at a time.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from cotdistill.config import RunConfig
from cotdistill.fingerprints import (
    changed_keys, data_fingerprint, file_digest, make_fingerprint, matches, model_fingerprint, read_fingerprint,
    template_fingerprint, write_fingerprint,
)
from cotdistill.prompts import PromptTemplate
from cotdistill.records import SAMPLE_SCHEMA, Question, Sample, samples_to_table
from cotdistill.shards import (
    list_shards, read_json, read_json_or_none, remove_stale_tmp, shard_name, write_json_atomic, write_parquet_atomic,
)
from cotdistill.sources import QuestionSource
from cotdistill.teacher import (
    build_llm, max_model_len, output_engine_args, prompt_too_long, release_llm, render_prompt,
)

logger = logging.getLogger(__name__)


@dataclass
class ShardResult:
    samples: list[Sample]
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {question_id, source_row, reason}
    seconds: float = 0.0


def request_seed(base_seed: int, question_id: str) -> int:
    """A per-question seed that does not depend on shard order (used when seed_per_request is on)."""
    digest = hashlib.sha1(f"{base_seed}:{question_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def generate_shard(
    llm: Any,
    questions: Iterable[Question],
    template: PromptTemplate,
    config: RunConfig,
    use_tqdm: bool = True,
) -> ShardResult:
    """The core of the stage: questions in, one Sample per rationale out (plus the questions skipped)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    gen = config.generate
    tokenizer = llm.get_tokenizer()
    context = max_model_len(llm)
    result = ShardResult(samples=[])
    requests, params, sent = [], [], []
    for q in questions:
        messages = template.render(question=q.question, choices=q.choices)
        text, ids = render_prompt(tokenizer, messages)
        too_long = prompt_too_long(len(ids), context)
        if too_long:
            result.skipped.append({"question_id": q.question_id, "source_row": q.source_row, "reason": too_long})
            continue
        seed = request_seed(config.seed, q.question_id) if gen.seed_per_request else None
        requests.append(TokensPrompt(prompt_token_ids=ids))
        params.append(SamplingParams(
            n=gen.num_samples, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k,
            max_tokens=min(gen.max_tokens, context - len(ids)), stop=gen.stop or None, seed=seed,
        ))
        sent.append((q, messages, text, len(ids), config.seed if seed is None else seed))
    if not requests:
        return result

    started = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=use_tqdm)
    result.seconds = time.perf_counter() - started

    sampling = {
        "n": gen.num_samples, "temperature": gen.temperature, "top_p": gen.top_p, "top_k": gen.top_k,
        "max_tokens": gen.max_tokens, "stop": list(gen.stop),
    }
    for (q, messages, text, prompt_tokens, seed), output in zip(sent, outputs):
        for completion in output.outputs:
            result.samples.append(Sample(
                question_id=q.question_id, sample_index=completion.index, question=q.question,
                gold_answer=q.gold_answer, choices=q.choices, prompt_messages=messages, prompt_text=text,
                rationale=completion.text, finish_reason=str(completion.finish_reason),
                prompt_tokens=prompt_tokens, completion_tokens=len(completion.token_ids),
                teacher=config.teacher.model, sampling=sampling, seed=seed, run_id=config.run_name,
            ))
    return result


class SettingsChanged(RuntimeError):
    """generate's outputs were made with other settings; regenerating is costly, so it is never implicit."""


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """What the shards' contents depend on: data, teacher weights and engine, prompt, sampling, seed."""
    gen = config.generate
    return make_fingerprint({
        "data": {**vars(config.data), "contents": data_fingerprint(config.data.path)},
        "teacher": {"model": config.teacher.model, "weights": model_fingerprint(config.teacher.model),
                    "engine": output_engine_args(config.teacher.engine)},
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
    for sub in ("samples", "meta"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    for name in ("stats.json", "settings.json"):
        (out_dir / name).unlink(missing_ok=True)
    write_fingerprint(out_dir, record)


def run(config: RunConfig, llm: Any = None, force: bool = False) -> dict[str, Any]:
    """The stage with its I/O. `llm`: an engine already built (benchmarks, notebooks); else one is started.
    `force`: discard outputs made with other settings instead of refusing."""
    from tqdm import tqdm

    out_dir = config.run_dir / "generate"
    source = QuestionSource(config.data)
    per_shard = config.generate.questions_per_shard
    num_shards = math.ceil(len(source) / per_shard)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_fingerprint(out_dir, fingerprint(config), force)

    samples_dir, meta_dir = out_dir / "samples", out_dir / "meta"
    remove_stale_tmp(samples_dir)

    def finished(i: int) -> bool:
        return (samples_dir / shard_name(i)).exists() and (meta_dir / shard_name(i, ".json")).exists()

    todo = [i for i in range(num_shards) if not finished(i)]
    logger.info("generate: %d questions in %d shards, %d to do", len(source), num_shards, len(todo))
    if todo:
        template = PromptTemplate(config.generate.prompt, config.generate.examples)
        own_engine = llm is None
        llm = llm or build_llm(config.teacher, config.seed)
        try:
            for i in tqdm(todo, desc="generate shards", unit="shard"):
                questions = source.questions(i * per_shard, (i + 1) * per_shard)
                result = generate_shard(llm, questions, template, config)
                meta = {
                    "shard": i,
                    "questions": min(per_shard, len(source) - i * per_shard),
                    "rationales": len(result.samples),
                    "prompt_tokens": sum(s.prompt_tokens for s in result.samples if s.sample_index == 0),
                    "completion_tokens": sum(s.completion_tokens for s in result.samples),
                    "truncated": sum(s.finish_reason == "length" for s in result.samples),
                    "seconds": result.seconds,
                    "skipped": result.skipped,
                }
                for skip in result.skipped:
                    logger.warning("skipped question %s (row %d): %s", skip["question_id"], skip["source_row"], skip["reason"])
                # meta first, shard last: the shard's existence marks both as complete.
                write_json_atomic(meta, meta_dir / shard_name(i, ".json"))
                write_parquet_atomic(samples_to_table(result.samples, SAMPLE_SCHEMA), samples_dir / shard_name(i))
        finally:
            if own_engine:
                release_llm(llm)

    stats = summarize(out_dir, num_shards)
    write_json_atomic(stats, out_dir / "stats.json")
    logger.info("generate: %s", {k: v for k, v in stats.items() if k != "skipped"})
    return stats


def summarize(out_dir: Path, num_shards: int) -> dict[str, Any]:
    metas = [read_json(out_dir / "meta" / shard_name(i, ".json")) for i in range(num_shards)]
    seconds = sum(m["seconds"] for m in metas)
    completion = sum(m["completion_tokens"] for m in metas)
    return {
        "shards": num_shards,
        "questions": sum(m["questions"] for m in metas),
        "rationales": sum(m["rationales"] for m in metas),
        "prompt_tokens": sum(m["prompt_tokens"] for m in metas),
        "completion_tokens": completion,
        "generation_seconds": round(seconds, 3),
        "tokens_per_s": round(completion / seconds, 2) if seconds else None,
        "truncated": sum(m["truncated"] for m in metas),
        "skipped": [s for m in metas for s in m["skipped"]],
        "num_skipped": sum(len(m["skipped"]) for m in metas),
    }


def is_complete(config: RunConfig) -> bool:
    """Every shard written, and made with today's settings."""
    out_dir = config.run_dir / "generate"
    stats = read_json_or_none(out_dir / "stats.json")
    if stats is None or not matches(out_dir, fingerprint(config)):
        return False
    return len(list_shards(out_dir / "samples")) == stats["shards"]
