"""The records that flow between stages and their explicit pyarrow schemas: the contract between stages.

    write_parquet_atomic(samples_to_table(samples, SAMPLE_SCHEMA), path)  # generate; the filter adds its columns

generate writes SAMPLE_SCHEMA (one row per rationale); filter writes FILTERED_SCHEMA (the same plus its verdict);
filter.preference_pairs writes PAIR_SCHEMA (one row per chosen/rejected pair); evaluate writes EVAL_SCHEMA (one
row per question and model). Every shard is written with one of these schemas,
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
    # data.answer_kind_field (answer_format math): how its answer of several parts compares (set | tuple |
    # single); None: as the format says
    answer_kind: str | None = None


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
    # With generate.logprobs = k (or after the score step): the teacher's completion token ids, and per token its
    # k most likely next tokens and their raw logprobs (before temperature), ranks 1..k in order; null otherwise.
    # logprobs_context says which prompt they were computed after: "teacher" (the generate prompt, prompt_text)
    # or "student" (the student's prompt, train.prompt, rendered with the teacher's chat template).
    completion_token_ids: list[int] | None = None
    teacher_topk_ids: list[list[int]] | None = None
    teacher_topk_logprobs: list[list[float]] | None = None
    logprobs_context: str | None = None
    # generate.adaptive: the sampling round this rationale came from (1, 2, ...) and the number of rounds its
    # question took (the same on all its rows); null with fixed N.
    round: int | None = None
    rounds: int | None = None
    # generate.rationalize (STaR): true for a rationale the teacher wrote with the gold answer as a hint, false for
    # the question's ordinary ones; null when rationalize is off. A rationalized row keeps the question's ordinary
    # prompt_messages / prompt_text (what the student is trained after never holds the hint); the prompt the
    # teacher was really sent is in hint_prompt_text, for audit.
    rationalized: bool | None = None
    hint_prompt_text: str | None = None
    # Reasoning models: the reasoning's share of completion_tokens (null when the reasoning is not kept apart), and
    # with generate.max_reasoning_tokens whether the budget closed the reasoning (null without a budget).
    reasoning_tokens: int | None = None
    reasoning_budget_hit: bool | None = None
    # With several teachers (teachers:), the name of the one that wrote it; null for a run of one teacher.
    # sample_index is unique per (question, teacher).
    teacher_name: str | None = None
    # Added by the filter stage.
    extracted_answer: str | None = None
    is_correct: bool | None = None
    filter_reason: str | None = None
    pass_rate: float | None = None  # the question's pass rate (filter; null without a label)
    # filter.judge (only then in the shards: JUDGED_SCHEMA): the LLM judge's verdict on a rationale the rules could
    # not read (teachers/judge.JUDGE_VERDICTS), and the judge's model; null where it was not asked.
    judge_verdict: str | None = None
    judge_model: str | None = None


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
        ("completion_token_ids", pa.list_(pa.int32())),
        # float16: about 3 significant digits, plenty for a KD target, and half the bytes of float32.
        ("teacher_topk_ids", pa.list_(pa.list_(pa.int32()))),
        ("teacher_topk_logprobs", pa.list_(pa.list_(pa.float16()))),
        ("logprobs_context", pa.string()),
        ("round", pa.int32()),
        ("rounds", pa.int32()),
        ("rationalized", pa.bool_()),
        ("hint_prompt_text", pa.string()),
        ("reasoning_tokens", pa.int32()),
        ("reasoning_budget_hit", pa.bool_()),
        ("teacher_name", pa.string()),
    ]
)

LOGPROB_COLUMNS = ("completion_token_ids", "teacher_topk_ids", "teacher_topk_logprobs", "logprobs_context")

def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """pq.write_table's options for a table with the logprob columns: those (about a million values a question at
    k = 20, spread over the vocabulary) without dictionary encoding, which only pays for the repeated text columns,
    and compressed with zstd; every other column as pyarrow writes it by default (dictionary, snappy). On the
    demo's teacher at k = 20: 60 bytes per token on disk instead of 69, written about 4x faster. The schema, and
    so every reader, is unchanged."""
    def leaves(field: pa.Field, prefix: str = "") -> list[str]:  # Parquet's names for a column's leaves
        name = prefix + field.name
        if pa.types.is_list(field.type):  # pq.write_table names a list's items "element" (compliant nesting)
            return leaves(field.type.value_field.with_name("element"), name + ".list.")
        if pa.types.is_struct(field.type):
            return [leaf for child in field.type for leaf in leaves(child, name + ".")]
        return [name]

    heavy = {"completion_token_ids", "teacher_topk_ids", "teacher_topk_logprobs"}
    columns = [(field.name in heavy, leaf) for field in schema for leaf in leaves(field)]
    return {"use_dictionary": [leaf for is_heavy, leaf in columns if not is_heavy],
            "compression": {leaf: "zstd" if is_heavy else "snappy" for is_heavy, leaf in columns}}


FILTERED_SCHEMA = SAMPLE_SCHEMA.append(pa.field("extracted_answer", pa.string())).append(
    pa.field("is_correct", pa.bool_())
).append(pa.field("filter_reason", pa.string())).append(
    # The question's pass rate, on each of its rows: finished rationales reaching the label over all its
    # rationales; null with filter.label none, no majority, or a contaminated question.
    pa.field("pass_rate", pa.float64())
)
# With filter.judge: FILTERED_SCHEMA and the judge's columns. Written only then (its settings are in the filter's
# fingerprint, so every shard of such a run has them), so runs without a judge keep their shards as they are.
JUDGE_COLUMNS = ("judge_verdict", "judge_model")
JUDGED_SCHEMA = FILTERED_SCHEMA.append(pa.field("judge_verdict", pa.string())).append(
    pa.field("judge_model", pa.string()))

# filter.preference_pairs: one row per (chosen, rejected) pair, in TRL's conversational preference format (prompt,
# chosen, rejected), which DPOTrainer reads as it is; the other columns say where each side came from.
PAIR_SCHEMA = pa.schema(
    [
        ("prompt", pa.list_(MESSAGE_TYPE)),  # the student's prompt (train.prompt), as train renders it
        ("chosen", pa.list_(MESSAGE_TYPE)),  # one assistant message: an accepted rationale, as train joins it
        ("rejected", pa.list_(MESSAGE_TYPE)),  # one assistant message: a rationale of filter.pair_reasons
        ("question_id", pa.string()),
        ("chosen_sample_index", pa.int32()),
        ("rejected_sample_index", pa.int32()),
        ("rejected_reason", pa.string()),  # its filter_reason
    ]
)

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
        ("samples", pa.list_(pa.string())),  # the answers (for a reasoning model, after its reasoning)
        ("sample_answers", pa.list_(pa.string())),
        ("sample_correct", pa.list_(pa.bool_())),
        ("sample_tokens", pa.int32()),
        # Per sample: its reasoning (null when it wrote none), why it has no answer (null when it has one:
        # unparseable, ambiguous, timeout, unfinished_reasoning), its finish reason, and its tokens in all and of
        # reasoning. What thinking costs is read from these.
        ("sample_reasonings", pa.list_(pa.string())),
        ("sample_answer_reasons", pa.list_(pa.string())),
        ("sample_finish_reasons", pa.list_(pa.string())),
        ("sample_completion_tokens", pa.list_(pa.int32())),
        ("sample_reasoning_tokens", pa.list_(pa.int32())),
        ("votes", pa.list_(VOTE_TYPE)),
        ("voted_answer", pa.string()),
        ("voted_correct", pa.bool_()),
        # evaluate.adaptive: samples the stopping rule used (walking the K drawn in order), and its vote; null
        # when evaluate.adaptive is off.
        ("adaptive_samples", pa.int32()),
        ("adaptive_answer", pa.string()),
        ("adaptive_correct", pa.bool_()),
        # answer_format code: each sample's verdict on the question's tests ("passed", "tests_failed (passed 2 of
        # 5)", "exec_timeout (passed 0 of 5)", ...) and the greedy one's; null for other formats.
        ("sample_verdicts", pa.list_(pa.string())),
        ("greedy_verdict", pa.string()),
    ]
)

def encode_topk(ids: Any, logprobs: Any) -> dict[str, Any]:
    """Top-k arrays [tokens, k] -> base64 of int32 and float16 in JSON: how journals held them before their binary
    side (Journal's frames, generate/compaction.py). Not written any more; decode_topk still reads it, so a run
    resumed across the upgrade compacts its older journal records."""
    import base64

    import numpy as np

    return {"shape": list(ids.shape), "ids": base64.b64encode(np.ascontiguousarray(ids, np.int32)).decode(),
            "logprobs": base64.b64encode(np.ascontiguousarray(logprobs, np.float16)).decode()}


def decode_topk(encoded: dict[str, Any]) -> tuple[Any, Any]:
    """encode_topk's output -> the arrays: ids int32 and logprobs float16, both [tokens, k]."""
    import base64

    import numpy as np

    shape = tuple(encoded["shape"])
    ids = np.frombuffer(base64.b64decode(encoded["ids"]), dtype=np.int32).reshape(shape)
    logprobs = np.frombuffer(base64.b64decode(encoded["logprobs"]), dtype=np.float16).reshape(shape)
    return ids, logprobs


class LogprobColumns:
    """SAMPLE_SCHEMA's completion_token_ids, teacher_topk_ids and teacher_topk_logprobs columns built from numpy
    buffers and offsets (pa.ListArray.from_arrays), never from nested Python lists: every row is added in table
    order, with its arrays or without (a null row).

        columns = LogprobColumns()
        columns.add(token_ids, topk_ids, topk_logprobs)     # one row: [T] int32, [T, k] int32, [T, k] float16
        columns.add_none()                                   # a row without logprobs
        table = columns.set_on(table)                        # the three columns replaced
    """

    NAMES = ("completion_token_ids", "teacher_topk_ids", "teacher_topk_logprobs")

    def __init__(self) -> None:
        self.lengths: list[int] = []  # tokens per row (0 for a null row)
        self.ks: list[int] = []  # k per row
        self.valid: list[bool] = []
        self.tokens: list[Any] = []  # value chunks, in row order
        self.ids: list[Any] = []
        self.logprobs: list[Any] = []

    def add_none(self) -> None:
        self.lengths.append(0)
        self.ks.append(0)
        self.valid.append(False)

    def add(self, token_ids: Any, topk_ids: Any, topk_logprobs: Any) -> None:
        self.add_many([tuple(topk_ids.shape)], token_ids, topk_ids.reshape(-1), topk_logprobs.reshape(-1))

    def add_many(self, shapes: list[tuple[int, int]], tokens: Any, ids: Any, logprobs: Any) -> None:
        """Several rows in a row, `shapes` their (T, k), their values already concatenated in that order: tokens
        (sum of T), ids and logprobs (sum of T * k)."""
        for length, k in shapes:
            self.lengths.append(length)
            self.ks.append(k)
            self.valid.append(True)
        self.tokens.append(tokens)
        self.ids.append(ids)
        self.logprobs.append(logprobs)

    def columns(self) -> dict[str, pa.Array]:
        import numpy as np

        lengths = np.asarray(self.lengths, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        inner = np.zeros(int(offsets[-1]) + 1, dtype=np.int64)  # each token's k values
        np.cumsum(np.repeat(np.asarray(self.ks, dtype=np.int64), lengths), out=inner[1:])
        if inner[-1] >= 2 ** 31:
            raise ValueError(f"{inner[-1]:,} top-k values in one shard: more than a Parquet list column's int32 "
                             "offsets hold; lower generate.questions_per_shard")
        mask = pa.array(~np.asarray(self.valid, dtype=bool)) if not all(self.valid) else None
        outer = pa.array(offsets.astype(np.int32))
        inner_offsets = pa.array(inner.astype(np.int32))

        def values(chunks: list[Any], dtype: Any) -> pa.Array:
            return pa.array(np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.zeros(0, dtype))

        return {
            "completion_token_ids": pa.ListArray.from_arrays(outer, values(self.tokens, np.int32), mask=mask),
            "teacher_topk_ids": pa.ListArray.from_arrays(
                outer, pa.ListArray.from_arrays(inner_offsets, values(self.ids, np.int32)), mask=mask),
            "teacher_topk_logprobs": pa.ListArray.from_arrays(
                outer, pa.ListArray.from_arrays(inner_offsets, values(self.logprobs, np.float16)), mask=mask),
        }

    def set_on(self, table: pa.Table) -> pa.Table:
        """`table` (one row per row added) with the three columns replaced; as it was when no row has logprobs."""
        if not any(self.valid):
            return table
        if len(self.valid) != table.num_rows:
            raise ValueError(f"logprob columns of {len(self.valid)} rows for a table of {table.num_rows}")
        for name, column in self.columns().items():
            index = table.schema.get_field_index(name)
            table = table.set_column(index, table.schema.field(index), column)
        return table


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
