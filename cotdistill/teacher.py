"""Building a vLLM engine from a ModelConfig, and the prompt -> token ids step shared by generate and evaluate.

Engine arguments in the YAML (`engine:`) pass straight to `vllm.LLM`: dtype, max_model_len,
tensor_parallel_size, gpu_memory_utilization, enable_prefix_caching, enforce_eager, and the rest.
On a GPU machine the defaults of vLLM apply; on CPU, vLLM reads `gpu_memory_utilization` as the share of RAM
reserved for the KV cache (its default 0.92 fails to start: set about 0.3).
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

from cotdistill.config import ModelConfig
from cotdistill.models import resolve_model

logger = logging.getLogger(__name__)


# Engine arguments that change only speed or memory, never a generated token: left out of fingerprints, so
# moving a run to a bigger GPU or another cache size does not count as new settings.
RESOURCE_ENGINE_ARGS = frozenset({
    "gpu_memory_utilization", "kv_cache_memory_bytes", "swap_space", "cpu_offload_gb", "enforce_eager",
    "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "max_num_seqs",
    "max_num_batched_tokens", "enable_prefix_caching", "enable_chunked_prefill", "disable_log_stats",
    "distributed_executor_backend", "compilation_config", "block_size",
})


def output_engine_args(engine: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in engine.items() if k not in RESOURCE_ENGINE_ARGS}


def build_llm(model_cfg: ModelConfig, seed: int, model_path: str | None = None) -> Any:
    """A `vllm.LLM` for the model (or for `model_path`, e.g. a trained student, with the same engine args)."""
    # An in-process engine core: no spawn of a second process (which would re-import the caller's __main__),
    # and the engine's memory is freed when the object goes. Set the variable to 1 to get vLLM's default.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    model = model_path or resolve_model(model_cfg.model)
    engine_args = {"seed": seed, **model_cfg.engine}
    logger.info("starting vLLM for %s with %s", model, engine_args)
    try:
        return LLM(model=model, **engine_args)
    except TypeError as e:  # an engine argument vLLM does not know
        raise ValueError(f"engine arguments for {model}: {e}") from None


def release_llm(llm: Any) -> None:
    """Stop the engine and give its KV cache back before the next stage needs the memory."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # older or newer engines differ here; dropping the reference is what matters
        pass
    del llm
    gc.collect()


def max_model_len(llm: Any) -> int:
    return int(llm.llm_engine.model_config.max_model_len)


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[int]]:
    """The exact text the model sees (its own chat template) and its token ids, tokenized once."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The chat template already holds any BOS token; adding special tokens again would double it.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text, ids


def prompt_too_long(num_prompt_tokens: int, context: int) -> str | None:
    """The recorded reason when a prompt leaves no room for a single generated token, else None."""
    if num_prompt_tokens < context:
        return None
    return f"prompt_too_long: {num_prompt_tokens} prompt tokens, max_model_len is {context}"
