"""Several teachers in one run (teachers:): rows tagged by teacher, stats and card per teacher, a teacher added to a
finished run generates only its own rows, a teacher's changed settings are refused; a run of one `teacher:` keeps its
fingerprint and rows. Real vLLM engines on the tiny models."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
import yaml

from cotdistill.config.load import dump_config, load_config
from cotdistill.core.fields import ConfigError
from cotdistill.stages.base import SettingsChanged
from tests.conftest import TINY_ENGINE, set_dotted, tiny_config_dict

pytestmark = [pytest.mark.engine]


def teachers_config(tmp_path, teachers: list[dict], **changes):
    questions = tmp_path / "questions.jsonl"
    rows = [{"question": f"How many apples are in basket {i}?", "answer": "We count.\n#### 7"} for i in range(3)]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tiny_config_dict(tmp_path, teachers[0]["model"], questions)
    del data["teacher"]
    data["teachers"] = [{"engine": dict(TINY_ENGINE), **t} for t in teachers]
    data["generate"].update(num_samples=2)
    data["filter"] = {"answer_format": "number", "near_duplicates": False}
    set_dotted(data, changes)
    path = tmp_path / "teachers.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def test_two_teachers_then_a_third_added_to_the_finished_run(tmp_path, tiny_model, parrot_model, monkeypatch):
    from cotdistill.stages import filter as filter_stage
    from cotdistill.stages import generate
    from cotdistill.teachers import build_teacher

    built = []

    def spy(model, seed, model_path=None):
        built.append(model.model)
        return build_teacher(model, seed, model_path)

    monkeypatch.setattr(generate, "build_teacher", spy)
    two = [{"name": "parrot", "model": str(parrot_model)},
           {"name": "tiny", "model": str(tiny_model), "num_samples": 3, "temperature": 0.5}]
    config = teachers_config(tmp_path, two)
    assert config.teacher.model == str(parrot_model)  # the first is the one meant where one teacher is
    stats = generate.STAGE.run(config)
    assert built == [str(parrot_model), str(tiny_model)]
    assert set(stats["teachers"]) == {"parrot", "tiny"} and stats["rationales"] == 3 * 2 + 3 * 3
    rows = pq.read_table(config.for_teacher("tiny").paths.samples / "00000.parquet").to_pylist()
    rows += pq.read_table(config.for_teacher("tiny").paths.samples / "00001.parquet").to_pylist()
    assert {r["teacher_name"] for r in rows} == {"tiny"} and all(r["sampling"]["temperature"] == 0.5 for r in rows)
    assert sorted(Counter(r["question_id"] for r in rows).values()) == [3, 3, 3]
    assert sorted(r["sample_index"] for r in rows if r["question_id"] == rows[0]["question_id"]) == [0, 1, 2]

    stats = filter_stage.STAGE.run(config)
    accepted = pq.read_table(config.paths.accepted / "00000.parquet").to_pylist()
    by_teacher = stats["teachers"]
    assert set(by_teacher) == {"parrot", "tiny"}
    assert by_teacher["parrot"]["rationales"] == 6 and by_teacher["tiny"]["rationales"] == 9
    assert by_teacher["parrot"]["accepted"] + by_teacher["tiny"]["accepted"] == stats["accepted"]
    assert by_teacher["parrot"]["accepted"] >= 1  # the parrot answers 7, the gold
    assert {r["teacher_name"] for r in accepted} <= {"parrot", "tiny"}
    # (question, teacher, sample_index) names a rationale: no two rows share it
    every = [r for name in ("accepted", "rejected") for shard in (getattr(config.paths, name)).glob("*.parquet")
             for r in pq.read_table(shard).to_pylist()]
    keys = [(r["question_id"], r["teacher_name"], r["sample_index"]) for r in every]
    assert len(keys) == len(set(keys)) == 15
    card = (config.paths.accepted / "README.md").read_text()
    assert "`parrot`" in card and "`tiny`" in card
    assert "| parrot | 6 |" in config.paths.audit.read_text()

    # A third teacher: only its rows are generated, the other two teachers' shards are left as they were.
    before = {p: p.read_bytes() for run in config.teacher_runs() for p in run.paths.samples.glob("*.parquet")}
    three = two + [{"name": "parrot_cool", "model": str(parrot_model), "temperature": 0.3}]
    config = teachers_config(tmp_path, three)
    assert not generate.STAGE.is_complete(config)
    built.clear()
    stats = generate.STAGE.run(config)
    assert built == [str(parrot_model)] and stats["teachers"]["parrot_cool"]["rationales"] == 6
    assert {p: p.read_bytes() for p in before} == before
    assert generate.STAGE.is_complete(config) and not filter_stage.STAGE.is_complete(config)
    assert filter_stage.STAGE.run(config)["teachers"]["parrot_cool"]["rationales"] == 6

    # A teacher's own settings changed under its finished rows: refused, naming what changed.
    changed = three[:1] + [{**three[1], "temperature": 0.9}] + three[2:]
    with pytest.raises(SettingsChanged, match="generate/teachers/tiny.*generate.temperature"):
        generate.STAGE.run(teachers_config(tmp_path, changed))


def test_one_teacher_keeps_its_fingerprint_and_rows(tmp_path, tiny_model):
    from cotdistill.stages import generate

    data = tiny_config_dict(tmp_path, tiny_model, tmp_path / "q.jsonl")
    (tmp_path / "q.jsonl").write_text('{"question": "How many?", "answer": "#### 7"}\n')
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    assert config.teachers == [] and config.teacher_name is None
    assert generate.fingerprint(config) == generate.teacher_fingerprint(config)
    assert config.paths.generate == config.run_dir / "generate" and config.teacher_runs() == [config]
    stats = generate.STAGE.run(config)
    rows = pq.read_table(config.paths.samples / "00000.parquet").to_pylist()
    assert len(rows) == stats["rationales"] and {r["teacher_name"] for r in rows} == {None}
    assert "teachers" not in yaml.safe_load(dump_config(config)) or not yaml.safe_load(dump_config(config))["teachers"]


@pytest.mark.parametrize("change, key", [
    ({"teacher": "same"}, "set `teacher` or `teachers`, not both"),
    ({"teachers": [{"name": "a"}, {"name": "a"}]}, "teachers: two teachers are named 'a'"),
    ({"teachers": [{"name": ""}]}, r"teachers\[0\].name"),
    ({"teachers": [{"name": "teacher"}]}, "teachers: 'teacher' is also the name"),
    ({"filter": {"per_teacher": True}, "teachers": [{"name": "a"}]}, "filter.per_teacher"),
    ({"generate": {"logprobs": 5}}, "generate.logprobs: each teacher would store"),
    ({"train": {"kd": {"teacher": "c"}}}, "train.kd.teacher: 'c' is none of the teachers"),
    ({"train": {"loss": "kd"}}, "train.loss: kd with several teachers"),
    ({"evaluate": {"models": ["teacher", "b", "c"]}}, "evaluate.models: unknown value 'c'"),
    ({"teachers": [{"name": "a", "num_samples": 0}]}, r"teachers\[0\].num_samples"),
    ({"teachers": [{"name": "a"}, {"name": "b", "temperature": 0.0}]}, r"teachers\[1\].temperature: 0 samples"),
    ({"generate": {"temperature": 0.0}}, "generate.temperature: 0 samples greedily"),
    ({"evaluate": {"temperature": 0.0}}, "evaluate.temperature: 0 samples greedily"),
])
def test_teachers_settings_are_checked_at_load(tmp_path, tiny_model, change, key):
    data = tiny_config_dict(tmp_path, tiny_model, tmp_path / "q.jsonl")
    (tmp_path / "q.jsonl").write_text('{"question": "How many?", "answer": "#### 7"}\n')
    teacher = data.pop("teacher")
    data["teachers"] = [{**teacher, "name": "a"}, {**teacher, "name": "b"}]
    for section, values in change.items():
        if section == "teacher":
            data["teacher"] = teacher
        elif section == "teachers":
            data["teachers"] = [{**teacher, **t} for t in values]
        else:
            for k, v in values.items():
                data[section][k] = v
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=key):
        load_config(path)


def test_evaluate_names_each_teacher_and_teacher_is_the_first(tmp_path, tiny_model, parrot_model):
    from cotdistill.stages.evaluate import eval_models

    config = teachers_config(tmp_path, [{"name": "parrot", "model": str(parrot_model), "prompt": "student_question.jinja"},
                                        {"name": "tiny", "model": str(tiny_model)}],
                             **{"evaluate.models": ["teacher", "tiny"]})
    teacher, tiny = eval_models(config)
    assert (teacher.name, teacher.model.model, teacher.template.path.name) == (
        "teacher", str(parrot_model), "student_question.jinja")  # the first, with its own prompt
    assert (tiny.name, tiny.model.model, tiny.template.path.name) == ("tiny", str(tiny_model), "math_zero_shot_cot.jinja")
