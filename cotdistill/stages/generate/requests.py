"""The request loop of one teacher's generate: every open question's next request through the teacher, every answer
journaled at once, every shard compacted as soon as its questions are all in.

    for meta in RequestLoop(teacher, source, todo, template, config).shards(): ...   # each compacted shard's meta

In passes: the first walks the shards lazily (the teacher pulls requests while earlier ones run, across shard
boundaries) and sends each question its next request: with fixed N the only one, so one pass is the whole run.
Every later pass sends each question still open its next round (or its rationalization), until none is.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Iterator

from cotdistill.config.run import RunConfig
from cotdistill.core.prompts import PromptTemplate
from cotdistill.core.records import Question
from cotdistill.core.shards import Journal, shard_name
from cotdistill.questions.sources import QuestionSource
from cotdistill.stages.generate.compaction import Pending, ShardWriter, compact, journal_record
from cotdistill.stages.generate.progress import Policy, Shard
from cotdistill.teachers.base import Finished, Sampling, Teacher, TeacherRequest, prompt_too_long, render_prompt

logger = logging.getLogger(__name__)


def request_seed(base_seed: int, question_id: str) -> int:
    """A per-question seed that does not depend on shard order (used when seed_per_request is on)."""
    digest = hashlib.sha1(f"{base_seed}:{question_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class RequestLoop:
    """One teacher's requests for the `todo` shards, and what comes back: the loop's state is here, in one place."""

    def __init__(self, teacher: Teacher, source: QuestionSource, todo: list[int], template: PromptTemplate,
                 config: RunConfig, bar: Any = None):
        """`bar`: a tqdm bar counting the questions done, with the tokens generated per second."""
        gen = config.generate
        self.teacher, self.source, self.todo, self.template, self.config = teacher, source, todo, template, config
        self.policy = Policy(config)
        self.tokenizer, self.context = teacher.tokenizer(), teacher.max_model_len()
        self.hint_template = PromptTemplate(gen.rationalize_prompt, gen.examples) if gen.rationalize else None
        self.waiting: dict[str, Pending] = {}  # request key -> the request in flight
        self.loaded: list[Shard] = []  # every shard walked so far, in order
        self.finished: list[Shard] = []  # shards whose questions are all in, not yet compacted
        self.clock = time.perf_counter()
        self.bar, self.started, self.tokens = bar, time.perf_counter(), 0
        self.writer: ShardWriter | None = None  # while shards() runs

    def shards(self) -> Iterator[dict[str, Any]]:
        """Every `todo` shard's meta, as it is compacted (its Parquet file written by the shard writer's thread
        meanwhile: all are on disk when this ends): passes over the open questions until none is."""
        self.writer = ShardWriter()
        try:
            yield from self._passes()
        except BaseException:  # the run stops: the shards handed over are still written, the cause is raised
            self.writer.close(quiet=True)
            raise
        self.writer.close()

    def _passes(self) -> Iterator[dict[str, Any]]:
        requests, passes = self.first_pass(), 0
        while True:
            passes += 1
            answered = 0
            for done in self.teacher.generate(requests):
                answered += 1
                self.record(done)
                yield from self.compact_finished()
            self.finished.extend(s for s in self.loaded if s.done and s not in self.finished)  # closed by a skip
            yield from self.compact_finished()
            if all(s.compacted for s in self.loaded):
                return
            if not answered:  # cannot happen: every pass moves every open question on
                raise RuntimeError("generate: a pass sent nothing while questions are still open")
            logger.info("generate: pass %d: %d questions still open", passes + 1,
                        sum(self.policy.next(p) is not None for s in self.loaded if not s.compacted
                            for p in s.progress.values()))
            requests = self.next_pass()

    def first_pass(self) -> Iterator[TeacherRequest]:
        """Each todo shard loaded (its journal replayed) in turn, and each of its questions' next request."""
        gen, paths = self.config.generate, self.config.paths
        per_shard = gen.questions_per_shard
        for index in self.todo:
            journal = Journal(paths.journals / shard_name(index, ".jsonl"))
            questions = list(self.source.questions(index * per_shard, (index + 1) * per_shard))
            shard = Shard(index, questions, journal, self.policy)
            if shard.replay():
                logger.info("generate: shard %d: %d of %d questions already journaled", index,
                            sum(p.closed is not None for p in shard.progress.values()), len(shard.questions))
            self.loaded.append(shard)
            if self.bar is not None:
                self.bar.update(sum(self.policy.next(p) is None for p in shard.progress.values()))
            for q in shard.questions:
                request = self.request(shard, q)
                if request is not None:
                    yield request
            shard.all_sent = True
            if shard.done:  # nothing was left to send, or every answer is already back
                self.finished.append(shard)

    def next_pass(self) -> Iterator[TeacherRequest]:
        """The next request of every question still open."""
        for shard in self.loaded:
            if not shard.compacted:
                for q in shard.questions:
                    request = self.request(shard, q)
                    if request is not None:
                        yield request

    def request(self, shard: Shard, q: Question) -> TeacherRequest | None:
        """The question's next request; None when it is done (or its prompt is too long: journaled here)."""
        config, gen = self.config, self.config.generate
        p = shard.progress[q.question_id]
        step = self.policy.next(p)
        if step is None:
            return None
        kind, n = step
        rationalize = kind == "hint"
        kwargs = config.teacher.chat_template_kwargs
        messages = self.template.render(question=q.question, choices=q.choices)
        text, ids = render_prompt(self.tokenizer, messages, kwargs) if self.tokenizer is not None else ("", None)
        sent, sent_text, sent_ids, hint_text = messages, text, ids, None
        if rationalize:  # the student's prompt stays the ordinary one; this one is kept for audit only
            sent = self.hint_template.render(question=q.question, choices=q.choices, hint=q.gold_answer)
            sent_text, sent_ids = render_prompt(self.tokenizer, sent, kwargs) if self.tokenizer is not None else ("",
                                                                                                             None)
            hint_text = sent_text or "\n\n".join(f"{m['role']}: {m['content']}" for m in sent)
        seed = request_seed(config.seed, q.question_id) if gen.seed_per_request else config.seed
        round_number = None if rationalize else p.rounds + 1
        too_long = prompt_too_long(len(sent_ids), self.context) if sent_ids is not None else None
        if too_long:
            logger.warning("skipped question %s (row %d)%s: %s", q.question_id, q.source_row,
                           " rationalization" if rationalize else "", too_long)
            shard.record(journal_record(q, round=round_number, rationalize=rationalize, skipped=too_long))
            return None
        max_tokens = (min(gen.max_tokens, self.context - len(sent_ids)) if self.context and sent_ids is not None
                      else gen.max_tokens)
        self.waiting[q.question_id] = Pending(shard, q, round_number, rationalize, messages, text, seed, p.sampled,
                                              hint_text)
        return TeacherRequest(
            key=q.question_id, messages=sent, prompt_text=sent_text, prompt_token_ids=sent_ids,
            # A per-request seed goes on from the samples already drawn: vLLM seeds sample i of a request with
            # seed + i, so round after round gives the samples that one request of N would have given.
            sampling=Sampling(n=n, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k,
                              max_tokens=max_tokens, stop=list(gen.stop),
                              seed=seed + p.sampled if gen.seed_per_request else None,
                              # a distribution after the hint prompt would pass the hint on to a KD student
                              logprobs=None if rationalize else gen.logprobs,
                              max_reasoning_tokens=gen.max_reasoning_tokens),
            first_sample=p.sampled,
        )

    def record(self, done: Finished) -> None:
        """One answer journaled in its shard (the wall time since the previous one with it: the shards' seconds add
        up to the run's)."""
        pending = self.waiting.pop(done.key)
        q = pending.question
        if done.error:
            logger.warning("question %s (row %d) failed: %s", q.question_id, q.source_row, done.error)
        elif done.missing:
            logger.warning("question %s (row %d): %d samples short", q.question_id, q.source_row, done.missing)
        now = time.perf_counter()
        seconds, self.clock = now - self.clock, now
        pending.shard.record(*pending.answered(done, self.config, seconds))
        if self.bar is not None:
            self.tokens += sum(c.completion_tokens for c in done.completions if not done.cached)
            self.bar.set_postfix_str(f"{self.tokens / max(now - self.started, 1e-9):,.0f} tok/s", refresh=False)
            if self.policy.next(pending.shard.progress[q.question_id]) is None:
                self.bar.update(1)
        if pending.shard.done and pending.shard not in self.finished:
            self.finished.append(pending.shard)

    def compact_finished(self) -> Iterator[dict[str, Any]]:
        while self.finished:
            yield compact(self.finished.pop(), self.config.paths, self.writer)
