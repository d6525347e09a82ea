"""prune: a student cut from the teacher. The cut model computes exactly what the original computes with the
removed blocks, channels and heads switched off; it has the parameters its config says; importance finds a
block that does nothing; the stage writes, skips and redoes as its fingerprint says; vLLM and TRL load it."""

from __future__ import annotations

import copy

import pyarrow as pa
import pytest
import yaml

from cotdistill.config.load import load_config
from cotdistill.config.sections import PruneConfig
from cotdistill.core.fields import ConfigError
from cotdistill.core.fingerprints import make_fingerprint, write_fingerprint
from cotdistill.core.shards import read_json, write_json_atomic, write_parquet_atomic
from cotdistill.models.footprint import count_parameters
from cotdistill.stages import prune
from tests.conftest import REPO, TINY_ENGINE, tiny_config_dict

QUESTIONS = REPO / "data" / "arithmetic" / "train.jsonl"
LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, WIDTH = 5, 128, 4, 2, 32, 256


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory, tiny_model):
    """5 blocks, hidden 128, 4 heads of 32 in 2 key/value groups, MLP 256, tied embeddings, random weights
    (initializer_range 0.1: logits spread enough that greedy tokens are not near-ties between engines)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target = tmp_path_factory.mktemp("small-llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=WIDTH, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, initializer_range=0.1,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def load(folder):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def batches(small_llama, gsm8k_rows):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_llama)
    texts = [r["question"] + "\n" + r["answer"] for r in gsm8k_rows[:12]]
    return prune.calibration_batches(tokenizer, texts, max_tokens=96)


def logits(model, batch):
    import torch

    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def expected_parameters(vocab: int, layers: int, heads: int, kv_heads: int, width: int) -> int:
    """Llama, no biases, tied embeddings: embedding + per block (q, k, v, o, gate/up/down, two norms) + final norm."""
    attention = HIDDEN * heads * HEAD_DIM * 2 + HIDDEN * kv_heads * HEAD_DIM * 2
    return vocab * HIDDEN + layers * (attention + 3 * HIDDEN * width + 2 * HIDDEN) + HIDDEN


def test_keeping_everything_reproduces_the_logits(small_llama, batches):
    import torch

    model = load(small_llama)
    same = prune.prune_model(copy.deepcopy(model), list(range(LAYERS)), [torch.arange(WIDTH)] * LAYERS,
                             [torch.arange(KV_HEADS)] * LAYERS)
    assert count_parameters(same) == count_parameters(model)
    for batch in batches[:2]:  # the second has padding
        assert torch.allclose(logits(same, batch), logits(model, batch), atol=1e-5)


@pytest.fixture(scope="module")
def pruned(small_llama, batches, tmp_path_factory):
    """The small Llama cut to blocks 0, 2 and 4 (so the kept ones are renumbered), with the 160 MLP channels and
    the key/value group (2 heads) of highest importance in each; saved. With the original and what was kept."""
    from transformers import AutoTokenizer

    model = load(small_llama)
    importance = prune.measure_importance(model, batches)
    keep = [0, 2, 4]
    mlp_keep, kv_keep = prune.top_k(importance.mlp, 160), prune.top_k(importance.heads, 1)
    cut = copy.deepcopy(model)
    del cut.config.head_dim  # as in configs that derive it from hidden_size: prune_model must write it
    prune.prune_model(cut, keep, mlp_keep, kv_keep)
    folder = tmp_path_factory.mktemp("pruned") / "model"
    cut.save_pretrained(folder)
    AutoTokenizer.from_pretrained(small_llama).save_pretrained(folder)
    return folder, model, keep, mlp_keep, kv_keep, cut


@pytest.mark.slow  # builds and prunes a model: about 30 s with its fixture
def test_cut_model_equals_the_original_with_the_cut_parts_switched_off(pruned, batches):
    import torch

    folder, original, keep, mlp_keep, kv_keep, cut = pruned
    reloaded = load(folder)
    cfg = reloaded.config
    assert (cfg.num_hidden_layers, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim) == (3, 160, 2, 1, HEAD_DIM)
    assert count_parameters(reloaded) == expected_parameters(cfg.vocab_size, 3, 2, 1, 160)
    assert [layer.self_attn.layer_idx for layer in reloaded.model.layers] == [0, 1, 2]
    # The model cut in memory, as train would get it: its KV cache is indexed by the renumbered blocks.
    assert [layer.self_attn.layer_idx for layer in cut.model.layers] == [0, 1, 2]
    prompt = batches[0]["input_ids"][:1, :12]
    with torch.no_grad():
        assert torch.equal(cut.eval().generate(prompt, do_sample=False, max_new_tokens=5, min_new_tokens=5),
                           reloaded.generate(prompt, do_sample=False, max_new_tokens=5, min_new_tokens=5))

    # The reference: a dropped block made an identity (no attention output, no MLP output); in a kept block,
    # the dropped channels' down_proj columns and the dropped heads' o_proj columns zeroed.
    reference = copy.deepcopy(original)
    with torch.no_grad():
        for i, layer in enumerate(reference.model.layers):
            if i not in keep:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
                continue
            off = torch.ones(WIDTH, dtype=torch.bool)
            off[mlp_keep[i]] = False
            layer.mlp.down_proj.weight[:, off] = 0
            for group in range(KV_HEADS):
                if group not in kv_keep[i].tolist():
                    first = group * (HEADS // KV_HEADS) * HEAD_DIM
                    layer.self_attn.o_proj.weight[:, first:first + (HEADS // KV_HEADS) * HEAD_DIM] = 0
    for batch in batches[:2]:
        assert not torch.allclose(logits(original, batch), logits(reference, batch), atol=1e-3)  # it did cut
        assert torch.allclose(logits(reloaded, batch), logits(reference, batch), atol=1e-5)


def test_block_influence_finds_a_block_that_does_nothing(small_llama, batches):
    import torch

    model = load(small_llama)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    influence = prune.block_importance(model, batches)
    assert len(influence) == LAYERS
    assert abs(influence[2]) < 1e-6 and min(influence[i] for i in range(LAYERS) if i != 2) > 1e-3
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    total = count_parameters(model)
    assert prune.plan_from_budget(influence, total - LAYERS * per_layer, per_layer, total - 1) == [0, 1, 3, 4]


def test_channel_and_head_importance_see_silent_ones_and_ignore_padding(small_llama, batches):
    import torch

    model = load(small_llama)
    group = HEADS // KV_HEADS
    with torch.no_grad():  # in block 1: channels 10..19 never fire; the heads of key/value group 1 output nothing
        model.model.layers[1].mlp.up_proj.weight[10:20] = 0
        model.model.layers[1].self_attn.v_proj.weight[HEAD_DIM:2 * HEAD_DIM] = 0
    mlp, heads = prune.mlp_channel_importance(model, batches[:1]), prune.head_importance(model, batches[:1])
    assert [m.shape for m in mlp] == [torch.Size([WIDTH])] * LAYERS and all((m >= 0).all() for m in mlp)
    assert [h.shape for h in heads] == [torch.Size([KV_HEADS])] * LAYERS
    assert (mlp[1][10:20] == 0).all() and (mlp[1][:10] > 0).all() and (mlp[0] > 0).all()
    assert heads[1][1] == 0 and heads[1][0] > 0 and (heads[0] > 0).all()
    assert prune.top_k(mlp, WIDTH - 10)[1].tolist() == [c for c in range(WIDTH) if not 10 <= c < 20]
    assert prune.top_k(heads, 1)[1].tolist() == [0] and group == 2
    # The same texts with extra padding (different pad ids): the same importance.
    batch = batches[1]
    padded = {"input_ids": torch.cat([batch["input_ids"], torch.full((len(batch["input_ids"]), 7), 5)], 1),
              "attention_mask": torch.cat([batch["attention_mask"], torch.zeros(len(batch["input_ids"]), 7,
                                                                                 dtype=torch.long)], 1)}
    a, b = prune.measure_importance(model, [batch]), prune.measure_importance(model, [padded])
    assert a.blocks == pytest.approx(b.blocks, abs=1e-6)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a.mlp + a.heads, b.mlp + b.heads))


def test_parameter_budget_drops_the_fewest_least_important_blocks():
    influence = [0.5, 0.1, 0.9, 0.05, 0.3]
    assert prune.plan_from_budget(influence, 1000, 100, 1500) == [0, 1, 2, 3, 4]  # already under
    assert prune.plan_from_budget(influence, 1000, 100, 1350) == [0, 2, 4]  # 1300 fits, 1400 does not
    assert prune.plan_from_budget(influence, 1000, 100, 1300) == [0, 2, 4]  # at the budget is under it
    assert prune.plan_from_budget(influence, 1000, 100, 1100) == [2]
    with pytest.raises(ConfigError, match="student.prune.parameter_budget"):
        prune.plan_from_budget(influence, 1000, 100, 1099)


# --- the stage --------------------------------------------------------------------------------------------------

def write_generate(run_dir, gsm8k_rows, n=10):
    """What a finished generate leaves: a sample shard (two truncated rationales first), stats, fingerprint."""
    rows = [{"prompt_text": f"<|im_start|>user\n{r['question']}<|im_end|>\n<|im_start|>assistant\n",
             "rationale": r["answer"], "finish_reason": "length" if i < 2 else "stop"}
            for i, r in enumerate(gsm8k_rows[:n])]
    write_parquet_atomic(pa.Table.from_pylist(rows), run_dir / "generate" / "samples" / "00000.parquet")
    write_json_atomic({"shards": 1}, run_dir / "generate" / "stats.json")
    write_fingerprint(run_dir / "generate", make_fingerprint({"generate": "test"}))
    return rows


def stage_config(tmp_path, model, **prune_settings):
    data = tiny_config_dict(tmp_path, model, QUESTIONS)
    data["student"]["prune"] = prune_settings
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def test_run_prunes_skips_when_done_and_redoes_on_new_settings(tmp_path, small_llama, gsm8k_rows, monkeypatch):
    config = stage_config(tmp_path, small_llama, num_layers=3, intermediate_size=128, num_attention_heads=2,
                          calibration_samples=6, calibration_max_tokens=64)
    rows = write_generate(config.run_dir, gsm8k_rows)
    texts = prune.calibration_texts(config.run_dir / "generate" / "samples", 9)
    as_text = [r["prompt_text"] + r["rationale"] for r in rows]
    assert texts == as_text[2:] + as_text[:1]  # the finished ones first, then topped up with truncated ones
    assert config.student_base() == str(config.run_dir / "prune" / "model")

    stats = prune.STAGE.run(config)
    out = config.run_dir / "prune"
    assert prune.STAGE.is_complete(config)
    assert stats == read_json(out / "stats.json")
    assert (stats["num_layers_after"], stats["intermediate_size_after"], stats["num_attention_heads_after"],
            stats["num_key_value_heads_after"]) == (3, 128, 2, 1)
    assert sorted(stats["removed_layers"] + stats["kept_layers"]) == list(range(LAYERS))
    lowest = sorted(range(LAYERS), key=lambda i: stats["block_importance"][i])[:2]
    assert sorted(lowest) == stats["removed_layers"]
    assert stats["calibration_texts"] == 6 and stats["parameters_before"] == count_parameters(load(small_llama))
    model = load(out / "model")
    assert stats["parameters_after"] == count_parameters(model) == expected_parameters(
        model.config.vocab_size, 3, 2, 1, 128)
    card = (out / "model" / "README.md").read_text()
    assert str(stats["removed_layers"]) in card and "256 -> 128" in card and "6 teacher rationales" in card
    assert not list(out.glob(".*tmp*"))

    # Same settings: skipped, nothing measured again.
    monkeypatch.setattr(prune, "measure_importance", lambda *a, **k: pytest.fail("measured again"))
    assert prune.STAGE.run(config) == stats
    monkeypatch.undo()

    # Other settings: redone. A budget between 3 and 4 full-width blocks keeps 3.
    per_layer = (stats["parameters_before"] - expected_parameters(model.config.vocab_size, 0, 0, 0, 0)) // LAYERS
    budget = expected_parameters(model.config.vocab_size, 0, 0, 0, 0) + 3 * per_layer + per_layer // 2
    config2 = stage_config(tmp_path, small_llama, parameter_budget=budget, calibration_samples=6)
    assert not prune.STAGE.is_complete(config2)
    stats2 = prune.STAGE.run(config2)
    assert stats2["num_layers_after"] == 3 and stats2["intermediate_size_after"] == WIDTH
    assert stats2["parameters_after"] <= budget < stats2["parameters_after"] + per_layer
    assert prune.STAGE.is_complete(config2) and not prune.STAGE.is_complete(config)


def test_targets_the_model_cannot_meet_are_refused(tmp_path, small_llama, gsm8k_rows):
    config = stage_config(tmp_path, small_llama, num_attention_heads=3)
    write_generate(config.run_dir, gsm8k_rows)
    with pytest.raises(ConfigError, match=r"student.prune.num_attention_heads: 3 is not a multiple of 2"):
        prune.STAGE.run(config)
    config = stage_config(tmp_path, small_llama, intermediate_size=512)
    with pytest.raises(ConfigError, match=r"student.prune.intermediate_size: 512 is more than the model's 256"):
        prune.STAGE.run(config)


@pytest.mark.engine
def test_vllm_and_transformers_agree_on_the_pruned_model(pruned):
    import torch
    from vllm import SamplingParams

    from cotdistill.config.sections import ModelConfig
    from cotdistill.teachers.vllm_local import build_llm, release_llm

    folder = pruned[0]
    prompts = [[5, 77, 300, 12, 9, 41], [100, 200, 50, 7]]
    llm = build_llm(ModelConfig(model=str(folder), engine={**TINY_ENGINE, "max_model_len": 256}), seed=0)
    try:
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                               SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True), use_tqdm=False)
    finally:
        release_llm(llm)
    model = load(folder)
    for prompt, output in zip(prompts, outputs):
        with torch.no_grad():
            hf = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=6, min_new_tokens=6)
        assert list(output.outputs[0].token_ids)[:4] == hf[0, len(prompt):].tolist()[:4]


def test_trl_trains_the_pruned_model(pruned, tmp_path):
    import math

    import datasets
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    folder = pruned[0]
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
             "completion": [{"role": "assistant", "content": f"{i} + {i} = {2 * i}. The answer is {2 * i}."}]}
            for i in range(4)]
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=2, report_to="none",
                     save_strategy="no", bf16=False, max_length=128, logging_steps=1)
    trainer = SFTTrainer(model=load(folder).train(), args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(folder))
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)


# --- configuration ----------------------------------------------------------------------------------------------

def base_config() -> dict:
    return {"run_name": "x", "data": {"path": str(QUESTIONS), "gold_format": "gsm8k"},
            "teacher": {"model": "t"}, "student": {"model": "s", "prune": {"num_layers": 4}}}


BAD_PRUNE = [
    ("student.prune.num_layers=0", "student.prune.num_layers", "at least 1"),
    ("student.prune.intermediate_size=-5", "student.prune.intermediate_size", "at least 1"),
    ("student.prune.num_attention_heads=0", "student.prune.num_attention_heads", "at least 1"),
    ("student.prune.calibration_samples=0", "student.prune.calibration_samples", "at least 1"),
    ("student.prune.calibration_max_tokens=0", "student.prune.calibration_max_tokens", "at least 1"),
    ("student.prune.parameter_budget=1000000", "student.prune.parameter_budget", "not both"),
    ("student.prune={}", "student.prune", "prunes nothing"),
]


@pytest.mark.parametrize("override,key,phrase", BAD_PRUNE, ids=[b[0].split("=")[0] for b in BAD_PRUNE])
def test_bad_prune_values_are_refused_at_load(tmp_path, override, key, phrase):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(base_config()))
    with pytest.raises(ConfigError) as caught:
        load_config(path, [override])
    assert str(caught.value).startswith(f"{path}: {key}:") and phrase in str(caught.value), str(caught.value)


def test_prune_is_a_student_key_only(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(base_config()))
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["teacher.prune={num_layers: 2}"])
    assert str(caught.value).startswith("override 'teacher.prune={num_layers: 2}' on the command line: unknown key "
                                        "'teacher.prune'"), str(caught.value)


def test_prune_settings_load(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(base_config()))
    config = load_config(path, ["student.prune={parameter_budget: 90000000, intermediate_size: 1024}"])
    assert config.student.prune == PruneConfig(parameter_budget=90_000_000, intermediate_size=1024)
    assert load_config(path, ["student.prune=null"]).student.prune is None
    with pytest.raises(ConfigError, match="unknown key 'student.prune.num_layrs'"):
        load_config(path, ["student.prune.num_layrs=3"])
