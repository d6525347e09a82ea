"""How big a model is, read from its files without loading it: parameters, bytes on disk, the weights' format.

    model_footprint(folder)      # {"parameters": 134515008, "weights_mb": 513.1, "weights_format": "safetensors"}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cotdistill.models.resolve import resolve_model


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
