"""score: the teacher scores the accepted rationales in one prefill pass -> the same top-k logprob columns.

    cotdistill score pipelines/prune_distill_smollm2_cpu.yaml

For text that came without logprobs (an API teacher's rationales) or to compute them in the student's context.
Each accepted rationale is sent to a local copy of the teacher as prompt + completion tokens with
`SamplingParams(max_tokens=1, prompt_logprobs=k)`: vLLM returns, at every position, the k most likely tokens and
their raw logprobs, which is what `generate.logprobs` captures while sampling (the same engine, the same raw
logprobs, so for the same text and prompt the two agree to numerical tolerance).

`score.context` chooses the prompt: `teacher` is the stored prompt_text (the teacher's instructions and few-shot
examples); `student` is the student's prompt (train.prompt) in the teacher's chat template, i.e. the context the
student sees in training. The completion tokens are the stored completion_token_ids when the rationale has them,
else the text (joined with its reasoning as train joins it) tokenized by the teacher, plus its end-of-sequence
token. Outputs: score/accepted/*.parquet (the filter's rows with the columns filled), stats.json, fingerprint.json.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from cotdistill.config.run import RunConfig
from cotdistill.core.fields import ConfigError
from cotdistill.core.fingerprints import make_fingerprint, template_fingerprint, upstream
from cotdistill.core.paths import FILTER, SCORE
from cotdistill.core.prompts import PromptTemplate
from cotdistill.core.records import FILTERED_SCHEMA, JUDGED_SCHEMA, LOGPROB_COLUMNS, student_text
from cotdistill.core.shards import column_bytes, remove_stale_tmp, write_json_atomic, write_parquet_atomic
from cotdistill.stages.base import Stage, read_summary
from cotdistill.teachers import teacher_settings
from cotdistill.teachers.base import render_prompt

logger = logging.getLogger(__name__)


def scorer_model(config: RunConfig) -> Any:
    """The teacher's ModelConfig, pointed at score.model when set (a local copy of a served teacher)."""
    teacher = config.kd_teacher()
    model = config.score.model or teacher.model
    return dataclasses.replace(teacher, model=model, backend="vllm", settings=None)


def fingerprint(config: RunConfig) -> dict[str, Any]:
    sc = config.score
    if sc is None:
        raise ConfigError("score: is not set: add a score section (e.g. score: {context: student}) to score the "
                          "accepted rationales")
    return make_fingerprint({
        "filter": upstream(config.paths.filter),
        "teacher": teacher_settings(scorer_model(config)),
        "score": {"logprobs": sc.logprobs, "context": sc.context},
        "student_prompt": template_fingerprint(config.train.prompt) if sc.context == "student" else None,
        "reasoning_format": config.train.reasoning_format,
    })


def score_tokens(row: dict[str, Any], tokenizer: Any, template: PromptTemplate | None, reasoning_format: str,
                 chat_template_kwargs: dict[str, Any] | None = None) -> tuple[list[int], list[int]]:
    """One rationale's (prompt ids, completion ids) as the teacher is to score them."""
    if template is None:  # the teacher's own context, as generate sent it
        prompt_ids = tokenizer(row["prompt_text"], add_special_tokens=False)["input_ids"]
    else:
        messages = template.render(question=row["question"], choices=row["choices"])
        prompt_ids = render_prompt(tokenizer, messages, chat_template_kwargs)[1]
    if row.get("completion_token_ids"):
        return prompt_ids, list(row["completion_token_ids"])
    text = student_text(row["rationale"], row.get("reasoning"), reasoning_format)
    completion = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion.append(tokenizer.eos_token_id)  # the teacher's "stop here" is part of what it teaches
    return prompt_ids, completion


def score_rows(llm: Any, rows: list[dict[str, Any]], k: int, template: PromptTemplate | None,
               reasoning_format: str, context: str,
               chat_template_kwargs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The core: rows with completion_token_ids, teacher_topk_ids, teacher_topk_logprobs and logprobs_context."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from cotdistill.teachers.vllm_local import topk_arrays

    tokenizer = llm.get_tokenizer()
    pairs = [score_tokens(row, tokenizer, template, reasoning_format, chat_template_kwargs) for row in rows]
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, flat_logprobs=True, detokenize=False)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p + c) for p, c in pairs], params, use_tqdm=False)
    scored = []
    for row, (prompt_ids, completion_ids), out in zip(rows, pairs, outputs):
        ids, logprobs = topk_arrays(out.prompt_logprobs, k, start=len(prompt_ids))
        scored.append({**row, "completion_token_ids": completion_ids, "teacher_topk_ids": ids.tolist(),
                       "teacher_topk_logprobs": logprobs.tolist(), "logprobs_context": context})
    return scored


def score_corpus(config: RunConfig) -> dict[str, Any]:
    """The stage's work: every accepted shard not yet scored, then the summary."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from cotdistill.teachers.vllm_local import build_llm, release_llm

    sc, paths = config.score, config.paths
    files = read_summary(config, FILTER)["accepted_files"]
    paths.scored.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(paths.scored)
    todo = [name for name in files if not (paths.scored / name).exists()]  # each written atomically
    template = PromptTemplate(config.train.prompt) if sc.context == "student" else None
    started = time.perf_counter()
    if todo:
        llm = build_llm(scorer_model(config), config.seed)
        try:
            for name in tqdm(todo, desc="score shards", unit="shard"):
                table = pq.read_table(paths.accepted / name)
                schema = JUDGED_SCHEMA if "judge_verdict" in table.column_names else FILTERED_SCHEMA  # as it came
                rows = table.to_pylist()
                scored = []
                for i in range(0, len(rows), sc.batch_size):
                    scored += score_rows(llm, rows[i:i + sc.batch_size], sc.logprobs, template,
                                         config.train.reasoning_format, sc.context,
                                         config.teacher.chat_template_kwargs)
                write_parquet_atomic(pa.Table.from_pylist(scored, schema=schema), paths.scored / name)
        finally:
            release_llm(llm)
    lengths = [pq.read_table(paths.scored / n, columns=["completion_token_ids"]).column(0) for n in files]
    tokens = sum(int(pc.sum(pc.list_value_length(c)).as_py() or 0) for c in lengths)
    stored_bytes = sum(column_bytes(paths.scored / n, LOGPROB_COLUMNS) for n in files)
    stats = {"rationales": sum(len(c) for c in lengths),
             "completion_tokens": tokens, "logprobs_k": sc.logprobs, "context": sc.context,
             "logprob_bytes_per_token": round(stored_bytes / tokens, 2) if tokens else None,
             "accepted_files": files, "seconds_this_run": round(time.perf_counter() - started, 2)}
    write_json_atomic(stats, paths.score / "stats.json")  # last: the stage is done
    logger.info("score: %s", {k: v for k, v in stats.items() if k != "accepted_files"})
    return stats


STAGE = Stage(
    outputs=SCORE, help="the teacher's top-k logprobs for the accepted rationales -> runs/<run>/score/ (with score:)",
    needs=lambda config: (FILTER,), fingerprint=fingerprint, outputs_complete=lambda config: True, work=score_corpus,
    wanted=lambda config: config.score is not None,
    example="score.logprobs=20",
)
