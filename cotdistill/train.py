"""train: accepted rationales -> TRL's SFTTrainer -> the student model.

    cotdistill train pipelines/demo.yaml

Each accepted rationale becomes a conversational prompt/completion pair: the prompt is the question rendered by
the student template (`train.prompt`, the bare question: not the teacher's instructions or few-shot examples),
the completion is the teacher's rationale. SFTTrainer then masks the prompt tokens, so the loss is on the
completion only. `train.sft` holds `trl.SFTConfig` fields, passed through as they are.

Checkpoints go to `train/checkpoints/` and a rerun resumes from the last one; the final model, its tokenizer and
a card naming the corpus are written to a temporary folder and renamed to `train/model/` when complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from cotdistill.config import RunConfig
from cotdistill.models import resolve_model
from cotdistill.prompts import PromptTemplate
from cotdistill.shards import list_shards, read_json, write_text_atomic

logger = logging.getLogger(__name__)


def build_sft_dataset(accepted_dir: Path, template: PromptTemplate) -> Any:
    """Accepted shards -> a `datasets.Dataset` of conversational {prompt, completion} rows."""
    import datasets

    shards = [str(p) for p in list_shards(accepted_dir)]
    if not shards:
        raise RuntimeError(f"{accepted_dir}: no accepted shards; run `cotdistill filter` first")
    corpus = datasets.load_dataset("parquet", data_files=shards, split="train")
    if len(corpus) == 0:
        raise RuntimeError(
            f"{accepted_dir}: the filter accepted no rationales, so there is nothing to train on; "
            f"see {accepted_dir.parent / 'stats.json'} for why they were rejected"
        )

    def to_pair(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "prompt": template.render(question=row["question"], choices=row["choices"]),
            "completion": [{"role": "assistant", "content": row["rationale"].strip()}],
        }

    return corpus.map(to_pair, remove_columns=corpus.column_names, desc="student prompts")


def sft_config(config: RunConfig, output_dir: Path) -> Any:
    import torch
    from trl import SFTConfig

    # bf16 where the hardware has it (TRL's default), float32 on CPU, where bf16 training is refused.
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    defaults = {"seed": config.seed, "report_to": "none", "save_strategy": "steps", "save_steps": 50,
                "save_total_limit": 2, "logging_steps": 5, "bf16": bf16}
    fields = {**defaults, **config.train.sft, "output_dir": str(output_dir)}
    try:
        return SFTConfig(**fields)
    except TypeError as e:
        raise ValueError(f"train.sft: {e}") from None


def build_trainer(config: RunConfig, dataset: Any) -> Any:
    """An SFTTrainer for the student on the prompt/completion dataset (tokenized, labels masked, on creation)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    base = resolve_model(config.student.model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.chat_template is None:
        raise ValueError(f"student {config.student.model}: its tokenizer has no chat template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = sft_config(config, config.run_dir / "train" / "checkpoints")
    dtype = torch.bfloat16 if args.bf16 else (torch.float16 if args.fp16 else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def run(config: RunConfig) -> dict[str, Any]:
    train_dir = config.run_dir / "train"
    final_dir = train_dir / "model"
    if is_complete(config):
        logger.info("train: %s exists, skipping", final_dir)
        return read_json(train_dir / "stats.json")

    dataset = build_sft_dataset(config.run_dir / "filter" / "accepted", PromptTemplate(config.train.prompt))
    trainer = build_trainer(config, dataset)
    args, tokenizer = trainer.args, trainer.processing_class
    corpus_size = len(dataset)
    dropped = corpus_size - len(trainer.train_dataset)
    if dropped:  # SFTTrainer drops examples whose prompt alone fills max_length: say so, never silently
        logger.warning("train: %d of %d examples dropped by SFTTrainer: the prompt fills max_length=%s",
                       dropped, corpus_size, args.max_length)
    has_checkpoint = any(Path(args.output_dir).glob("checkpoint-*"))
    if has_checkpoint:
        logger.info("train: resuming from the last checkpoint in %s", args.output_dir)
    result = trainer.train(resume_from_checkpoint=True if has_checkpoint else None)

    # Every rank calls save_model (a collective under FSDP/DeepSpeed); only rank 0 writes files.
    tmp_dir = train_dir / ".model.tmp"
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp_dir, ignore_errors=True)
    trainer.save_model(str(tmp_dir))
    if not trainer.is_world_process_zero():
        return {}
    tokenizer.save_pretrained(str(tmp_dir))
    stats = {
        "base_model": config.student.model,
        "examples": len(trainer.train_dataset),
        "examples_dropped_prompt_over_max_length": dropped,
        "global_steps": result.global_step,
        "train_loss": result.training_loss,
        "train_runtime_s": result.metrics.get("train_runtime"),
    }
    (tmp_dir / "README.md").write_text(model_card(config, stats))
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(tmp_dir, final_dir)
    write_text_atomic(json.dumps(stats, indent=2) + "\n", train_dir / "stats.json")
    logger.info("train: saved %s (%s)", final_dir, stats)
    return stats


def model_card(config: RunConfig, stats: dict[str, Any]) -> str:
    filter_stats_path = config.run_dir / "filter" / "stats.json"
    filter_stats = read_json(filter_stats_path) if filter_stats_path.exists() else {}
    gen = config.generate
    return f"""---
base_model: {config.student.model}
library_name: transformers
tags: [cotdistill, distillation, chain-of-thought, trl, sft]
---
# {config.run_name}: student distilled by cotdistill

- Base model: `{config.student.model}`
- Teacher: `{config.teacher.model}`
- Corpus: `{config.run_dir / 'filter' / 'accepted'}`, {stats['examples']} accepted rationales
  ({filter_stats.get('rationales', '?')} generated, filter answer format `{config.filter.answer_format}`)
- Questions: `{config.data.path}` (split `{config.data.split}`)
- Teacher prompt: `{gen.prompt}`; sampling: n={gen.num_samples}, temperature={gen.temperature},
  top_p={gen.top_p}, max_tokens={gen.max_tokens}
- Student prompt: `{config.train.prompt}`; loss on the completion (rationale) only
- Training: {stats['global_steps']} steps, final train loss {stats['train_loss']:.4f}
- SFTConfig overrides: `{json.dumps(config.train.sft)}`
"""


def is_complete(config: RunConfig) -> bool:
    train_dir = config.run_dir / "train"
    return (train_dir / "model" / "config.json").exists() and (train_dir / "stats.json").exists()
