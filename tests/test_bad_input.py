"""Every configuration mistake and bad data row gets one clear line naming the file, the row or key, and the
field, caught at load before any engine starts: never a traceback, never a silent merge."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.config.sections import DataConfig
from cotdistill.core.fields import ConfigError
from cotdistill.core.prompts import PromptError, PromptTemplate
from cotdistill.questions.sources import QuestionSource, SourceError
from tests.conftest import REPO

QUESTIONS = str(REPO / "data" / "arithmetic" / "train.jsonl")


def base(**sections) -> dict:
    config = {"run_name": "x", "data": {"path": QUESTIONS, "gold_format": "gsm8k"},
              "teacher": {"model": "t"}, "student": {"model": "s"},
              "evaluate": {"data": {"path": QUESTIONS, "gold_format": "gsm8k"}}}
    config.update(sections)
    return config


def write(tmp_path, data) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


# (override, the key the message must name, a phrase of the message)
BAD_VALUES = [
    ("generate.num_samples=-3", "generate.num_samples", "at least 1"),
    ("generate.max_tokens=0", "generate.max_tokens", "at least 1"),
    ("generate.temperature=-1", "generate.temperature", "at least 0"),
    ("generate.top_p=0", "generate.top_p", "(0.0, 1.0]"),
    ("generate.top_k=0", "generate.top_k", "-1 (off)"),
    ("generate.questions_per_shard=0", "generate.questions_per_shard", "at least 1"),
    ("generate.prompt=no_such_template.jinja", "generate.prompt", "not found"),
    ("generate.examples=/nonexistent/shots.jsonl", "generate.examples", "no such few-shot examples file"),
    ("filter.answer_format=numbr", "filter.answer_format", "unknown value 'numbr'"),
    ("filter.label=vote", "filter.label", "unknown value 'vote'"),
    ("filter.majority_min_share=0", "filter.majority_min_share", "(0.0, 1.0]"),
    ("filter.near_duplicate_threshold=1.5", "filter.near_duplicate_threshold", "(0.0, 1.0]"),
    ("filter.max_per_question=0", "filter.max_per_question", "at least 1"),
    ("filter.min_per_question=5", "filter.max_per_question", None),  # with max 4 below
    ("filter.num_workers=0", "filter.num_workers", "at least 1"),
    ("filter.decontaminate=[{path: /nonexistent/test.jsonl}]", "filter.decontaminate[0].path", "no such file"),
    ("evaluate.answer_format=letters", "evaluate.answer_format", "unknown value 'letters'"),
    ("evaluate.models=[teacher, studnet]", "evaluate.models", "unknown value 'studnet'"),
    ("evaluate.num_samples=0", "evaluate.num_samples", "at least 1"),
    ("evaluate.data.path=/nonexistent/test.jsonl", "evaluate.data.path", "no such file"),
    ("evaluate.stored={mine: /nonexistent/samples}", "evaluate.stored.mine", "no such folder"),
    ("data.gold_format=gsm9k", "data.gold_format", "unknown value 'gsm9k'"),
    ("data.path=./missing/questions.jsonl", "data.path", "no such file"),
    ("data.limit=0", "data.limit", "at least 1"),
    ("teacher.model=/nonexistent/models/teacher", "teacher.model", "no such local model folder"),
    ("student.model=./models/student", "student.model", "no such local model folder"),
    ("train.prompt=student_nope.jinja", "train.prompt", "not found"),
]


@pytest.mark.parametrize("override,key,phrase", BAD_VALUES, ids=[b[0].split("=")[0] for b in BAD_VALUES])
def test_bad_value_is_caught_at_load_naming_file_and_key(tmp_path, override, key, phrase):
    data = base()
    if override.startswith("filter.min_per_question"):
        data["filter"] = {"max_per_question": 4}
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, data), [override])
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'run.yaml'}: {key}:"), message
    if phrase:
        assert phrase in message, message


def test_a_template_that_does_not_compile_is_caught_at_load(tmp_path):
    broken = tmp_path / "broken.jinja"
    broken.write_text('{% call message("user") %}{{ question }{% endcall %}\n')
    with pytest.raises(ConfigError, match=r"generate.prompt: .*broken.jinja: line 1"):
        load_config(write(tmp_path, base(generate={"prompt": str(broken)})))


def test_a_bad_few_shot_file_is_caught_at_load(tmp_path):
    shots = tmp_path / "shots.jsonl"
    shots.write_text('{"question": "1+1", "answer": "2"}\n{not json\n')
    with pytest.raises(ConfigError, match=r"generate.examples: .*shots.jsonl: line 2: not valid JSON"):
        load_config(write(tmp_path, base(generate={"prompt": "math_few_shot_cot.jinja", "examples": str(shots)})))


def cotdistill(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cotdistill", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("override", ["generate.num_samples=-3", "generate.max_tokens=0", "generate.temperature=-1",
                                      "filter.answer_format=numbr", "evaluate.answer_format=numbr",
                                      "train.sft.max_lenght=128", "evaluate.data=null"])
@pytest.mark.slow
def test_cli_refuses_a_bad_config_in_seconds_with_exit_code_2(tmp_path, override):
    started = time.monotonic()
    result = cotdistill("run", write(tmp_path, base()), override, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    key = override.split("=")[0].rsplit(".", 1)[0] if override.startswith("train.sft") else override.split("=")[0]
    assert key in result.stderr, result.stderr
    assert not (tmp_path / "runs" / "x" / "generate").exists()  # nothing started
    assert time.monotonic() - started < 60


# --- bad data rows --------------------------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_duplicate_ids_from_id_field_are_refused_naming_both_rows(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "question": "one?", "answer": "1"},
                                              {"id": "b", "question": "two?", "answer": "2"},
                                              {"id": "a", "question": "three?", "answer": "3"}])
    with pytest.raises(SourceError, match=r"q.jsonl: row 3: field 'id': id 'a' is also the id of row 1"):
        QuestionSource(DataConfig(path=path, id_field="id"))


def test_a_gold_choice_outside_the_choices_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "pick", "choices": ["x", "y"], "answer": "B"},
                                              {"question": "pick again", "choices": ["x", "y"], "answer": "Z"}])
    with pytest.raises(SourceError, match=r"q.jsonl: row 2: field 'answer': gold choice Z is not among the 2"):
        QuestionSource(DataConfig(path=path, choices_field="choices", gold_format="choice_letter"))


def test_a_gsm8k_gold_that_is_not_a_number_names_file_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "a?", "answer": "so\n#### 5"},
                                              {"question": "b?", "answer": "squared\n#### 5²"}])
    with pytest.raises(SourceError, match=r"q.jsonl: row 2: field 'answer': the text after '####' is not a number"):
        QuestionSource(DataConfig(path=path, gold_format="gsm8k"))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_file_that_is_not_utf8_names_the_file_and_line(tmp_path, suffix):
    path = tmp_path / f"q{suffix}"
    if suffix == ".jsonl":
        path.write_bytes(b'{"question": "ok?", "answer": "1"}\n{"question": "caf\xe9?", "answer": "2"}\n')
    else:
        path.write_bytes(b"question,answer\nok?,1\ncaf\xe9?,2\n")
    with pytest.raises(SourceError, match=rf"q{suffix}: line \d: not valid UTF-8 \(byte 0xe9"):
        QuestionSource(DataConfig(path=str(path)))


def test_a_missing_local_data_path_is_not_tried_as_a_hub_id(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        QuestionSource(DataConfig(path=str(tmp_path / "nope" / "q.jsonl")))


def test_a_non_utf8_few_shot_file_names_the_line(tmp_path):
    shots = tmp_path / "shots.jsonl"
    shots.write_bytes(b'{"question": "1+1", "answer": "2"}\n{"question": "\xff", "answer": "2"}\n')
    with pytest.raises(PromptError, match="shots.jsonl: line 2: not valid UTF-8"):
        PromptTemplate("math_few_shot_cot.jinja", str(shots))


# --- templates cannot run code ------------------------------------------------------------------------------------


@pytest.mark.parametrize("expression", ["''.__class__.__mro__", "message.__globals__", "question.__class__.__base__",
                                        "fail.__code__"])
def test_templates_render_in_a_sandbox(tmp_path, expression):
    template = tmp_path / "evil.jinja"
    template.write_text(f'{{% call message("user") %}}{{{{ {expression} }}}} {{{{ question }}}}{{% endcall %}}\n')
    with pytest.raises(PromptError, match="sandbox|undefined"):
        PromptTemplate(str(template)).render(question="2+2?")


def test_templates_cannot_mutate_their_inputs(tmp_path):
    template = tmp_path / "mutate.jinja"
    template.write_text('{% call message("user") %}{{ examples.append(1) }}{{ question }}{% endcall %}\n')
    with pytest.raises(PromptError, match="sandbox"):
        PromptTemplate(str(template)).render(question="2+2?")


def test_every_shipped_template_still_renders_in_the_sandbox():
    for path in sorted((REPO / "prompts").glob("*.jinja")):
        examples = str(REPO / "data" / "fewshot" / "arithmetic.jsonl") if "few_shot" in path.name else None
        messages = PromptTemplate(path.name, examples).render(question="What is 2 + 3?", choices=["4", "5"],
            gold="5", response="2 + 3 = 5")  # judge.jinja reads these two
        assert messages[-1]["role"] == "user" and "What is 2 + 3?" in messages[-1]["content"]


def cli_exit_code(argv: list[str]) -> int:
    """The CLI in this process: any exception other than its own exit 2 would escape as a traceback here."""
    from cotdistill.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    return exited.value.code


@pytest.mark.parametrize("override,key,phrase", BAD_VALUES, ids=[b[0].split("=")[0] for b in BAD_VALUES])
def test_every_bad_value_ends_in_exit_code_2_through_the_cli(tmp_path, monkeypatch, caplog, override, key, phrase):
    monkeypatch.chdir(tmp_path)
    data = base(filter={"max_per_question": 4}) if override.startswith("filter.min_per_question") else base()
    assert cli_exit_code(["run", write(tmp_path, data), override]) == 2
    assert key in caplog.text


BAD_ROWS = {
    "duplicate_id": ('{"id": 1, "question": "a?", "answer": "#### 1"}\n{"id": 1, "question": "b?", "answer": "#### 2"}\n',
                     "row 2: field 'id'"),
    "gold_not_a_number": ('{"question": "a?", "answer": "#### 5²"}\n', "row 1: field 'answer'"),
    "no_gold_marker": ('{"question": "a?", "answer": "five"}\n', "row 1: field 'answer': no '####'"),
    "empty_question": ('{"question": " ", "answer": "#### 5"}\n', "row 1: field 'question' is missing or empty"),
    "not_json": ('{"question": "a?", "answer": "#### 5"}\n{"question": \n', "line 2: not valid JSON"),
    "not_utf8": (b'{"question": "caf\xe9?", "answer": "#### 5"}\n', "line 1: not valid UTF-8"),
    "empty_file": ("", "the file is empty"),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_every_bad_row_ends_in_exit_code_2_naming_it(tmp_path, monkeypatch, caplog, name):
    content, phrase = BAD_ROWS[name]
    questions = tmp_path / "questions.jsonl"
    questions.write_bytes(content if isinstance(content, bytes) else content.encode())
    monkeypatch.chdir(tmp_path)
    data = base(data={"path": str(questions), "gold_format": "gsm8k", "id_field": "id" if name == "duplicate_id" else None})
    assert cli_exit_code(["generate", write(tmp_path, data)]) == 2
    assert "questions.jsonl" in caplog.text and phrase in caplog.text, caplog.text
