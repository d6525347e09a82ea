"""prune: the teacher's weights cut into a smaller student, before distillation (Minitron, ShortGPT).

    cotdistill prune pipelines/prune_distill_smollm2_cpu.yaml

`student.prune` says what to keep of `student.model` (in the pipeline, the teacher's own folder):
  depth   `num_layers` blocks, or as many as fit `parameter_budget`; the blocks with the lowest Block Influence
          go (ShortGPT, Men et al. 2024: 1 - cosine similarity of a block's input and output hidden states);
  width   `intermediate_size` MLP channels and `num_attention_heads` heads in every block, chosen per block by
          Minitron's activation importance (Muralidharan et al. 2024): the mean |act(gate(x)) * up(x)| of a
          channel, the L2 norm of a head's output before o_proj (summed over each key/value group's query heads).
Importance is measured in one pass over the teacher's own rationales (generate's samples). Every block keeps
the same counts (vLLM and `from_pretrained` build all layers alike); which channels and heads differ per block.

Outputs: prune/model/ (weights, tokenizer, a card saying what was removed), prune/stats.json and
prune/fingerprint.json. train and evaluate start the student from `config.student_base()`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cotdistill.config.run import RunConfig
from cotdistill.core.fields import ConfigError
from cotdistill.core.fingerprints import file_digest, make_fingerprint, upstream
from cotdistill.core.paths import GENERATE, PRUNE
from cotdistill.core.shards import list_shards, replace_dir_atomic, write_json_atomic
from cotdistill.models.footprint import count_parameters
from cotdistill.models.resolve import model_fingerprint
from cotdistill.models.resolve import resolve_model
from cotdistill.stages.base import Stage

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

BATCH_SIZE = 8  # calibration texts per forward pass


# --- importance -------------------------------------------------------------------------------------------------

@dataclass
class Importance:
    blocks: list[float]  # Block Influence per decoder block: low = the block barely changes its input
    mlp: list[torch.Tensor] | None  # per block, one score per MLP channel
    heads: list[torch.Tensor] | None  # per block, one score per key/value group


def decoder_layers(model: Any) -> Any:
    """The decoder blocks of a Llama-style causal LM (Llama, Mistral, Qwen2/3, SmolLM, ...)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no model.layers; prune handles Llama-style decoders only")
    return layers


def head_layout(config: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim) of a model config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv_heads, head_dim


def measure_importance(model: Any, batches: list[dict[str, Any]], *, mlp: bool = True,
                       heads: bool = True) -> Importance:
    """Block Influence, and MLP channel and head importance if asked, in one pass over `batches` (dicts of
    input_ids and attention_mask). Forward hooks see each block's exact input and output (hidden_states from
    the model would have the final norm applied to the last one); padding positions are left out."""
    import torch

    layers = decoder_layers(model)
    n = len(layers)
    n_heads, n_kv, head_dim = head_layout(model.config)
    cos_sum = torch.zeros(n, dtype=torch.float64)
    mlp_sum: list[Any] = [0.0] * n
    head_sum: list[Any] = [0.0] * n
    state: dict[str, Any] = {}

    def masked_sum(values: torch.Tensor) -> torch.Tensor:  # (batch, tokens, ...) -> (...), over real tokens
        mask = state["mask"].to(values.device, torch.float64)
        return torch.einsum("bt,bt...->...", mask, values.double()).cpu()

    def on_block(i: int) -> Any:
        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos_sum[i] += masked_sum(torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1))
        return hook

    def on_down_proj(i: int) -> Any:  # its input is act(gate(x)) * up(x)
        def hook(module: Any, args: tuple) -> None:
            mlp_sum[i] = mlp_sum[i] + masked_sum(args[0].abs())
        return hook

    def on_o_proj(i: int) -> Any:  # its input is the heads' outputs, side by side
        def hook(module: Any, args: tuple) -> None:
            x = args[0]
            head_sum[i] = head_sum[i] + masked_sum(x.reshape(*x.shape[:-1], n_heads, head_dim).float().norm(dim=-1))
        return hook

    handles = []
    try:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(on_block(i), with_kwargs=True))
            if mlp:
                handles.append(layer.mlp.down_proj.register_forward_pre_hook(on_down_proj(i)))
            if heads:
                handles.append(layer.self_attn.o_proj.register_forward_pre_hook(on_o_proj(i)))
        device = next(model.parameters()).device
        tokens = 0
        model.eval()
        with torch.no_grad():
            for b, batch in enumerate(batches):
                state["mask"] = batch["attention_mask"]
                tokens += int(batch["attention_mask"].sum())
                model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                      use_cache=False)
                logger.info("prune: importance, batch %d/%d", b + 1, len(batches))
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise ValueError("prune: no calibration tokens")
    return Importance(
        blocks=[1.0 - float(c) / tokens for c in cos_sum],
        mlp=[(s / tokens).float() for s in mlp_sum] if mlp else None,
        # the query heads sharing a key/value head are kept or removed together (repeat_kv: head h uses h // group)
        heads=[(s / tokens).float().view(n_kv, n_heads // n_kv).sum(-1) for s in head_sum] if heads else None,
    )


def block_importance(model: Any, calibration_batches: list[dict[str, Any]]) -> list[float]:
    """ShortGPT's Block Influence per decoder block: 1 - mean cosine(input, output) over the real tokens."""
    return measure_importance(model, calibration_batches, mlp=False, heads=False).blocks


def mlp_channel_importance(model: Any, batches: list[dict[str, Any]]) -> list[torch.Tensor]:
    """Per block, Minitron's mean |act_fn(gate_proj(x)) * up_proj(x)| of each MLP channel."""
    return measure_importance(model, batches, heads=False).mlp  # type: ignore[return-value]


def head_importance(model: Any, batches: list[dict[str, Any]]) -> list[torch.Tensor]:
    """Per block, one score per key/value group: the mean L2 norm of its query heads' outputs before o_proj."""
    return measure_importance(model, batches, mlp=False).heads  # type: ignore[return-value]


def top_k(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Per block, the indices of the k highest scores, in their original order."""
    import torch

    return [torch.topk(s, k).indices.sort().values for s in scores]


# --- cutting ----------------------------------------------------------------------------------------------------

def _slice_linear(linear: Any, index: torch.Tensor, rows: bool) -> None:
    """Keep the output rows (rows=True) or the input columns of a Linear, in place."""
    import torch

    index = index.to(linear.weight.device)
    with torch.no_grad():
        linear.weight = torch.nn.Parameter(linear.weight.index_select(0 if rows else 1, index).clone())
        if rows and linear.bias is not None:  # an output bias goes with its rows; an input column has none
            linear.bias = torch.nn.Parameter(linear.bias[index].clone())
    linear.out_features, linear.in_features = linear.weight.shape


def _uniform_count(name: str, keep: list[torch.Tensor] | None, layers: list[int]) -> int | None:
    if keep is None:
        return None
    counts = {len(keep[i]) for i in layers}
    if len(counts) != 1:
        raise ValueError(f"prune_model: {name} must keep the same count in every block, got {sorted(counts)}")
    return counts.pop()


def prune_model(model: Any, keep_layers: list[int], mlp_keep: list[torch.Tensor] | None = None,
                kv_groups_keep: list[torch.Tensor] | None = None) -> Any:
    """Cut `model` IN PLACE and return it: keep the blocks `keep_layers` (indices into today's blocks), in each
    kept block i the MLP channels `mlp_keep[i]` and the key/value groups `kv_groups_keep[i]` (with their query
    heads); None keeps all. Updates the config so that `save_pretrained` writes a folder that
    `from_pretrained` and vLLM load."""
    import torch

    cfg = model.config
    layers = decoder_layers(model)
    keep_layers = sorted(set(int(i) for i in keep_layers))
    if not keep_layers or keep_layers[0] < 0 or keep_layers[-1] >= len(layers):
        raise ValueError(f"prune_model: keep_layers must name some of blocks 0..{len(layers) - 1}, got {keep_layers}")
    n_heads, n_kv, head_dim = head_layout(cfg)
    group = n_heads // n_kv
    width = _uniform_count("mlp_keep", mlp_keep, keep_layers)
    kv_count = _uniform_count("kv_groups_keep", kv_groups_keep, keep_layers)

    def head_rows(heads: torch.Tensor) -> torch.Tensor:  # the weight rows (or columns) of these heads
        return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()

    for i in keep_layers:
        layer = layers[i]
        if mlp_keep is not None:
            channels = mlp_keep[i].sort().values
            _slice_linear(layer.mlp.gate_proj, channels, rows=True)
            _slice_linear(layer.mlp.up_proj, channels, rows=True)
            _slice_linear(layer.mlp.down_proj, channels, rows=False)
            if hasattr(layer.mlp, "intermediate_size"):
                layer.mlp.intermediate_size = len(channels)
        if kv_groups_keep is not None:
            attn = layer.self_attn
            kv = kv_groups_keep[i].sort().values
            q = (kv[:, None] * group + torch.arange(group)).flatten()
            _slice_linear(attn.q_proj, head_rows(q), rows=True)
            _slice_linear(attn.k_proj, head_rows(kv), rows=True)
            _slice_linear(attn.v_proj, head_rows(kv), rows=True)
            _slice_linear(attn.o_proj, head_rows(q), rows=False)
            for name, value in (("num_heads", len(q)), ("num_key_value_heads", len(kv))):
                if hasattr(attn, name):  # older transformers and some architectures keep these on the module
                    setattr(attn, name, value)

    model.model.layers = torch.nn.ModuleList([layers[i] for i in keep_layers])
    for new_index, layer in enumerate(model.model.layers):
        for module in (layer, getattr(layer, "self_attn", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = new_index  # the KV cache is indexed by it
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in keep_layers]
    cfg.num_hidden_layers = len(keep_layers)
    cfg.head_dim = head_dim  # explicit: hidden_size // num_attention_heads no longer gives it after head pruning
    if width is not None:
        cfg.intermediate_size = width
    if kv_count is not None:
        cfg.num_attention_heads, cfg.num_key_value_heads = kv_count * group, kv_count
    return model


def sizes(model: Any) -> dict[str, int]:
    """What pruning changes, as the stats and the card report it."""
    cfg = model.config
    heads, kv_heads, _ = head_layout(cfg)
    return {"parameters": count_parameters(model), "num_layers": cfg.num_hidden_layers,
            "intermediate_size": cfg.intermediate_size, "num_attention_heads": heads, "num_key_value_heads": kv_heads}


def plan_from_budget(importance: list[float], fixed_params: int, params_per_layer: int, budget: int) -> list[int]:
    """The blocks to keep so that fixed_params + params_per_layer * kept <= budget, dropping the lowest Block
    Influence first, one at a time: the fewest blocks that fit are dropped."""
    order = sorted(range(len(importance)), key=lambda i: importance[i])  # least important first
    kept = len(importance)
    while fixed_params + params_per_layer * kept > budget:
        kept -= 1
        if kept == 0:
            raise ConfigError(f"student.prune.parameter_budget: {budget:,} is under the "
                              f"{fixed_params + params_per_layer:,} parameters of a single block with the "
                              "embeddings; raise it or prune widths too")
    return sorted(order[len(importance) - kept:])


# --- the stage ----------------------------------------------------------------------------------------------------

def calibration_texts(samples_dir: Path, n: int) -> list[str]:
    """prompt_text + rationale of the first n finished rationales (finish_reason stop), topped up with others."""
    import pyarrow.parquet as pq

    finished: list[str] = []
    others: list[str] = []
    for shard in list_shards(samples_dir):
        table = pq.read_table(shard, columns=["prompt_text", "rationale", "finish_reason"])
        for row in table.to_pylist():
            if row["rationale"]:
                (finished if row["finish_reason"] == "stop" else others).append(
                    (row["prompt_text"] or "") + row["rationale"])
        if len(finished) >= n:
            break
    return (finished + others)[:n]


def calibration_batches(tokenizer: Any, texts: list[str], max_tokens: int) -> list[dict[str, Any]]:
    """Tokenized texts in right-padded batches, longest first (less padding)."""
    import torch

    ids = [tokenizer(t, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"] for t in texts]
    ids = sorted((x for x in ids if x), key=len, reverse=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = []
    for start in range(0, len(ids), BATCH_SIZE):
        chunk = ids[start:start + BATCH_SIZE]
        width = len(chunk[0])
        batches.append({
            "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in chunk]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunk]),
        })
    return batches


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """The prune settings, the model's weights, and the generate output the calibration texts come from."""
    paths = config.paths
    if config.student.prune is None:
        raise ConfigError("student.prune is not set: there is nothing to prune")
    return make_fingerprint({
        "prune": dataclasses.asdict(config.student.prune),
        "student": {"model": config.student.model, "weights": model_fingerprint(config.student.model)},
        "generate": upstream(paths.generate),
        "calibration": {s.name: file_digest(s) for s in list_shards(calibration_folder(config))},
    })


def calibration_folder(config: RunConfig) -> Path:
    """The teacher rationales importance is measured on: the teacher's, or with several the first one's."""
    return config.teacher_runs()[0].paths.samples


def _checked_targets(prune: Any, model: Any) -> None:
    """Targets the model can meet: never more than it has; heads in whole key/value groups; the projections
    this module slices (Llama-style: gate/up/down_proj, q/k/v/o_proj)."""
    cfg, layer = model.config, decoder_layers(model)[0]
    n_heads, n_kv, _ = head_layout(cfg)
    for key, part, names in (("intermediate_size", "mlp", ("gate_proj", "up_proj", "down_proj")),
                             ("num_attention_heads", "self_attn", ("q_proj", "k_proj", "v_proj", "o_proj"))):
        if getattr(prune, key) is not None and not all(hasattr(getattr(layer, part, None), n) for n in names):
            raise ConfigError(f"student.prune.{key}: {type(model).__name__} has no {part}.{'/'.join(names)} to "
                              "prune; only num_layers or parameter_budget apply to it")
    for key, target, have in (("num_layers", prune.num_layers, cfg.num_hidden_layers),
                              ("intermediate_size", prune.intermediate_size, cfg.intermediate_size),
                              ("num_attention_heads", prune.num_attention_heads, n_heads)):
        if target is not None and target > have:
            raise ConfigError(f"student.prune.{key}: {target} is more than the model's {have}")
    group = n_heads // n_kv
    if prune.num_attention_heads is not None and prune.num_attention_heads % group:
        raise ConfigError(
            f"student.prune.num_attention_heads: {prune.num_attention_heads} is not a multiple of {group}, the query "
            f"heads per key/value head ({n_heads} heads, {n_kv} key/value heads): whole key/value groups are kept, "
            f"so choose one of {[group * k for k in range(1, n_kv + 1)]}")


def prune_student(config: RunConfig) -> dict[str, Any]:
    """The stage's work: measure importance on the teacher's rationales, cut, save prune/model/."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prune, paths = config.student.prune, config.paths
    samples = calibration_folder(config)
    if not list_shards(samples):
        raise RuntimeError(f"{samples}: generate wrote no sample shards; there is nothing to calibrate on")
    started = time.monotonic()

    base = resolve_model(config.student.model)
    texts = calibration_texts(samples, prune.calibration_samples)
    tokenizer = AutoTokenizer.from_pretrained(base)
    batches = calibration_batches(tokenizer, texts, prune.calibration_max_tokens)
    if not batches:
        raise RuntimeError(f"{samples}: no rationale text to calibrate on")
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    cfg = model.config
    _checked_targets(prune, model)
    n_layers = cfg.num_hidden_layers
    n_heads, n_kv, _ = head_layout(cfg)
    before = sizes(model)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    logger.info("prune: measuring importance in %s (%s) on %d rationales, %d tokens", base, before, len(texts), tokens)
    importance = measure_importance(model, batches, mlp=prune.intermediate_size is not None,
                                    heads=prune.num_attention_heads is not None)

    # Widths first, in every block, so that a parameter budget counts the blocks as they will be.
    mlp_keep = top_k(importance.mlp, prune.intermediate_size) if importance.mlp is not None else None
    kv_keep = (top_k(importance.heads, prune.num_attention_heads // (n_heads // n_kv))
               if importance.heads is not None else None)
    prune_model(model, list(range(n_layers)), mlp_keep, kv_keep)
    by_influence = sorted(range(n_layers), key=lambda i: importance.blocks[i], reverse=True)
    if prune.num_layers is not None:
        keep = sorted(by_influence[:prune.num_layers])
    elif prune.parameter_budget is not None:
        per_layer = sum(p.numel() for p in decoder_layers(model)[0].parameters())
        keep = plan_from_budget(importance.blocks, count_parameters(model) - per_layer * n_layers, per_layer,
                                prune.parameter_budget)
    else:
        keep = list(range(n_layers))
    prune_model(model, keep)

    after = sizes(model)
    stats = {
        "base_model": config.student.model,
        **{f"{key}_before": value for key, value in before.items()},
        **{f"{key}_after": value for key, value in after.items()},
        "removed_layers": [i for i in range(n_layers) if i not in keep],
        "kept_layers": keep,
        "block_importance": importance.blocks,
        "calibration_texts": len(texts),
        "calibration_tokens": tokens,
        "seconds": round(time.monotonic() - started, 2),
    }
    tmp_dir = paths.prune / ".model.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    model.save_pretrained(tmp_dir)
    tokenizer.save_pretrained(tmp_dir)
    (tmp_dir / "README.md").write_text(model_card(config, stats))
    replace_dir_atomic(tmp_dir, paths.pruned_model)
    write_json_atomic(stats, paths.prune / "stats.json")  # last: the stage is done
    logger.info("prune: saved %s (%s; removed blocks %s) in %.1f s", paths.pruned_model, after,
                stats["removed_layers"], stats["seconds"])
    return stats


def model_card(config: RunConfig, stats: dict[str, Any]) -> str:
    influence = ", ".join(f"{i}: {v:.4f}" for i, v in enumerate(stats["block_importance"]))
    return f"""---
base_model: {config.student.model}
library_name: transformers
tags: [cotdistill, pruning, minitron, shortgpt]
---
# {config.run_name}: `{config.student.model}`, pruned by cotdistill

- Parameters: {stats['parameters_before']:,} -> {stats['parameters_after']:,}
- Decoder blocks: {stats['num_layers_before']} -> {stats['num_layers_after']}; removed (by original index):
  {stats['removed_layers'] or 'none'}. Block Influence (1 - cosine of a block's input and output; ShortGPT):
  {influence}
- MLP width: {stats['intermediate_size_before']} -> {stats['intermediate_size_after']} channels in every block,
  the largest mean |act(gate(x)) * up(x)| kept per block (Minitron)
- Attention heads: {stats['num_attention_heads_before']} -> {stats['num_attention_heads_after']}
  (key/value heads {stats['num_key_value_heads_before']} -> {stats['num_key_value_heads_after']}), whole
  key/value groups kept per block by the L2 norm of their heads' outputs
- Calibration: {stats['calibration_texts']} teacher rationales (prompt + rationale, finished ones first) from
  `{calibration_folder(config)}`, {stats['calibration_tokens']:,} tokens, at most
  {config.student.prune.calibration_max_tokens if config.student.prune else '?'} each
- Settings: `{dataclasses.asdict(config.student.prune) if config.student.prune else {}}`

Not yet trained: distillation on the teacher's rationales recovers what pruning lost.
"""


STAGE = Stage(
    outputs=PRUNE,
    help="cut the student from student.model (depth, width) -> runs/<run>/prune/model/ (with student.prune)",
    needs=lambda config: (GENERATE,), fingerprint=fingerprint,
    outputs_complete=lambda config: (config.paths.pruned_model / "config.json").is_file(),
    work=prune_student, wanted=lambda config: config.student.prune is not None,
    example="student.prune.num_layers=20",
)
