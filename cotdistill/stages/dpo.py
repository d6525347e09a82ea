"""dpo: the filter's preference pairs -> TRL's DPOTrainer -> the SFT student improved by preference, dpo/model/.

    cotdistill dpo pipelines/demo_two_teachers.yaml

After SFT, the rationales the filter rejected still say something: for the same question, an accepted rationale
is preferred to a wrong one (SkyThought, EasyDistill and distilabel build exactly these pairs). The filter writes
them with `filter.preference_pairs: true` (filter/pairs/, TRL's conversational prompt/chosen/rejected, the
student's prompt); this stage trains the SFT student (train/model/) on them with DPO, the SFT student itself as the
reference model. `dpo:` holds `trl.DPOConfig` fields, passed through as they are. With `train.peft` the policy is
a LoRA adapter on the SFT student (the reference is the adapter switched off: no second copy in memory), merged
or saved alone as `train.merge_adapter` says. evaluate scores the result as `student_dpo`.

Checkpoints go to dpo/checkpoints/ and a rerun resumes from the last complete one; the final model is written to a
temporary folder and swapped into dpo/model/ whole.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from cotdistill.config.run import RunConfig
from cotdistill.core.fields import ConfigError
from cotdistill.core.fingerprints import file_digest, folder_digest, make_fingerprint, upstream
from cotdistill.core.paths import DPO, FILTER, TRAIN
from cotdistill.models.adapters import is_adapter, merge_adapter
from cotdistill.stages.base import Stage, read_summary
from cotdistill.trainers.checkpoints import finish, run_stats, train_resuming
from cotdistill.trainers.setup import BOOKKEEPING, check_passed_through, load_student, trainer_args

logger = logging.getLogger(__name__)


def dpo_settings(config: RunConfig) -> dict[str, Any]:
    """The dpo: section; `cotdistill dpo` on a config without it stops here, saying what is missing."""
    if config.dpo is None:
        raise ConfigError("dpo is not set: there is nothing to train by DPO; add a dpo: section (trl.DPOConfig "
                          "fields, e.g. {beta: 0.1}) and filter.preference_pairs: true")
    return config.dpo


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """What the DPO student depends on: the pairs (the filter's outputs), the SFT student (train's fingerprint),
    DPOConfig, LoRA, the seed."""
    return make_fingerprint({
        "filter": upstream(config.paths.filter),
        "train": upstream(config.paths.train),
        "dpo": {k: v for k, v in dpo_settings(config).items() if k not in BOOKKEEPING},
        "peft": config.train.peft, "merge_adapter": config.train.merge_adapter if config.train.peft else None,
        "seed": config.seed,
        **({"chat_template_kwargs": config.student.chat_template_kwargs}
           if config.student.chat_template_kwargs else {}),
    })


def pair_dataset(config: RunConfig, files: list[str]) -> Any:
    """The pairs as a `datasets.Dataset` of prompt/chosen/rejected, with the student's chat_template_kwargs on
    each row (DPOTrainer renders each row with them)."""
    import datasets

    pairs = datasets.load_dataset("parquet", data_files=[str(config.paths.pairs / name) for name in files],
                                  split="train").select_columns(["prompt", "chosen", "rejected"])
    kwargs = config.student.chat_template_kwargs
    if kwargs:
        pairs = pairs.map(lambda _: {"chat_template_kwargs": dict(kwargs)}, desc="chat_template_kwargs")
    return pairs


def sft_student(config: RunConfig) -> str:
    """The folder DPO starts from: the SFT student, or, when train saved a LoRA adapter alone, the adapter merged
    into its base once (dpo/sft_merged/; merged again only when the adapter changes)."""
    folder = config.paths.trained_model
    if is_adapter(folder):
        source = file_digest(folder / "adapter_config.json") + folder_digest(folder, "adapter_model*")
        return merge_adapter(folder, config.paths.dpo / "sft_merged", source)
    return str(folder)


def train_dpo(config: RunConfig) -> dict[str, Any]:
    """The stage's work: DPO on the filter's pairs from the SFT student, resuming the newest complete checkpoint;
    the final model moved into place, stats.json last."""
    from trl import DPOConfig, DPOTrainer

    paths = config.paths
    pairs = read_summary(config, FILTER).get("pairs")
    if not pairs or not pairs["files"]:
        raise RuntimeError(
            f"{paths.pairs}: the filter wrote no preference pairs (no question had both an accepted rationale and "
            f"one rejected for {config.filter.pair_reasons}), so there is nothing for DPO to train on; see "
            f"{paths.filter / 'stats.json'}")
    dataset = pair_dataset(config, pairs["files"])
    start = sft_student(config)
    args = trainer_args(DPOConfig, config.dpo, paths.dpo_checkpoints, config.seed, "dpo")
    model, tokenizer, peft_config = load_student(start, args, config.train.peft)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    dropped = len(dataset) - len(trainer.train_dataset)
    if dropped:  # DPOTrainer drops pairs whose prompt alone fills max_length: say so, never silently
        logger.warning("dpo: %d of %d pairs dropped by DPOTrainer: the prompt fills max_length=%s", dropped,
                       len(dataset), args.max_length)
    result, checkpoint, steps = train_resuming(trainer, "dpo")
    logged = [entry for entry in trainer.state.log_history if "rewards/accuracies" in entry]
    stats = {
        "started_from": start,
        "pairs": len(trainer.train_dataset),
        "pairs_dropped_prompt_over_max_length": dropped,
        **run_stats(result, checkpoint, steps),
        # the last logged share of pairs whose chosen side the policy prefers more than the reference does
        "rewards_accuracy": logged[-1]["rewards/accuracies"] if logged else None,
    }
    merge = config.train.peft is not None and config.train.merge_adapter
    return finish(trainer, paths.dpo_model, merge, model_card(config, stats), stats)


def model_card(config: RunConfig, stats: dict[str, Any]) -> str:
    return f"""---
base_model: {config.student.model}
library_name: transformers
tags: [cotdistill, distillation, chain-of-thought, trl, dpo]
---
# {config.run_name}: student distilled by cotdistill, then trained by DPO

- Started from: the SFT student `{config.paths.trained_model}` (base `{config.student.model}`, teacher
  `{config.teacher.model}`), which is also the reference model
- Pairs: `{config.paths.pairs}`, {stats['pairs']} pairs; chosen accepted by the filter, rejected for one of
  {config.filter.pair_reasons}; prompt `{config.train.prompt}`
- Training: {stats['global_steps']} steps, final train loss {stats['train_loss']:.4f}
- DPOConfig overrides: `{json.dumps(config.dpo)}`
"""


def preflight(config: RunConfig) -> None:
    """dpo's keys against DPOConfig's fields, before any engine starts."""
    from trl import DPOConfig

    check_passed_through(DPOConfig, dpo_settings(config), "dpo")


def trained(config: RunConfig) -> bool:
    model = config.paths.dpo_model
    return (model / "config.json").is_file() or (model / "adapter_config.json").is_file()


STAGE = Stage(
    outputs=DPO, help="DPO on the filter's preference pairs from the SFT student (dpo:) -> runs/<run>/dpo/model/",
    needs=lambda config: (FILTER, TRAIN), fingerprint=fingerprint, outputs_complete=trained, work=train_dpo,
    wanted=lambda config: config.dpo is not None, preflight=preflight,
    example="dpo.beta=0.1",
)
