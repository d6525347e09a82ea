"""The records that flow between stages and their explicit pyarrow schemas: the contract between stages.

generate writes SAMPLE_SCHEMA (one row per rationale); filter writes FILTERED_SCHEMA (the same plus its verdict);
evaluate writes EVAL_SCHEMA (one row per question and model). Every shard is written with one of these schemas,
so a reader never has to guess a type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

import pyarrow as pa


@dataclass
class Question:
    question_id: str
    question: str
    gold_answer: str | None  # None for unlabelled questions (the filter's majority mode)
    choices: list[str] | None = None
    source_row: int = 0  # row index in the source, for error messages and audits


@dataclass
class Sample:
    """One teacher rationale for one question."""

    question_id: str
    sample_index: int
    question: str
    gold_answer: str | None
    choices: list[str] | None
    prompt_messages: list[dict[str, str]]
    prompt_text: str
    rationale: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    teacher: str
    sampling: dict[str, Any]
    seed: int
    run_id: str
    # The reasoning apart from the answer, when the teacher returns it so (reasoning models' reasoning_content);
    # null otherwise. train joins the two in the student's format (train.reasoning_format).
    reasoning: str | None = None
    # Added by the filter stage.
    extracted_answer: str | None = None
    is_correct: bool | None = None
    filter_reason: str | None = None


MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])

SAMPLING_TYPE = pa.struct(
    [
        ("n", pa.int32()),
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("top_k", pa.int32()),
        ("max_tokens", pa.int32()),
        ("stop", pa.list_(pa.string())),
    ]
)

SAMPLE_SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("sample_index", pa.int32()),
        ("question", pa.string()),
        ("gold_answer", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("prompt_messages", pa.list_(MESSAGE_TYPE)),
        ("prompt_text", pa.string()),
        ("rationale", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("teacher", pa.string()),
        ("sampling", SAMPLING_TYPE),
        ("seed", pa.int64()),
        ("run_id", pa.string()),
        ("reasoning", pa.string()),
    ]
)

FILTERED_SCHEMA = SAMPLE_SCHEMA.append(pa.field("extracted_answer", pa.string())).append(
    pa.field("is_correct", pa.bool_())
).append(pa.field("filter_reason", pa.string()))

VOTE_TYPE = pa.struct([("answer", pa.string()), ("count", pa.int32())])

EVAL_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("question_id", pa.string()),
        ("question", pa.string()),
        ("gold_answer", pa.string()),
        ("skip_reason", pa.string()),  # e.g. the prompt did not fit the context; the question counts as wrong
        ("greedy_completion", pa.string()),
        ("greedy_answer", pa.string()),
        ("greedy_correct", pa.bool_()),
        ("greedy_tokens", pa.int32()),
        ("samples", pa.list_(pa.string())),
        ("sample_answers", pa.list_(pa.string())),
        ("sample_correct", pa.list_(pa.bool_())),
        ("sample_tokens", pa.int32()),
        ("votes", pa.list_(VOTE_TYPE)),
        ("voted_answer", pa.string()),
        ("voted_correct", pa.bool_()),
    ]
)

def samples_to_table(samples: Iterable[Sample], schema: pa.Schema = SAMPLE_SCHEMA) -> pa.Table:
    rows = [asdict(s) for s in samples]
    return pa.Table.from_pylist(rows, schema=schema)


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def student_text(rationale: str, reasoning: str | None, reasoning_format: str) -> str:
    """The text the student learns from one rationale: the rationale, or, for a reasoning teacher whose server
    kept the reasoning apart, both joined in the student's format (train.reasoning_format, for example
    "<think>\n{reasoning}\n</think>\n\n{answer}"). The filter counts these tokens for too_long."""
    if reasoning is None or not reasoning.strip():
        return rationale.strip()
    return reasoning_format.format(reasoning=reasoning.strip(), answer=rationale.strip())
