from pathlib import Path

import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.core.fields import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path, data) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


QUESTIONS = str(REPO / "data" / "arithmetic" / "train.jsonl")
BASE = {"run_name": "x", "data": {"path": QUESTIONS}, "teacher": {"model": "t"}, "student": {"model": "s"}}


def test_every_shipped_pipeline_loads():
    paths = sorted((REPO / "pipelines").glob("*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        config = load_config(path)
        assert config.run_name
        first_line = path.read_text().splitlines()[0]
        assert first_line.startswith("# cotdistill run pipelines/"), f"{path} must open with its command"


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, {**BASE, "generate": {"temprature": 0.5}})
    with pytest.raises(ConfigError, match=r"run.yaml: unknown key 'generate.temprature'"):
        load_config(path)


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'epochs'"):
        load_config(write(tmp_path, {**BASE, "epochs": 3}))


def test_wrong_type_is_an_error(tmp_path):
    path = write(tmp_path, {**BASE, "generate": {"num_samples": "eight"}})
    with pytest.raises(ConfigError, match="generate.num_samples must be int"):
        load_config(path)


def test_missing_required_key(tmp_path):
    data = dict(BASE)
    del data["teacher"]
    with pytest.raises(ConfigError, match="missing required key 'teacher'"):
        load_config(write(tmp_path, data))


def test_dotted_overrides(tmp_path):
    config = load_config(write(tmp_path, BASE), ["generate.num_samples=4", "train.sft.max_steps=10",
                                                 'generate.stop=["\\n\\n"]', "filter.max_per_question=null"])
    assert config.generate.num_samples == 4
    assert config.train.sft == {"max_steps": 10}
    assert config.generate.stop == ["\n\n"]
    assert config.filter.max_per_question is None


def test_override_of_an_unknown_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'generate.nsamples'"):
        load_config(write(tmp_path, BASE), ["generate.nsamples=4"])


def test_override_without_equals(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(write(tmp_path, BASE), ["generate.num_samples"])


def test_int_is_accepted_for_float(tmp_path):
    config = load_config(write(tmp_path, {**BASE, "generate": {"temperature": 1}}))
    assert config.generate.temperature == 1.0 and isinstance(config.generate.temperature, float)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_name: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


def test_ray_runtime_env_secrets_are_refused_at_load(tmp_path):
    """runtime_env is written to the run's config.yaml: a secret there would land on disk."""
    teacher = {"model": "t", "backend": "ray", "ray": {"runtime_env": {"env_vars": {"HF_TOKEN": "hf_x"}}}}
    with pytest.raises(ConfigError, match="teacher.ray.runtime_env.env_vars.HF_TOKEN.*secret"):
        load_config(write(tmp_path, {**BASE, "teacher": teacher}))
    teacher["ray"]["runtime_env"]["env_vars"] = {"HF_HOME": "/shared/hf"}
    assert load_config(write(tmp_path, {**BASE, "teacher": teacher})).teacher.settings.runtime_env == {
        "env_vars": {"HF_HOME": "/shared/hf"}}
