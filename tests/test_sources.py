"""Bad input gets a message naming the file, row and field."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cotdistill.config.sections import DataConfig
from cotdistill.questions.sources import QuestionSource, SourceError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_file_loads_with_stable_ids(gsm8k_rows):
    from tests.conftest import GSM8K_TEST

    source = QuestionSource(DataConfig(path=str(GSM8K_TEST), gold_format="gsm8k", limit=20))
    questions = list(source.questions())
    assert len(questions) == 20 and len(source) == 20
    assert questions[0].gold_answer == "18"  # Janet's ducks
    again = list(QuestionSource(DataConfig(path=str(GSM8K_TEST), gold_format="gsm8k", limit=20)).questions())
    assert [q.question_id for q in questions] == [q.question_id for q in again]
    assert len({q.question_id for q in questions}) == 20
    assert [q.question_id for q in source.questions(5, 8)] == [q.question_id for q in questions[5:8]]


def test_duplicate_questions_get_distinct_ids(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "same?", "answer": "1"}] * 3)
    ids = QuestionSource(DataConfig(path=str(path))).ids
    assert len(set(ids)) == 3 and ids[1] == ids[0] + "-2"


def test_missing_field_names_file_and_field(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "a", "solution": "1"}])
    with pytest.raises(SourceError, match=r"q.jsonl: no field 'answer' \(fields: question, solution\)"):
        QuestionSource(DataConfig(path=str(path)))


def test_missing_value_names_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "a", "answer": "1"}, {"question": "b", "answer": None}])
    with pytest.raises(SourceError, match=r"q.jsonl: row 2: field 'answer' is missing or empty"):
        QuestionSource(DataConfig(path=str(path)))


def test_unparseable_gold_names_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "a", "answer": "x\n#### 4"}, {"question": "b", "answer": "none"}])
    with pytest.raises(SourceError, match=r"row 2: field 'answer': no '####' marker"):
        QuestionSource(DataConfig(path=str(path), gold_format="gsm8k"))


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n{"question": "b", "answer": \n')
    with pytest.raises(SourceError, match=r"q.jsonl: line 2: not valid JSON"):
        QuestionSource(DataConfig(path=str(path)))


def test_empty_file(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("")
    with pytest.raises(SourceError, match="q.jsonl: the file is empty"):
        QuestionSource(DataConfig(path=str(path)))


def test_parquet_and_csv_sources(tmp_path):
    pq.write_table(pa.table({"problem": ["1+1?", "2+2?"], "target": ["2", "4"]}), tmp_path / "q.parquet")
    source = QuestionSource(DataConfig(path=str(tmp_path / "q.parquet"), question_field="problem", answer_field="target"))
    assert [q.gold_answer for q in source.questions()] == ["2", "4"]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "q.csv").write_text("question,answer\nWhat is 3?,3\n")
    assert [q.question for q in QuestionSource(DataConfig(path=str(tmp_path / "c"))).questions()] == ["What is 3?"]


def test_multiple_choice_from_a_struct_field(tmp_path):
    rows = [{"question": "Sky?", "choices": {"label": ["A", "B"], "text": ["green", "blue"]}, "answerKey": "B"}]
    path = write_jsonl(tmp_path / "q.jsonl", rows)
    cfg = DataConfig(path=str(path), answer_field="answerKey", choices_field="choices.text", gold_format="choice_letter")
    (q,) = QuestionSource(cfg).questions()
    assert q.choices == ["green", "blue"] and q.gold_answer == "B"


def test_no_such_path(tmp_path):
    with pytest.raises(SourceError, match="no .jsonl"):
        QuestionSource(DataConfig(path=str(tmp_path)))
