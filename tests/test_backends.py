"""A teacher backend is one file and one registration: it declares its name, its settings and its capabilities
(teachers/base.Backend), and config and generate ask those, never its name. This test writes a backend here,
registers it, and runs the generate stage on it through the config, as a user's plug-in would."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import pyarrow.parquet as pq
import pytest
import yaml

from cotdistill.config.load import dump_config, load_config
from cotdistill.core.fields import ConfigError, setting
from cotdistill.stages import generate
from cotdistill.teachers import BACKENDS, register, teacher_settings
from cotdistill.teachers.base import Backend, Completion, Finished, TeacherRequest


@dataclass
class EchoSettings:
    """The echo backend's own settings, written under `echo:` in a model section."""

    reply: str = "The answer is 7."
    repeat: int = setting(1, at_least=1)


class EchoTeacher:
    """Answers every request with its settings' reply, n times."""

    def __init__(self, model: Any):
        self.name, self.settings = model.model, model.settings

    def tokenizer(self) -> None:
        return None  # like a hosted model: no local tokenizer, prompts go as messages

    def max_model_len(self) -> None:
        return None

    def generate(self, requests: Iterable[TeacherRequest]) -> Iterator[Finished]:
        for request in requests:
            text = " ".join([self.settings.reply] * self.settings.repeat)
            yield Finished(request.key, [Completion(text, "stop", len(text.split()))] * request.sampling.n,
                           prompt_tokens=3)

    def close(self) -> None:
        pass


ECHO = Backend(name="echo", build=lambda model, seed, path: EchoTeacher(model), settings=EchoSettings,
               answer_settings=lambda model: {"echo": {"reply": model.settings.reply, "repeat": model.settings.repeat}})


@pytest.fixture
def echo_backend():
    register(ECHO)  # the one place a plug-in is registered
    yield ECHO
    del BACKENDS["echo"]


def write_config(tmp_path, teacher: dict) -> Any:
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "What is 3 + 4?", "answer": "#### 7"}\n{"question": "What is 2 + 2?", '
                         '"answer": "#### 4"}\n')
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "run_name": "echo", "output_dir": str(tmp_path / "runs"), "data": {"path": str(questions),
                                                                           "gold_format": "gsm8k"},
        "teacher": teacher, "student": {"model": "s"}, "generate": {"num_samples": 2, "questions_per_shard": 1},
    }))
    return path


def test_a_backend_in_one_file_runs_generate(tmp_path, echo_backend):
    path = write_config(tmp_path, {"model": "echo-model", "backend": "echo", "echo": {"reply": "It is 7."}})
    config = load_config(path)
    assert isinstance(config.teacher.settings, EchoSettings) and config.teacher.settings.reply == "It is 7."
    stats = generate.STAGE.run(config)
    assert stats["questions"] == 2 and stats["rationales"] == 4
    rows = pq.read_table(config.paths.samples).to_pylist()
    assert {r["rationale"] for r in rows} == {"It is 7."} and {r["teacher"] for r in rows} == {"echo-model"}
    # What the backend declares changes the answers: it is in the teacher's fingerprint, and a change is refused.
    assert teacher_settings(config.teacher)["echo"] == {"reply": "It is 7.", "repeat": 1}
    changed = load_config(path, ["teacher.echo.repeat=2"])
    with pytest.raises(RuntimeError, match="teacher.echo.repeat"):
        generate.STAGE.run(changed)
    # The resolved config names the settings under the backend, and loads again as it was.
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(config))
    assert load_config(again).teacher.settings == config.teacher.settings


def test_its_settings_are_checked_at_load_like_any_section(tmp_path, echo_backend):
    with pytest.raises(ConfigError, match=r"teacher.echo.repeat: must be at least 1"):
        load_config(write_config(tmp_path, {"model": "m", "backend": "echo", "echo": {"repeat": 0}}))
    with pytest.raises(ConfigError, match=r"unknown key 'teacher.echo.replyy' \(did you mean 'teacher.echo.reply'"):
        load_config(write_config(tmp_path, {"model": "m", "backend": "echo", "echo": {"replyy": "x"}}))
    with pytest.raises(ConfigError, match=r"teacher.echo: settings of the echo backend, and teacher.backend is 'vllm'"):
        load_config(write_config(tmp_path, {"model": "m", "echo": {"reply": "x"}}))


def test_capabilities_not_names_decide(tmp_path, echo_backend):
    """The echo backend declares no logprobs: generate.logprobs is refused for it, as for any such backend."""
    path = write_config(tmp_path, {"model": "m", "backend": "echo"})
    with pytest.raises(ConfigError, match="generate.logprobs: needs a local engine"):
        load_config(path, ["generate.logprobs=5"])
