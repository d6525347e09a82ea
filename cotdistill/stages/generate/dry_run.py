"""`cotdistill generate CONFIG --dry-run`: what a run would send, counted without sending it."""

from __future__ import annotations

import math
from typing import Any

from cotdistill.config.run import RunConfig
from cotdistill.core.prompts import PromptTemplate
from cotdistill.core.shards import Journal, shard_name
from cotdistill.questions.sources import QuestionSource
from cotdistill.teachers import backend_of
from cotdistill.teachers.base import render_prompt


def dry_run(config: RunConfig) -> dict[str, Any]:
    """teacher_plan for each teacher (one, or each of `teachers`), summed."""
    plans = [teacher_plan(run) for run in config.teacher_runs()]
    return {key: round(sum(p.get(key, 0) for p in plans), 4) if key == "max_estimated_cost"
            else sum(p.get(key, 0) for p in plans) for key in dict.fromkeys(k for p in plans for k in p)}


def teacher_plan(config: RunConfig) -> dict[str, Any]:
    """What generate would send, counted before anything is sent and without starting an engine: the requests,
    the prompt tokens (counted with the teacher's tokenizer), the most completion tokens they can return, and
    with prices in the config, the estimated cost. Shards already finished and questions already journaled
    are left out, as a run would leave them out."""
    from transformers import AutoTokenizer

    from cotdistill.models.resolve import resolve_model

    gen, teacher = config.generate, config.teacher
    source = QuestionSource(config.data)
    template = PromptTemplate(gen.prompt, gen.examples)
    backend = backend_of(teacher)
    name = backend.tokenizer(teacher)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
    except Exception as e:  # a hosted model's id has no local tokenizer: say how to give one
        raise ValueError(f"--dry-run counts prompt tokens with the teacher's tokenizer, and {name!r} has none here "
                         f"({type(e).__name__}); set teacher.openai.tokenizer to a Hugging Face tokenizer") from None
    per_shard = gen.questions_per_shard
    questions = prompt_tokens = 0
    for index in range(math.ceil(len(source) / per_shard)):
        if (config.paths.samples / shard_name(index)).exists():
            continue
        journal = Journal(config.paths.journals / shard_name(index, ".jsonl"))
        journaled = {r["question_id"] for r in journal.read(repair=False)}  # only read: a run may be writing it
        for q in source.questions(index * per_shard, (index + 1) * per_shard):
            if q.question_id not in journaled:
                questions += 1
                messages = template.render(question=q.question, choices=q.choices)
                prompt_tokens += len(render_prompt(tokenizer, messages, teacher.chat_template_kwargs)[1])
    split = not backend.n_per_request(teacher)  # N requests of n=1 per question
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
    price = backend.price(teacher)
    if price is not None:
        plan["max_estimated_cost"] = round((plan["prompt_tokens"] * price[0]
                                            + plan["max_completion_tokens"] * price[1]) / 1e6, 4)
    return plan
