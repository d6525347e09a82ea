"""The math format's settings and a question's answer kind, from the config and the data to the verdicts: a question
may declare how its answer of several parts compares (data.answer_kind_field: set | tuple | single), and
filter.math / evaluate.math carry math-verify's settings (precision, extraction, strict, set_relation)."""

import json

import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.config.sections import DataConfig, FilterConfig
from cotdistill.core.fields import ConfigError
from cotdistill.questions.sources import QuestionSource, SourceError
from cotdistill.verify.answers import MathOptions, get_answer_format
from tests.test_config import BASE, QUESTIONS
from tests.test_filter import judge, sample


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_question_declares_its_answer_kind_in_a_field(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"question": "a", "answer": "1, 2", "kind": "tuple"},
        {"question": "b", "answer": "1, 2", "kind": ""},  # empty: the format's
        {"question": "c", "answer": "3", "kind": None},
        {"question": "d", "answer": "(1, 2)", "kind": " Set "},
    ])
    source = QuestionSource(DataConfig(path=str(path), answer_kind_field="kind"))
    assert [q.answer_kind for q in source.questions()] == ["tuple", None, None, "set"]
    assert sorted(source.answer_kinds().values()) == ["set", "tuple"]
    assert all(q.answer_kind is None for q in QuestionSource(DataConfig(path=str(path))).questions())


def test_a_bad_answer_kind_names_file_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "a", "answer": "1", "kind": "set"},
                                              {"question": "b", "answer": "1", "kind": "list"}])
    with pytest.raises(SourceError, match=r"q.jsonl: row 2: field 'kind': 'list' is not an answer kind; use set, "
                                          r"tuple, single"):
        QuestionSource(DataConfig(path=str(path), answer_kind_field="kind"))
    with pytest.raises(SourceError, match=r"q.jsonl: no field 'sort'"):
        QuestionSource(DataConfig(path=str(path), answer_kind_field="sort"))


def test_the_filter_judges_each_question_by_its_declared_kind():
    texts = ["\\boxed{2}, \\boxed{1}", "\\boxed{1}, \\boxed{2}"]
    samples = [sample(qid, i, text, gold="1, 2") for qid in ("inferred", "tuple", "single") for i, text in
               enumerate(texts)]
    cfg = FilterConfig(answer_format="math", drop_duplicates=False, near_duplicates=False)
    from cotdistill.stages.filter.phases import FilterContext

    ctx = FilterContext(cfg=cfg, fmt=get_answer_format("math"), seed=0,
                        answer_kinds={"tuple": "tuple", "single": "single"})
    reasons = {(s.question_id, s.sample_index): s.filter_reason for s in judge(samples, ctx)}
    assert reasons == {("inferred", 0): None, ("inferred", 1): None,  # 1, 2: a set, in any order
                       ("tuple", 0): "wrong", ("tuple", 1): None,
                       ("single", 0): "ambiguous", ("single", 1): "ambiguous"}


def load(tmp_path, **sections):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, **sections}))
    return load_config(path)


def test_math_settings_reach_the_format_and_the_fingerprints(tmp_path):
    from cotdistill.stages import filter as filter_stage
    from cotdistill.stages.evaluate.scoring import answer_format
    from cotdistill.verify.judging import teacher_answer_format

    config = load(tmp_path, filter={"answer_format": "math", "math": {"precision": 2, "extraction": ["latex"],
                                                                      "answer_kind": "set"}})
    options = MathOptions(precision=2, extraction=("latex",), answer_kind="set")
    assert teacher_answer_format(config).math == options and answer_format(config).math == options
    assert filter_stage.answer_rules(config) == {"answer_rules": 2, "math_rules": 1, "math": {
        "precision": 2, "extraction": ["latex"], "answer_kind": "set"}}
    plain = load(tmp_path, filter={"answer_format": "math"})
    assert filter_stage.answer_rules(plain) == {"answer_rules": 2, "math_rules": 1}
    assert teacher_answer_format(plain) is get_answer_format("math")
    assert filter_stage.answer_rules(load(tmp_path)) == {"answer_rules": 2}  # other formats: as before
    evaluated = load(tmp_path, filter={"answer_format": "math", "math": {"precision": 2}},
                     evaluate={"math": {"strict": False}})
    assert answer_format(evaluated).math == MathOptions(strict=False)  # evaluate.math over filter.math


def test_answer_kinds_are_in_the_filters_fingerprint_and_not_generates(tmp_path, monkeypatch):
    from cotdistill.core.fingerprints import data_settings
    from cotdistill.stages import filter as filter_stage
    from cotdistill.stages.generate import teacher_fingerprint

    monkeypatch.setattr("cotdistill.stages.generate.teacher_settings", lambda teacher: {})  # no model to read
    kinds = load(tmp_path, data={"path": QUESTIONS, "answer_kind_field": "kind"}, filter={"answer_format": "math"})
    plain = load(tmp_path, filter={"answer_format": "math"})
    assert filter_stage.answer_rules(kinds)["answer_kind_field"] == "kind"
    assert "answer_kind_field" not in data_settings(plain.data)  # unset: data keeps its fingerprint
    assert teacher_fingerprint(kinds) == teacher_fingerprint(plain)  # the corpus is not generated again


@pytest.mark.parametrize("sections, key, phrase", [
    ({"filter": {"math": {"precision": 2}}}, "filter.math", "answer format is number"),
    ({"evaluate": {"math": {"precision": 2}}}, "evaluate.math", "answer format is number"),
    ({"filter": {"answer_format": "math", "math": {"precision": 16}}}, "filter.math.precision", r"\[0, 15\]"),
    ({"filter": {"answer_format": "math", "math": {"extraction": ["latex", "text"]}}}, "filter.math.extraction",
     "unknown value 'text'"),
    ({"filter": {"answer_format": "math", "math": {"extraction": []}}}, "filter.math.extraction", "latex, expr"),
    ({"filter": {"answer_format": "math", "math": {"answer_kind": "list"}}}, "filter.math.answer_kind",
     "unknown value 'list'"),
    ({"data": {"path": QUESTIONS, "answer_kind_field": "kind"}}, "data.answer_kind_field", "answer_format: math"),
])
def test_math_settings_are_checked_at_load(tmp_path, sections, key, phrase):
    with pytest.raises(ConfigError, match=rf"run.yaml: {key}: .*{phrase}"):
        load(tmp_path, **sections)
