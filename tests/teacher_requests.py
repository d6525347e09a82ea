"""Teacher requests for tests and benchmarks: one a question, the zero-shot prompt in the model's own chat
template, as generate builds them."""

from __future__ import annotations

from typing import Any

from cotdistill.core.prompts import PromptTemplate
from cotdistill.teachers.base import Sampling, TeacherRequest, render_prompt


def zero_shot_requests(tokenizer: Any, questions: list[str], prefix: str = "q", **sampling: Any) -> list[TeacherRequest]:
    """Requests keyed `<prefix><i>`; `sampling` holds the Sampling fields (n, temperature, top_k, max_tokens, ...)."""
    template = PromptTemplate("math_zero_shot_cot.jinja")
    requests = []
    for i, question in enumerate(questions):
        messages = template.render(question=question)
        text, ids = render_prompt(tokenizer, messages)
        requests.append(TeacherRequest(key=f"{prefix}{i}", messages=messages, prompt_text=text,
                                       prompt_token_ids=ids, sampling=Sampling(**sampling)))
    return requests
