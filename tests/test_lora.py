"""train.peft: LoRA through SFTTrainer, saved merged or as an adapter, and evaluate serving either."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from cotdistill.config.load import load_config
from cotdistill.stages import evaluate
from cotdistill.stages import train
from tests.conftest import tiny_config_dict, write_finished_filter

pytestmark = [pytest.mark.engine]

LORA = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "lora_dropout": 0.0}


def lora_config(tmp_path, tiny_model, gsm8k_rows, merge: bool):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows[:4]))
    raw = tiny_config_dict(tmp_path, tiny_model, questions)
    raw["run_name"] = f"lora-{'merged' if merge else 'adapter'}"
    raw["train"]["peft"] = LORA
    raw["train"]["merge_adapter"] = merge
    raw["train"]["sft"] = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 256,
                           "learning_rate": 1e-2, "save_steps": 50}
    raw["evaluate"].update(models=["student"], num_samples=2, max_tokens=8)
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    write_finished_filter(config.run_dir, gsm8k_rows[:8])
    return config


def weights(folder) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()


@pytest.mark.parametrize("merge", [True, False])
def test_lora_student_is_saved_as_asked_and_evaluate_serves_it(tmp_path, tiny_model, gsm8k_rows, merge):
    config = lora_config(tmp_path, tiny_model, gsm8k_rows, merge)
    stats = train.STAGE.run(config)
    model_dir = config.run_dir / "train" / "model"
    assert stats["peft"] == ("merged" if merge else "adapter")
    if merge:  # an ordinary model folder, with the adapter folded in: weights moved, names unchanged
        assert (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists()
        trained, base = weights(model_dir), weights(tiny_model)
        assert trained.keys() == base.keys()
        assert any(not torch.equal(trained[k], base[k]) for k in base if "proj" in k)
        assert all(torch.equal(trained[k], base[k]) for k in base if "norm" in k)  # LoRA touched only linears
    else:
        assert (model_dir / "adapter_config.json").exists() and not (model_dir / "config.json").exists()
    metrics = evaluate.STAGE.run(config)["models"]
    assert metrics["student"]["questions"] == 4
    if not merge:  # evaluate merged the adapter into its base once, and serves that
        merged = config.run_dir / "evaluate" / "student.merged"
        assert (merged / "config.json").exists()
        assert any(not torch.equal(a, b) for a, b in zip(weights(merged).values(), weights(tiny_model).values()))


def test_an_unknown_lora_field_is_refused_at_load(tmp_path, tiny_model, gsm8k_rows):
    from cotdistill.core.fields import ConfigError

    config = lora_config(tmp_path, tiny_model, gsm8k_rows, True)
    with pytest.raises(ConfigError, match="train.peft.rank: not a peft.LoraConfig field"):
        load_config(tmp_path / "lora.yaml", ["train.peft={rank: 4}"])
    assert config.train.peft == LORA
