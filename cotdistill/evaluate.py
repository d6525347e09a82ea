"""evaluate: models x test questions -> greedy accuracy and self-consistency, side by side.

    cotdistill evaluate pipelines/demo.yaml

For each model in `evaluate.models` (`teacher`, `base_student`, `student` = the trained model), on the test
questions: one greedy request (temperature 0) and one request with n=k samples at `evaluate.temperature`, whose
parsed answers vote (unparseable answers do not vote). The teacher is asked with its own generate prompt; the
students with the student prompt they were trained on. Each model's rows are written atomically to
`evaluate/<model>.parquet`, and a rerun skips the models already done; `metrics.json` holds the figures.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from cotdistill.answers import get_answer_format
from cotdistill.config import ModelConfig, RunConfig
from cotdistill.metrics import accuracy, majority_vote
from cotdistill.prompts import PromptTemplate
from cotdistill.records import EVAL_SCHEMA, Question, rows_to_table
from cotdistill.shards import read_json, write_json_atomic, write_parquet_atomic
from cotdistill.sources import QuestionSource
from cotdistill.teacher import build_llm, max_model_len, release_llm, render_prompt

logger = logging.getLogger(__name__)


@dataclass
class EvalModel:
    name: str
    model: ModelConfig
    model_path: str | None  # a trained model's folder, in place of model.model
    template: PromptTemplate


def eval_models(config: RunConfig) -> list[EvalModel]:
    known = {
        "teacher": lambda: EvalModel("teacher", config.teacher, None,
                                     PromptTemplate(config.generate.prompt, config.generate.examples)),
        "base_student": lambda: EvalModel("base_student", config.student, None, PromptTemplate(config.train.prompt)),
        "student": lambda: EvalModel("student", config.student, str(config.run_dir / "train" / "model"),
                                     PromptTemplate(config.train.prompt)),
    }
    unknown = [m for m in config.evaluate.models if m not in known]
    if unknown:
        raise ValueError(f"evaluate.models: unknown model {unknown[0]!r}; known: {', '.join(known)}")
    return [known[m]() for m in config.evaluate.models]


def evaluate_model(llm: Any, questions: list[Question], template: PromptTemplate, config: RunConfig,
                   name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The core: one model on the questions -> per-question rows and cost figures."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    ev = config.evaluate
    fmt = get_answer_format(ev.answer_format or config.filter.answer_format)
    tokenizer = llm.get_tokenizer()
    context = max_model_len(llm)
    prompts, greedy_params, sampled_params, rows = [], [], [], []
    for q in questions:
        _, ids = render_prompt(tokenizer, template.render(question=q.question, choices=q.choices))
        row = {"model": name, "question_id": q.question_id, "question": q.question, "gold_answer": q.gold_answer,
               "skip_reason": None}
        if len(ids) >= context:
            row["skip_reason"] = f"prompt_too_long: {len(ids)} prompt tokens, max_model_len is {context}"
        else:
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            room = min(ev.max_tokens, context - len(ids))
            greedy_params.append(SamplingParams(n=1, temperature=0.0, max_tokens=room))
            sampled_params.append(SamplingParams(n=ev.num_samples, temperature=ev.temperature, top_p=ev.top_p,
                                                 max_tokens=room))
        rows.append(row)

    started = time.perf_counter()
    greedy = llm.generate(prompts, greedy_params, use_tqdm=True) if prompts else []
    sampled = llm.generate(prompts, sampled_params, use_tqdm=True) if prompts else []
    seconds = time.perf_counter() - started

    answered = iter(zip(greedy, sampled))
    tokens = 0
    for q, row in zip(questions, rows):
        if row["skip_reason"] is not None:
            row.update(greedy_correct=False, voted_correct=False, samples=[], sample_answers=[],
                       sample_correct=[], votes=[], greedy_tokens=0, sample_tokens=0)
            continue
        g, s = next(answered)
        greedy_text = g.outputs[0].text
        greedy_answer = fmt.extract(greedy_text, q.choices).answer
        texts = [c.text for c in s.outputs]
        answers = [fmt.extract(t, q.choices).answer for t in texts]
        voted, votes = majority_vote(answers)
        row.update(
            greedy_completion=greedy_text, greedy_answer=greedy_answer,
            greedy_correct=fmt.is_correct(greedy_answer, q.gold_answer),
            greedy_tokens=len(g.outputs[0].token_ids),
            samples=texts, sample_answers=answers,
            sample_correct=[fmt.is_correct(a, q.gold_answer) for a in answers],
            sample_tokens=sum(len(c.token_ids) for c in s.outputs),
            votes=[{"answer": a, "count": c} for a, c in votes], voted_answer=voted,
            voted_correct=fmt.is_correct(voted, q.gold_answer),
        )
        tokens += row["greedy_tokens"] + row["sample_tokens"]
    cost = {"generated_tokens": tokens, "generation_seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 2) if seconds else None}
    return rows, cost


def summarize_model(rows: list[dict[str, Any]], k: int, cost: dict[str, Any]) -> dict[str, Any]:
    n = len(rows)
    return {
        "questions": n,
        "skipped": sum(r["skip_reason"] is not None for r in rows),
        "greedy_accuracy": accuracy([r["greedy_correct"] for r in rows]),
        f"maj@{k}": accuracy([r["voted_correct"] for r in rows]),
        f"pass@{k}": accuracy([any(r["sample_correct"]) for r in rows]),
        "tokens_per_question": round(cost["generated_tokens"] / n, 1) if n else 0.0,
        **cost,
    }


def format_table(metrics: dict[str, dict[str, Any]], k: int) -> str:
    header = f"{'model':<14} {'greedy':>8} {'maj@' + str(k):>8} {'pass@' + str(k):>8} {'tok/q':>8} {'tok/s':>8}"
    lines = [header, "-" * len(header)]
    for name, m in metrics.items():
        lines.append(f"{name:<14} {m['greedy_accuracy']:>8.3f} {m[f'maj@{k}']:>8.3f} {m[f'pass@{k}']:>8.3f} "
                     f"{m['tokens_per_question']:>8.1f} {m['tokens_per_s'] or 0:>8.1f}")
    return "\n".join(lines)


def run(config: RunConfig) -> dict[str, Any]:
    import pyarrow.parquet as pq

    ev = config.evaluate
    if ev.data is None:
        raise ValueError("evaluate.data is not set: name the test questions to evaluate on")
    out_dir = config.run_dir / "evaluate"
    models = eval_models(config)
    source = QuestionSource(ev.data)
    questions = list(source.questions())
    k = ev.num_samples
    for m in models:
        shard, cost_path = out_dir / f"{m.name}.parquet", out_dir / f"{m.name}.cost.json"
        if shard.exists() and cost_path.exists():
            logger.info("evaluate: %s done, skipping", m.name)
            continue
        if m.model_path is not None and not (config.run_dir / "train" / "model" / "config.json").exists():
            raise RuntimeError(f"evaluate: no trained student in {m.model_path}; run `cotdistill train` first")
        llm = build_llm(m.model, config.seed, m.model_path)
        try:
            rows, cost = evaluate_model(llm, questions, m.template, config, m.name)
        finally:
            release_llm(llm)
        write_json_atomic(cost, cost_path)
        write_parquet_atomic(rows_to_table(rows, EVAL_SCHEMA), shard)

    metrics = {}
    for m in models:
        rows = pq.read_table(out_dir / f"{m.name}.parquet").to_pylist()
        metrics[m.name] = summarize_model(rows, k, read_json(out_dir / f"{m.name}.cost.json"))
    write_json_atomic({"k": k, "temperature": ev.temperature, "models": metrics}, out_dir / "metrics.json")
    logger.info("evaluate: wrote %s", out_dir / "metrics.json")
    return {"k": k, "models": metrics, "table": format_table(metrics, k)}


def is_complete(config: RunConfig) -> bool:
    out_dir = config.run_dir / "evaluate"
    return (out_dir / "metrics.json").exists() and all(
        (out_dir / f"{m}.parquet").exists() for m in config.evaluate.models)
