"""What the training stages share before training starts: their TRL config from a config section passed through
as is, and the student loaded (tokenizer, pad token, dtype, weights, LoRA).

    args = trainer_args(SFTConfig, config.train.sft, config.paths.checkpoints, config.seed, "train.sft")
    model, tokenizer, peft_config = load_student(base, args, config.train.peft)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cotdistill.core.fields import ConfigError


# TrainingArguments fields that change how training is logged or checkpointed, never the weights it ends with.
BOOKKEEPING = frozenset({
    "logging_steps", "logging_strategy", "logging_dir", "logging_first_step", "report_to", "run_name",
    "save_steps", "save_strategy", "save_total_limit", "dataloader_num_workers", "disable_tqdm",
})


def trainer_args(cls: type, fields: dict[str, Any], output_dir: Path, seed: int, section: str) -> Any:
    """`cls` (TRL's SFTConfig or DPOConfig) from a config section's fields, passed through as they are, over
    defaults that suit both CPU and GPU: bf16 where the hardware has it (TRL's default), float32 on CPU, where
    bf16 training is refused."""
    import torch

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    defaults = {"seed": seed, "report_to": "none", "save_strategy": "steps", "save_steps": 50,
                "save_total_limit": 2, "logging_steps": 5, "bf16": bf16}
    try:
        return cls(**{**defaults, **fields, "output_dir": str(output_dir)})
    except TypeError as e:
        raise ValueError(f"{section}: {e}") from None


def check_passed_through(cls: type, values: dict[str, Any], key: str) -> None:
    """A section passed to a TRL config as is (train.sft -> SFTConfig, dpo -> DPOConfig): every key one of its
    fields, and numbers where numbers belong. Run in the stage's preflight, before any engine starts."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{key}: unknown {cls.__name__} field '{unknown[0]}'")
    for name, value in values.items():  # TRL keeps a string where a number belongs
        default = fields[name].default
        if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
            raise ConfigError(f"{key}.{name}: must be a number, got {value!r} (YAML reads 1e-4 as text: "
                              "write 1.0e-4)")


def load_student(path: str, args: Any, peft: dict[str, Any] | None) -> tuple[Any, Any, Any]:
    """(model, tokenizer, LoRA config or None) of the student in `path`, as train and dpo train it: the tokenizer
    with a pad token (its end-of-sequence token when it has none), the weights in the dtype `args` trains in
    (bf16, fp16 or float32), and train.peft as a peft.LoraConfig for the trainer to wrap the model in."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if args.bf16 else (torch.float16 if args.fp16 else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    peft_config = None
    if peft is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(**peft)
    return model, tokenizer, peft_config
