"""Where each question of a generate run stands, and what it is sent next: fixed N, adaptive rounds, STaR's
rationalization. A question's Progress is a pure function of its journal records (Policy.absorb), built the same
way live and when a rerun replays the journal.

    step = Policy(config).next(shard.progress[question_id])     # ("round", n), ("hint", n) or None: done
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cotdistill.config.run import RunConfig
from cotdistill.core.records import Question
from cotdistill.core.shards import Journal
from cotdistill.verify.answers import group_equivalent
from cotdistill.verify.judging import question_reaching_gold, question_votes, teacher_answer_format
from cotdistill.verify.stopping import should_stop


@dataclass
class Progress:
    """Where one question stands: what its journal records add up to. Built by Policy.absorb, the same way live and
    when a rerun replays the journal, so a resumed question goes on exactly where it stopped."""

    sampled: int = 0  # ordinary samples back (sample_index of the next one)
    rounds: int = 0  # ordinary requests back
    correct: int = 0  # of those samples, the ones reaching the gold (filter.label gold)
    answers: list[str | None] = field(default_factory=list)  # their answers, for the stopping rule (label majority)
    closed: str | None = None  # why sampling ended: fixed | target | rule | cap | skipped | error
    hinted: bool = False  # its rationalization request is back (or was skipped)


class Policy:
    """When a question is done, and what it is sent next: fixed N (one request of n=N), adaptive rounds, and the
    STaR rationalization after them. Pure over the journaled records."""

    def __init__(self, config: RunConfig):
        gen = config.generate
        self.gen, self.adaptive, self.label = gen, gen.adaptive, config.filter.label
        # The filter's own answer check (cotdistill/verify/judging.py), only when a verdict is needed here.
        self.fmt = teacher_answer_format(config) if gen.adaptive or gen.rationalize else None
        self.code = config.code_checks() if self.fmt is not None else None  # answer_format code: the sandbox

    def absorb(self, p: Progress, record: dict[str, Any], q: Question, replaying: bool = False) -> bool:
        """Add one journaled record to the question's progress; False for a record that does not follow on (a
        duplicate), which is then ignored, here and at compaction (Shard.taken). A request that failed (or came
        back short) ends its question for the run it happened in; replayed by a rerun it is ignored, so the rerun
        sends that request again: a failed question is not done work."""
        if replaying and (record["error"] or record.get("missing")):
            return False
        if record.get("rationalize"):
            if p.closed is None or p.hinted or not self.needs_hint(p):
                return False
            p.hinted = True
            return True
        if p.closed is not None or record.get("round", 1) != p.rounds + 1:
            return False
        if record["skipped"]:
            p.closed = "skipped"
            return True
        p.rounds += 1
        if record["error"] or not record["samples"]:
            p.closed = "error"
            return True
        rows = record["samples"]
        p.sampled += len(rows)
        fmt = self.fmt.with_answer_kind(q.answer_kind) if self.fmt is not None else None  # the question's own
        if fmt is not None and self.label == "gold":
            p.correct += sum(question_reaching_gold(q.question_id, q.gold_answer, q.choices, rows, fmt, self.code))
        elif fmt is not None and self.label == "majority":
            p.answers.extend(question_votes(q.question_id, q.choices, rows, fmt, self.code))
        p.closed = self.close_reason(p)
        return True

    def close_reason(self, p: Progress) -> str | None:
        ad = self.adaptive
        if ad is None:
            return "fixed"
        if self.label == "gold" and p.correct >= ad.target_correct:
            return "target"
        if self.label == "majority" and should_stop(group_equivalent(p.answers, self.fmt), ad.rule, ad.confidence,
                                                    ad.window):
            return "rule"
        return "cap" if p.sampled >= self.gen.num_samples else None

    def needs_hint(self, p: Progress) -> bool:
        """STaR: sampling over, and no rationale reached the gold."""
        return self.gen.rationalize and p.closed in ("fixed", "target", "rule", "cap") and p.correct == 0

    def next(self, p: Progress) -> tuple[str, int] | None:
        """("round", n), ("hint", n), or None when the question is done."""
        if p.closed is None:
            n = self.gen.num_samples if self.adaptive is None else min(self.adaptive.round_size,
                                                                        self.gen.num_samples - p.sampled)
            return "round", n
        if self.needs_hint(p) and not p.hinted:
            return "hint", self.gen.rationalize_samples
        return None


@dataclass(eq=False)
class Shard:
    """One shard's questions and where each stands, as its journal says."""

    index: int
    questions: list[Question]
    journal: Journal
    policy: Policy
    progress: dict[str, Progress] = field(default_factory=dict)  # question_id -> its progress
    all_sent: bool = False  # every question has been through one pass
    compacted: bool = False
    # the journal records absorbed: each one's key -> its position in the journal (a retried request's record
    # follows the failed one it replaces, under the same key)
    taken: dict[tuple[str, int | None, bool], int] = field(default_factory=dict)
    records: int = 0  # journal records seen so far, replayed or written

    def __post_init__(self) -> None:
        self.progress = {q.question_id: Progress() for q in self.questions}
        self._by_id = {q.question_id: q for q in self.questions}

    def absorb(self, record: dict[str, Any], replaying: bool = False) -> bool:
        position, self.records = self.records, self.records + 1
        qid = record["question_id"]
        if qid not in self._by_id or not self.policy.absorb(self.progress[qid], record, self._by_id[qid], replaying):
            return False
        self.taken[record_key(record)] = position
        return True

    @property
    def done(self) -> bool:
        return self.all_sent and not self.compacted and all(
            self.policy.next(self.progress[q.question_id]) is None for q in self.questions)

    def replay(self) -> int:
        """Rebuild every question's progress from the journal (a rerun); returns the records taken."""
        return sum(self.absorb(record, replaying=True) for record in self.journal.read())

    def record(self, record: dict[str, Any], arrays: list[Any] | None = None) -> None:
        """Journal one record (with `arrays`, the buffers of its top-k arrays: the journal's binary side) and
        absorb it."""
        self.absorb(self.journal.append(record, arrays))


def record_key(record: dict[str, Any]) -> tuple[str, int | None, bool]:
    """What a journal record is: its question, its round, or its question's rationalization."""
    return record["question_id"], record.get("round", 1), bool(record.get("rationalize"))
