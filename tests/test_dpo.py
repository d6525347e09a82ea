"""Preference pairs from the filter and the dpo stage: every pair's chosen is an accepted rationale and its
rejected a wrong one of the same question, with the student's prompt; DPO runs real steps (TRL's DPOTrainer) on
the tiny model from the SFT student, and evaluate scores student_dpo beside the student on the real engine."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.core.fields import ConfigError
from cotdistill.core.fingerprints import make_fingerprint, write_fingerprint
from cotdistill.core.prompts import PromptTemplate
from cotdistill.core.records import FILTERED_SCHEMA, PAIR_SCHEMA, SAMPLE_SCHEMA, Sample, samples_to_table
from cotdistill.core.shards import read_json, write_json_atomic, write_parquet_atomic
from cotdistill.stages.filter.pairs import preference_pairs
from tests.conftest import set_dotted, tiny_config_dict


def sample(qid: str, index: int, rationale: str, question: str = "", gold: str | None = None, **judged) -> Sample:
    return Sample(question_id=qid, sample_index=index, question=question or f"question {qid}", gold_answer=gold,
                  choices=None, prompt_messages=[], prompt_text="", rationale=rationale, finish_reason="stop",
                  prompt_tokens=1, completion_tokens=8, teacher="hand", sampling={}, seed=0, run_id="r", **judged)


def judged_table(rows: list[tuple[str, int, str | None]]):
    """(question, sample index, filter_reason) -> a judged shard."""
    return samples_to_table([sample(q, i, f"{q} text {i}", filter_reason=why) for q, i, why in rows],
                            FILTERED_SCHEMA)


def draw(table, reasons=("wrong",), per_question=3, seed=0):
    return preference_pairs(table, list(reasons), per_question, seed,
                            lambda q, c: [{"role": "user", "content": q}], lambda r, reasoning: r)


def test_pairs_take_accepted_against_the_named_reasons_of_the_same_question():
    rows = [("a", 0, None), ("a", 1, "wrong"), ("a", 2, None), ("a", 3, "duplicate"), ("a", 4, "wrong"),
            ("a", 5, "truncated"), ("b", 0, None), ("b", 1, None), ("c", 0, "wrong")]
    pairs = draw(judged_table(rows))
    # a: 2 accepted x 2 wrong = 4 combinations, 3 drawn; b has nothing rejected, c nothing accepted
    assert len(pairs) == 3 and {p["question_id"] for p in pairs} == {"a"}
    assert len({(p["chosen_sample_index"], p["rejected_sample_index"]) for p in pairs}) == 3
    for p in pairs:
        assert p["chosen_sample_index"] in (0, 2) and p["rejected_sample_index"] in (1, 4)
        assert p["rejected_reason"] == "wrong" and p["prompt"] == [{"role": "user", "content": "question a"}]
        assert p["chosen"] == [{"role": "assistant", "content": f"a text {p['chosen_sample_index']}"}]
        assert p["rejected"] == [{"role": "assistant", "content": f"a text {p['rejected_sample_index']}"}]
    # the draw is the run's seed and the question's: not the shard's order
    assert draw(judged_table(rows[::-1])) == pairs
    assert len(draw(judged_table(rows), per_question=10)) == 4
    assert {p["rejected_reason"] for p in draw(judged_table(rows), reasons=("wrong", "truncated"), per_question=10)} \
        == {"wrong", "truncated"}
    # the pairs fit the schema the filter writes them with
    from cotdistill.core.records import rows_to_table

    assert rows_to_table(pairs, PAIR_SCHEMA).num_rows == 3


def run_config(tmp_path, model, **changes):
    data = tiny_config_dict(tmp_path, model, tmp_path / "questions.jsonl")
    data["filter"] = {"answer_format": "number", "preference_pairs": True, "pairs_per_question": 2,
                      "near_duplicates": False}
    data["train"]["sft"].update(max_steps=1)
    data["dpo"] = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 256, "learning_rate": 1e-3,
                   "save_steps": 1, "logging_steps": 1, "beta": 0.1}
    data["evaluate"].update(models=["student", "student_dpo"], num_samples=2, greedy=False)
    set_dotted(data, changes)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def write_generate(config, gsm8k_rows, questions: int = 4) -> dict[str, str]:
    """A finished generate by hand: per question two rationales reaching its gold and two a wrong number."""
    samples, gold = [], {}
    for q, row in enumerate(gsm8k_rows[:questions]):
        answer = row["answer"].split("####")[-1].strip()
        qid, gold[f"q{q}"] = f"q{q}", answer
        texts = [f"We add them up. The answer is {answer}.", f"Counting each, we get {answer}. The answer is {answer}.",
                 f"We guess. The answer is {int(answer) + 1}.", f"We guess again. The answer is {int(answer) + 2}."]
        samples += [sample(qid, i, text, row["question"], answer) for i, text in enumerate(texts)]
    write_parquet_atomic(samples_to_table(samples, SAMPLE_SCHEMA), config.paths.samples / "00000.parquet")
    write_json_atomic({"shards": 1}, config.paths.generate / "stats.json")
    write_fingerprint(config.paths.generate, make_fingerprint({"generate": "by hand"}))
    return gold


@pytest.mark.engine
def test_filter_pairs_then_dpo_then_evaluate_student_dpo(tmp_path, tiny_model, gsm8k_rows):
    from cotdistill.stages import dpo
    from cotdistill.stages import evaluate
    from cotdistill.stages import filter as filter_stage
    from cotdistill.stages import train

    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[:4]))
    config = run_config(tmp_path, tiny_model)
    write_generate(config, gsm8k_rows)

    stats = filter_stage.STAGE.run(config)
    assert stats["accepted"] == 8 and stats["rejected"]["wrong"] == 8
    assert stats["pairs"] == {"pairs": 8, "questions": 4, "by_reason": {"wrong": 8}, "files": ["00000.parquet"]}
    pairs = pq.read_table(config.paths.pairs / "00000.parquet")
    assert pairs.schema.equals(PAIR_SCHEMA)
    accepted = {(r["question_id"], r["sample_index"]): r for r in pq.read_table(config.paths.accepted / "00000.parquet").to_pylist()}
    rejected = {(r["question_id"], r["sample_index"]): r for r in pq.read_table(config.paths.rejected / "00000.parquet").to_pylist()}
    template = PromptTemplate(config.train.prompt)
    for pair in pairs.to_pylist():
        chosen = accepted[(pair["question_id"], pair["chosen_sample_index"])]
        wrong = rejected[(pair["question_id"], pair["rejected_sample_index"])]
        assert wrong["filter_reason"] == "wrong" and wrong["question_id"] == chosen["question_id"]
        assert pair["chosen"] == [{"role": "assistant", "content": chosen["rationale"]}]
        assert pair["rejected"] == [{"role": "assistant", "content": wrong["rationale"]}]
        assert pair["prompt"] == template.render(question=chosen["question"], choices=None)  # the student's
    assert "8 pairs over 4" in (config.paths.pairs / "README.md").read_text()
    assert "Preference pairs (filter/pairs/): 8 over 4 questions" in config.paths.audit.read_text()

    train.STAGE.run(config)
    result = dpo.STAGE.run(config)
    assert result["global_steps"] == 2 and result["pairs"] == 8 and result["steps_this_run"] == 2
    assert (config.paths.dpo_model / "config.json").is_file() and read_json(config.paths.dpo / "stats.json") == result
    assert "trained by DPO" in (config.paths.dpo_model / "README.md").read_text()
    assert dpo.STAGE.is_complete(config)
    # the weights moved: DPO trained the SFT student, not a copy of it
    from safetensors.numpy import load_file

    before, after = (load_file(str(folder / "model.safetensors"))
                     for folder in (config.paths.trained_model, config.paths.dpo_model))
    assert any(abs(before[k] - after[k]).max() > 0 for k in before)

    metrics = evaluate.STAGE.run(config)["models"]
    assert set(metrics) == {"student", "student_dpo"}
    assert metrics["student_dpo"]["k"] == 2 and config.paths.eval_rows("student_dpo").is_file()
    assert "student_dpo" in (config.paths.evaluate / "report.md").read_text()

    # a rerun with another DPO setting redoes dpo, and evaluate then scores only student_dpo again
    changed = run_config(tmp_path, tiny_model, **{"dpo.beta": 0.2})
    assert not dpo.STAGE.is_complete(changed) and train.STAGE.is_complete(changed)
    dpo.STAGE.run(changed)
    keys = evaluate.current_keys(changed)
    assert evaluate._is_done(changed.paths, "student", keys["student"])
    assert not evaluate._is_done(changed.paths, "student_dpo", keys["student_dpo"])


def test_a_filter_without_pairs_stops_dpo_with_a_clear_message(tmp_path, tiny_model, gsm8k_rows):
    from cotdistill.stages import dpo
    from cotdistill.stages import filter as filter_stage

    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[:2]))
    config = run_config(tmp_path, tiny_model, **{"filter.pair_reasons": ["truncated"]})
    write_generate(config, gsm8k_rows, questions=2)
    assert filter_stage.STAGE.run(config)["pairs"]["pairs"] == 0  # nothing was truncated
    assert not (config.paths.pairs / "00000.parquet").exists()
    write_json_atomic({}, config.paths.train / "stats.json")
    write_fingerprint(config.paths.train, make_fingerprint({"train": "by hand"}))
    with pytest.raises(RuntimeError, match="wrote no preference pairs"):
        dpo.STAGE.run(config)


@pytest.mark.parametrize("change, key", [
    ({"filter": {"pair_reasons": ["over_max_per_question"]}}, "filter.pair_reasons"),
    ({"filter": {"pair_reasons": []}}, "filter.pair_reasons"),
    ({"filter": {"label": "none"}}, "filter.pair_reasons"),
    ({"filter": {"pair_reasons": ["overlong"]}}, "filter.pair_reasons"),
    ({"filter": {"pairs_per_question": 0}}, "filter.pairs_per_question"),
    ({"filter": {"preference_pairs": False}}, "dpo"),
    ({"dpo": None}, "evaluate.models"),
])
def test_pair_and_dpo_settings_are_checked_at_load(tmp_path, tiny_model, change, key):
    data = tiny_config_dict(tmp_path, tiny_model, tmp_path / "q.jsonl")
    (tmp_path / "q.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    data["filter"] = {"preference_pairs": True}
    data["dpo"] = {"max_steps": 1}
    data["evaluate"]["models"] = ["student_dpo"]
    for section, values in change.items():
        if values is None:
            data[section] = None
        else:
            data[section].update(values)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"bad.yaml: {key}"):
        load_config(path)


def test_an_unknown_dpo_field_is_refused_before_any_stage(tmp_path, tiny_model):
    from cotdistill.stages import dpo

    data = tiny_config_dict(tmp_path, tiny_model, tmp_path / "q.jsonl")
    (tmp_path / "q.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    data["filter"] = {"preference_pairs": True}
    data["dpo"] = {"betta": 0.1}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="dpo: unknown DPOConfig field 'betta'"):
        dpo.STAGE.preflight(load_config(path))


def test_the_dpo_command_without_a_dpo_section_says_so(tmp_path, tiny_model, caplog):
    from cotdistill.cli import main

    data = tiny_config_dict(tmp_path, tiny_model, tmp_path / "q.jsonl")
    (tmp_path / "q.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as stopped:
        main(["dpo", str(path)])
    assert stopped.value.code == 2 and not (tmp_path / "runs" / "tiny" / "dpo").exists()
    assert "dpo is not set" in caplog.text
