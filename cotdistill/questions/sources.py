"""Questions from a Hugging Face dataset id or local JSON, JSONL, Parquet or CSV files, loaded with `datasets`.

    source = QuestionSource(config.data)          # checks every row now: a bad one fails before any engine starts
    for q in source.questions(start, stop): ...   # Question records, a slice at a time

Each question gets a stable id: the configured id field, else a hash of the question text (so ids survive
re-ordering and re-running). Every problem with the input is a SourceError naming the file, row and field.
Rows are numbered from 1, in the order the file holds them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from cotdistill.core.paths import DATA_SUFFIXES, data_suffix, local_files, looks_local
from cotdistill.core.records import Question
from cotdistill.verify.answers import ANSWER_KINDS, GOLD_PARSERS, GoldParseError
from cotdistill.verify.code import CodeTests, parse_code_tests

if TYPE_CHECKING:
    from cotdistill.config.sections import DataConfig, SandboxConfig
    from cotdistill.verify.judging import CodeChecks

logger = logging.getLogger(__name__)


class SourceError(ValueError):
    pass


def first_non_utf8_line(path: str) -> str | None:
    """Where a text file stops being UTF-8 (datasets' codec error names no file and no line)."""
    with open(path, "rb") as f:
        for line_number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return (f"{path}: line {line_number}: not valid UTF-8 (byte 0x{line[e.start]:02x} at column "
                        f"{e.start + 1}); save the file as UTF-8")
    return None


def _first_bad_json_line(path: str) -> str | None:
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    return f"{path}: line {line_number}: not valid JSON ({e.msg} at column {e.colno})"
                if not isinstance(row, dict):
                    return f"{path}: line {line_number}: expected a JSON object, got {type(row).__name__}"
    return None


def load_rows(cfg: DataConfig):
    """The raw `datasets.Dataset` of a source, or SourceError naming the file and what is wrong."""
    import datasets

    files = local_files(cfg.path)
    if files is None and looks_local(cfg.path):
        raise SourceError(f"{cfg.path}: no such file or folder")
    if files is None:  # a hub dataset id
        try:
            return datasets.load_dataset(cfg.path, cfg.name, split=cfg.split)
        except Exception as e:  # datasets raises many types; the message is what the user needs
            raise SourceError(f"{cfg.path}: could not load dataset (split {cfg.split!r}): {e}") from None
    if not files:
        raise SourceError(f"{cfg.path}: no .jsonl, .json, .jsonl.gz, .parquet or .csv files there")
    suffixes = {data_suffix(f) for f in files}
    if len(suffixes) != 1 or next(iter(suffixes)) not in DATA_SUFFIXES:
        raise SourceError(f"{cfg.path}: expected files of one type among {', '.join(DATA_SUFFIXES)}, got {suffixes}")
    for f in files:
        if Path(f).stat().st_size == 0:
            raise SourceError(f"{f}: the file is empty")
    suffix = suffixes.pop()
    builder = DATA_SUFFIXES[suffix]
    for f in files if suffix != ".jsonl.gz" else []:  # name the bad line; datasets' own errors do not
        problem = (first_non_utf8_line(f) if builder in ("json", "csv") else None) or (
            _first_bad_json_line(f) if builder == "json" else None)
        if problem:
            raise SourceError(problem)
    try:
        return datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as e:
        raise SourceError(f"{cfg.path}: could not be read as {builder}: {e}") from None


def require_fields(cfg: DataConfig, rows, fields: list[str]) -> None:
    for field_name in fields:
        if field_name not in rows.column_names:
            raise SourceError(f"{cfg.path}: no field '{field_name}' (fields: {', '.join(rows.column_names)})")


class QuestionSource:
    """A checked, id'd view of a dataset: `len(source)` questions, read in slices to keep memory bounded."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        if cfg.gold_format not in GOLD_PARSERS:
            raise SourceError(
                f"{cfg.path}: unknown gold_format {cfg.gold_format!r}; known: {', '.join(GOLD_PARSERS)}"
            )
        rows = load_rows(cfg)
        if len(rows) == 0:
            raise SourceError(f"{cfg.path}: no rows")
        if cfg.limit is not None:
            rows = rows.select(range(min(cfg.limit, len(rows))))
        # choices_field may reach into a struct column: "choices.text" (CommonsenseQA, ARC).
        self.choices_column, _, self.choices_key = (cfg.choices_field or "").partition(".")
        wanted = [f for f in (cfg.question_field, cfg.answer_field, self.choices_column, cfg.id_field,
                              cfg.tests_field, cfg.entry_point_field, cfg.answer_kind_field) if f]
        require_fields(cfg, rows, wanted)
        self.rows = rows.select_columns(list(dict.fromkeys(wanted)))
        self.kinds: list[str | None] = []  # data.answer_kind_field's, per row (None: the format's)
        self.ids, self.golds = self._check_rows()
        self.index = {qid: i for i, qid in enumerate(self.ids)}

    def _check_rows(self) -> tuple[list[str], list[str | None]]:
        cfg, parse_gold = self.cfg, GOLD_PARSERS[self.cfg.gold_format]
        ids: list[str] = []
        golds: list[str | None] = []
        seen: dict[str, int] = {}
        duplicates = 0
        for start in range(0, len(self.rows), 10_000):
            batch = self.rows[start : start + 10_000]
            for offset, question in enumerate(batch[cfg.question_field]):
                row_number = start + offset + 1
                where = f"{cfg.path}: row {row_number}"
                if not isinstance(question, str) or not question.strip():
                    raise SourceError(f"{where}: field '{cfg.question_field}' is missing or empty")
                if cfg.answer_field is None:  # unlabelled questions, for the filter's majority mode
                    golds.append(None)
                else:
                    answer = batch[cfg.answer_field][offset]
                    if answer is None or (isinstance(answer, str) and not answer.strip()):
                        raise SourceError(f"{where}: field '{cfg.answer_field}' is missing or empty")
                    try:
                        golds.append(parse_gold(answer))
                    except GoldParseError as e:
                        raise SourceError(f"{where}: field '{cfg.answer_field}': {e}") from None
                    except (ValueError, TypeError, ArithmeticError) as e:  # a parser's own bug: still name the row
                        raise SourceError(f"{where}: field '{cfg.answer_field}': cannot parse {answer!r} as a "
                                          f"{cfg.gold_format} gold: {e}") from None
                if cfg.choices_field:
                    choices = self._choices(batch, offset)
                    if not isinstance(choices, list) or not choices:
                        raise SourceError(f"{where}: field '{cfg.choices_field}' must be a non-empty list")
                    gold = golds[-1]
                    if cfg.gold_format == "choice_letter" and gold is not None and ord(gold) - ord("A") >= len(choices):
                        raise SourceError(f"{where}: field '{cfg.answer_field}': gold choice {gold} is not among "
                                          f"the {len(choices)} choices of field '{cfg.choices_field}'")
                if cfg.tests_format:  # parsed now to name a bad row; kept in the source, read per question
                    self._read_tests(batch, offset, where)
                if cfg.answer_kind_field:
                    self.kinds.append(self._answer_kind(batch[cfg.answer_kind_field][offset], where))
                if cfg.id_field:
                    raw_id = batch[cfg.id_field][offset]
                    if raw_id is None or not str(raw_id).strip():
                        raise SourceError(f"{where}: field '{cfg.id_field}' is missing or empty")
                    qid = str(raw_id)
                    if qid in seen:  # two questions under one id would be merged by the filter: refuse
                        raise SourceError(f"{where}: field '{cfg.id_field}': id {qid!r} is also the id of row "
                                          f"{seen[qid]}; ids must be unique")
                    seen[qid] = row_number
                else:
                    qid = hashlib.sha1(question.strip().encode()).hexdigest()[:16]
                    if qid in seen:  # the same text twice: a suffix keeps ids unique and stable, and says so
                        duplicates += 1
                        seen[qid] += 1
                        qid = f"{qid}-{seen[qid]}"
                    else:
                        seen[qid] = 1
                ids.append(qid)
        if duplicates:
            logger.warning("%s: %d questions repeat an earlier question's text; each is kept under its own id",
                           cfg.path, duplicates)
        return ids, golds

    def _answer_kind(self, value: object, where: str) -> str | None:
        """A row's answer kind: set, tuple or single; empty (None, "") leaves it to the format."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        kind = value.strip().lower() if isinstance(value, str) else value
        if kind not in ANSWER_KINDS:
            raise SourceError(f"{where}: field '{self.cfg.answer_kind_field}': {value!r} is not an answer kind; "
                              f"use {', '.join(ANSWER_KINDS)}, or leave it empty for the format's")
        return kind

    def answer_kinds(self) -> dict[str, str]:
        """question id -> its declared answer kind (data.answer_kind_field), for the questions that declare one."""
        return {qid: kind for qid, kind in zip(self.ids, self.kinds) if kind is not None}

    def _read_tests(self, batch: dict, offset: int, where: str) -> CodeTests:
        cfg = self.cfg
        entry_point = batch[cfg.entry_point_field][offset] if cfg.entry_point_field else None
        if cfg.entry_point_field and (not isinstance(entry_point, str) or not entry_point.isidentifier()):
            raise SourceError(f"{where}: field '{cfg.entry_point_field}': {entry_point!r} is not a function name")
        try:
            return parse_code_tests(cfg.tests_format, batch[cfg.tests_field][offset], entry_point)
        except ValueError as e:
            raise SourceError(f"{where}: field '{cfg.tests_field}': {e}") from None

    def code_tests(self, question_id: str) -> CodeTests | None:
        """A code problem's tests (data.tests_format), read from the source when asked: stored once per question,
        never on rationale rows. None for a question not in this source."""
        i = self.index.get(question_id)
        if i is None or not self.cfg.tests_format:
            return None
        return self._read_tests(self.rows[i:i + 1], 0, f"{self.cfg.path}: row {i + 1}")

    def code_checks(self, sandbox: SandboxConfig) -> CodeChecks:
        """Verdicts on code answers to these questions, against their tests, in the sandbox `sandbox` names."""
        from cotdistill.verify.code import code_judge
        from cotdistill.verify.judging import CodeChecks

        return CodeChecks(self.code_tests, code_judge(sandbox), self.cfg.path)

    def _choices(self, batch: dict, offset: int) -> list | None:
        value = batch[self.choices_column][offset]
        if self.choices_key:
            value = value.get(self.choices_key) if isinstance(value, dict) else None
        return value

    def __len__(self) -> int:
        return len(self.rows)

    def questions(self, start: int = 0, stop: int | None = None) -> Iterator[Question]:
        stop = len(self) if stop is None else min(stop, len(self))
        batch = self.rows[start:stop]
        cfg = self.cfg
        for offset in range(stop - start):
            i = start + offset
            choices = self._choices(batch, offset) if cfg.choices_field else None
            yield Question(
                question_id=self.ids[i],
                question=batch[cfg.question_field][offset].strip(),
                gold_answer=self.golds[i],
                choices=[str(c) for c in choices] if choices else None,
                source_row=i + 1,
                answer_kind=self.kinds[i] if self.kinds else None,
            )


def load_question_texts(cfg: DataConfig) -> list[str]:
    """Only the question texts of a source (for decontamination): no gold needed, empty rows skipped."""
    rows = load_rows(cfg)
    require_fields(cfg, rows, [cfg.question_field])
    texts = rows[cfg.question_field]
    return [t for t in texts if isinstance(t, str) and t.strip()]
