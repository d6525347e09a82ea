"""LoRA adapters saved alone (train.merge_adapter: false), and merged into their base model for vLLM to serve.

    merge_adapter(adapter_dir, target_dir, source)     # an adapter folder -> an ordinary model folder
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def is_adapter(folder: str | Path) -> bool:
    """A LoRA adapter saved alone (train.merge_adapter: false): adapter_config.json names its base model."""
    return (Path(folder) / "adapter_config.json").is_file()


def merge_adapter(adapter_dir: str | Path, target_dir: str | Path, source: str) -> str:
    """The adapter in `adapter_dir` merged into its base model, written once to `target_dir` (an ordinary model
    folder, which vLLM serves); merged again only when `source`, a digest of the adapter's files, changes.
    Returns `target_dir`."""
    from cotdistill.core.shards import read_json_or_none, replace_dir_atomic, write_json_atomic

    adapter_dir, target_dir = Path(adapter_dir), Path(target_dir)
    if read_json_or_none(target_dir / "merged_from.json") != {"adapter": source}:
        from peft import AutoPeftModelForCausalLM
        from transformers import AutoTokenizer

        logger.info("merging the LoRA adapter in %s into its base model", adapter_dir)
        model = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir)).merge_and_unload()
        tmp = target_dir.with_name(f".{target_dir.name}.tmp")
        model.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(tmp))
        write_json_atomic({"adapter": source}, tmp / "merged_from.json")
        replace_dir_atomic(tmp, target_dir)
    return str(target_dir)
