"""filter.judge: an LLM judge, any of the run's teachers, decides whether a response's final answer is the gold.

    judge = Judge.for_run(config)
    verdicts = judge.verdicts([(question, gold, response), ...])   # JudgeVerdict each, in order
    judge.close(); judge.hits, judge.misses                         # the request cache's counts

The prompt is a jinja2 template in prompts/ (judge.jinja), rendered in the same sandbox as every prompt, with
`question`, `gold` and `response`. The judge's reply is data, never executed or interpreted beyond one test: its
last non-empty line must be exactly `VERDICT: equivalent` or `VERDICT: different`; anything else is
`judge_unparseable`, and a request that failed is `judge_error`. Requests are greedy and seeded, and always go
through the request cache (teachers/cache.py, in generate.cache's folder): a rerun pays for nothing it asked
before. At most `max_requests` responses are judged per call; the rest come back `over_budget`, counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cotdistill.core.prompts import PromptTemplate
from cotdistill.teachers.base import Sampling, TeacherRequest, render_prompt

if TYPE_CHECKING:
    from cotdistill.config.run import RunConfig
    from cotdistill.config.sections import ModelConfig
    from cotdistill.teachers.cache import RequestCache

logger = logging.getLogger(__name__)

EQUIVALENT, DIFFERENT = "equivalent", "different"
# Every verdict a row can carry: the judge's two, and why there is none (its reply, a failed request, the budget).
JUDGE_VERDICTS = (EQUIVALENT, DIFFERENT, "judge_unparseable", "judge_error", "over_budget")
_LINES = {f"VERDICT: {EQUIVALENT}": EQUIVALENT, f"VERDICT: {DIFFERENT}": DIFFERENT}


def parse_verdict(reply: str | None) -> str:
    """The verdict in the judge's reply: its last non-empty line, exactly as the prompt asks (surrounding spaces
    aside); judge_unparseable otherwise, whatever else the reply says."""
    lines = [line.strip() for line in (reply or "").splitlines() if line.strip()]
    return _LINES.get(lines[-1], "judge_unparseable") if lines else "judge_unparseable"


@dataclass(frozen=True)
class JudgeVerdict:
    verdict: str  # one of JUDGE_VERDICTS
    cached: bool = False  # answered from the request cache


class Judge:
    """One judge model behind the request cache; its backend starts at the first miss."""

    def __init__(self, model: ModelConfig, template: PromptTemplate, cache: RequestCache, seed: int,
                 max_requests: int, max_tokens: int, teacher: Any = None):
        from cotdistill.teachers import build_teacher, teacher_settings
        from cotdistill.teachers.cache import CachedTeacher

        self.model, self.template, self.seed = model, template, seed
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.model_name = model.model
        self.teacher = CachedTeacher(model, teacher_settings(model), cache,
                                     build=lambda: teacher or build_teacher(model, seed))

    @classmethod
    def for_run(cls, config: RunConfig) -> "Judge":
        from cotdistill.teachers.cache import RequestCache

        cfg = config.filter.judge
        return cls(cfg.model(config), PromptTemplate(cfg.prompt), RequestCache.open(config.generate.cache),
                   config.seed, cfg.max_requests, cfg.max_tokens)

    @property
    def hits(self) -> int:
        return self.teacher.hits

    @property
    def misses(self) -> int:
        return self.teacher.misses

    def request(self, key: str, question: str, gold: str, response: str) -> TeacherRequest:
        messages = self.template.render(question=question, gold=gold, response=response)
        from cotdistill.teachers import backend_of

        # A local engine is sent token ids (its tokenizer loads without the engine); a served model its messages.
        tokenizer = self.teacher.tokenizer() if backend_of(self.model).local_engine else None
        text, ids = (render_prompt(tokenizer, messages, self.model.chat_template_kwargs) if tokenizer is not None
                     else ("", None))
        # Greedy and seeded: the same question asked again is the same request, so the cache answers it.
        sampling = Sampling(n=1, temperature=0.0, max_tokens=self.max_tokens, seed=self.seed)
        return TeacherRequest(key=key, messages=messages, prompt_text=text, prompt_token_ids=ids, sampling=sampling)

    def verdicts(self, items: list[tuple[str, str, str]]) -> list[JudgeVerdict]:
        """A verdict for each (question, gold, response), in order; past max_requests, over_budget."""
        judged = items[:self.max_requests]
        out = [JudgeVerdict("over_budget")] * len(items)
        if not judged:
            return out
        requests = [self.request(str(i), *item) for i, item in enumerate(judged)]
        for done in self.teacher.generate(requests):
            i = int(done.key)
            if done.error or not done.completions:
                out[i] = JudgeVerdict("judge_error", done.cached)
                logger.warning("judge: request %d failed: %s", i, done.error)
            else:
                out[i] = JudgeVerdict(parse_verdict(done.completions[0].text), done.cached)
        if len(items) > len(judged):
            logger.info("judge: max_requests %d reached; %d left with the rules' verdict", self.max_requests,
                        len(items) - len(judged))
        return out

    def close(self) -> None:
        self.teacher.close()
