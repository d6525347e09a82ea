"""The chunked KD loss (losses.kd_loss) and the fused one (losses.kd_loss_fused, from the last hidden states and
the LM head) against the unchunked reference (losses.kd_loss_reference): the same values and gradients in every
mode (alpha 0 / 0.5 / 1, temperature 1 and 2, TAID off and at lambda 0, 0.3 and 1; the tail bucket is always on,
and a teacher covering the whole vocabulary puts it at its floor), with prompt and padding labels (-100), a
teacher mask with holes, and chunk sizes that do not divide the rows (or the vocabulary). Then the memory
property itself (no float32 tensor of the whole logits, no logits at all in the fused loss), the fused loss on a
real tiny Llama's hidden states, and the KD trainer's fused step against its logits step.

Tolerances: in float32, the loss within 1e-5 (relative) and every gradient within 1e-5 of its largest element;
in bf16 (the logits, hidden states and weights in bf16), the loss within 1e-5 (the logits are the same bits and
everything after them is float32) and every gradient within 1e-2 of its largest element (about two bf16
roundings: the fused loss sums its products in float32 where the reference sums bf16 ones). A gradient that is
zero up to rounding (TAID at lambda 0 with alpha 0) is allowed 1e-7 besides.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode

from cotdistill.trainers.losses import kd_loss, kd_loss_fused, kd_loss_reference

MODES = [(alpha, temperature, taid) for alpha in (0.0, 0.5, 1.0) for temperature in (1.0, 2.0)
         for taid in (None, 0.0, 0.3, 1.0)]
TOLERANCE = {torch.float32: {"value": 1e-5, "grad": 1e-5}, torch.bfloat16: {"value": 1e-5, "grad": 1e-2}}


def batch(dtype: torch.dtype, k: int = 5, vocab: int = 40, seed: int = 0) -> dict:
    """2 sequences of 9 positions (18 rows); hidden size 12. Row 0 starts with 3 prompt positions, row 1 ends in
    2 padding positions (labels -100 there); the teacher is unknown at 3 completion positions. The teacher's k
    ids are the top k of a random distribution, logprobs in descending order."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (2, 9), generator=g)
    labels[0, :3] = -100
    labels[1, 7:] = -100
    teacher_logprobs, teacher_ids = torch.log_softmax(2 * torch.randn(2, 9, vocab, generator=g), -1).topk(k, -1)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 4], mask[0, 8], mask[1, 2] = False, False, False
    return {"hidden": torch.randn(2, 9, 12, generator=g).to(dtype),
            "weight": (0.4 * torch.randn(vocab, 12, generator=g)).to(dtype),
            "bias": torch.randn(vocab, generator=g).to(dtype),
            "targets": (labels, teacher_ids, teacher_logprobs, mask)}


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


def assert_same(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, kind: str,
                tol: float | None = None) -> None:
    tol = TOLERANCE[dtype][kind] if tol is None else tol
    if kind == "value":
        assert actual.item() == pytest.approx(expected.item(), rel=tol, abs=1e-7)
    else:
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        worst = (actual.float() - expected.float()).abs().max().item()
        # 1e-7: a gradient that is zero up to rounding (TAID at lambda 0 with alpha 0 pulls toward the student itself)
        assert worst <= tol * expected.float().abs().max().item() + 1e-7, f"gradient off by {worst}"


def reference(b: dict, bias: bool, **options):
    """kd_loss_reference on the logits F.linear(hidden, weight, bias): its loss, parts and every gradient."""
    hidden, weight, b_ = leaf(b["hidden"]), leaf(b["weight"]), leaf(b["bias"]) if bias else None
    logits = F.linear(hidden, weight, b_)
    logits.retain_grad()
    loss, parts = kd_loss_reference(logits, *b["targets"], **options)
    loss.backward()
    return loss, parts, logits, {"hidden": hidden.grad, "weight": weight.grad, "bias": b_.grad if bias else None}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("chunk_size", [4, 7, None])  # 18 rows: chunks of 4 and 7 leave a partial last chunk
@pytest.mark.parametrize("alpha,temperature,taid", MODES)
def test_the_chunked_loss_gives_the_reference_values_and_gradients(alpha, temperature, taid, chunk_size, dtype):
    b = batch(dtype)
    options = {"alpha": alpha, "temperature": temperature, "taid_lambda": taid}
    expected, expected_parts, logits, _ = reference(b, bias=True, **options)
    chunked_logits = leaf(logits)
    loss, parts = kd_loss(chunked_logits, *b["targets"], chunk_size=chunk_size, **options)
    loss.backward()
    assert_same(loss, expected, dtype, "value")
    assert parts.keys() == expected_parts.keys()
    for name in parts:
        assert parts[name] == pytest.approx(expected_parts[name], rel=1e-5, abs=1e-7)
    assert_same(chunked_logits.grad, logits.grad, dtype, "grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("chunk_size,bias", [(7, True), (16, False), (None, True)])  # 40 = 5·7 + 5 = 2·16 + 8
@pytest.mark.parametrize("alpha,temperature,taid", MODES)
def test_the_fused_loss_gives_the_reference_values_and_gradients(alpha, temperature, taid, chunk_size, bias, dtype):
    b = batch(dtype)
    options = {"alpha": alpha, "temperature": temperature, "taid_lambda": taid}
    expected, expected_parts, _, grads = reference(b, bias=bias, **options)
    hidden, weight, b_ = leaf(b["hidden"]), leaf(b["weight"]), leaf(b["bias"]) if bias else None
    loss, parts = kd_loss_fused(hidden, weight, *b["targets"], bias=b_, chunk_size=chunk_size, **options)
    loss.backward()
    assert_same(loss, expected, dtype, "value")
    assert parts == pytest.approx(expected_parts, rel=1e-5, abs=1e-7)
    assert_same(hidden.grad, grads["hidden"], dtype, "grad")
    assert_same(weight.grad, grads["weight"], dtype, "grad")
    if bias:
        assert_same(b_.grad, grads["bias"], dtype, "grad")


@pytest.mark.parametrize("taid", [None, 0.5])
def test_a_teacher_covering_the_whole_vocabulary_leaves_the_tail_at_its_floor(taid):
    """k = V: the teacher's k tokens hold all the mass and its tail bucket is the clamped 1e-8. So is the
    student's, up to float32 rounding: its tail is 1 − (a sum that is 1 up to rounding), which chunking rounds
    differently, moving that tail between 1e-8 and about 1e-7; the gradients agree to 1e-4 of their largest
    element here, the loss to 1e-5."""
    b = batch(torch.float32, k=40)
    options = {"alpha": 0.3, "temperature": 2.0, "taid_lambda": taid, "num_items_in_batch": 20}
    expected, _, logits, grads = reference(b, bias=True, **options)
    chunked_logits = leaf(logits)
    loss, _ = kd_loss(chunked_logits, *b["targets"], chunk_size=5, **options)
    loss.backward()
    assert_same(loss, expected, torch.float32, "value")
    assert_same(chunked_logits.grad, logits.grad, torch.float32, "grad", tol=1e-4)
    hidden, weight, b_ = leaf(b["hidden"]), leaf(b["weight"]), leaf(b["bias"])
    fused, _ = kd_loss_fused(hidden, weight, *b["targets"], bias=b_, chunk_size=9, **options)
    fused.backward()
    assert_same(fused, expected, torch.float32, "value")
    for name, value in (("hidden", hidden), ("weight", weight), ("bias", b_)):
        assert_same(value.grad, grads[name], torch.float32, "grad", tol=1e-4)


def test_a_batch_without_a_label_gives_zero_and_zero_gradients():
    b = batch(torch.float32)
    labels = torch.full_like(b["targets"][0], -100)
    targets = (labels, *b["targets"][1:])
    hidden, weight = leaf(b["hidden"]), leaf(b["weight"])
    loss, _ = kd_loss_fused(hidden, weight, *targets, alpha=0.5)
    loss.backward()
    assert loss.item() == 0.0 and not hidden.grad.any() and not weight.grad.any()
    logits = leaf(F.linear(b["hidden"], b["weight"]))
    loss, _ = kd_loss(logits, *targets, alpha=0.5)
    loss.backward()
    assert loss.item() == 0.0 and not logits.grad.any()


# --- what the chunking is for: memory -----------------------------------------------------------------------------

class LargestTensors(TorchDispatchMode):
    """Every tensor an op makes, forward and backward: the largest float32 one, and the largest of any dtype with
    `columns` in its last dimension (a block of logits)."""

    def __init__(self, columns: int):
        super().__init__()
        self.columns, self.float32, self.logits = columns, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                if t.dtype == torch.float32:
                    self.float32 = max(self.float32, t.numel())
                if t.dim() == 2 and t.size(-1) == self.columns:
                    self.logits = max(self.logits, t.numel())
        return out


def test_the_chunked_loss_upcasts_one_chunk_at_a_time_and_the_fused_loss_makes_no_logits():
    b = batch(torch.bfloat16, vocab=1000)
    logits = leaf(F.linear(b["hidden"], b["weight"]))  # [2, 9, 1000] bf16: 18 rows
    with LargestTensors(columns=1000) as seen:
        kd_loss_reference(logits, *b["targets"], alpha=0.5)[0].backward()
    assert seen.float32 >= 16 * 1000  # (2 × 8 shifted rows) the reference's whole float32 copy: what the chunked loss must not make
    with LargestTensors(columns=1000) as seen:
        kd_loss(leaf(logits), *b["targets"], alpha=0.5, chunk_size=4)[0].backward()
    assert seen.float32 <= 4 * 1000
    hidden, weight = leaf(b["hidden"]), leaf(b["weight"])
    with LargestTensors(columns=1000) as seen:
        kd_loss_fused(hidden, weight, *b["targets"], alpha=0.5, chunk_size=128)[0].backward()
    assert seen.logits == 0  # no tensor as wide as the vocabulary: the slices are 128 wide
    assert seen.float32 <= 18 * 128  # float32 tiles of one slice at most


# --- on a model ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
def test_the_fused_loss_on_a_llamas_last_hidden_state_matches_the_reference_on_its_logits(tied):
    """The trainer's call: the model gives its last hidden states (hidden_states[-1], after the final norm) and
    the logits of the last position only; the fused loss through lm_head equals the reference on the full
    logits, in value and in every parameter's gradient."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    b = batch(torch.float32)
    input_ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones(2, 9, dtype=torch.long)
    attention_mask[1, 7:] = 0
    options = {"alpha": 0.5, "temperature": 2.0, "taid_lambda": 0.3}

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    expected, _ = kd_loss_reference(logits, *b["targets"], **options)
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1)
    assert outputs.logits.shape == (2, 1, 40)
    head = model.get_output_embeddings()
    loss, _ = kd_loss_fused(outputs.hidden_states[-1], head.weight, *b["targets"], bias=head.bias, chunk_size=16,
                            **options)
    loss.backward()
    assert_same(loss, expected, torch.float32, "value")
    for name, p in model.named_parameters():
        assert_same(p.grad, expected_grads[name], torch.float32, "grad")


def test_the_kd_trainers_fused_step_gives_its_logits_step(kd_run, tmp_path):
    """KDTrainer.compute_loss through the fused head and through the full logits (what it falls back to), on the
    same batch: the same loss and the same gradient for every parameter."""
    from cotdistill.config.load import load_config
    from cotdistill.core.shards import list_shards
    from cotdistill.stages import train

    config, path, _, _ = kd_run
    taid = load_config(path, ["train.kd.interpolation=taid", f"output_dir={tmp_path}"])
    trainer = train.build_trainer(taid, shards=list_shards(config.run_dir / "filter" / "accepted"))
    model = trainer.model
    assert trainer.fused_head(model) is model.get_output_embeddings()
    batch_ = trainer.data_collator([dict(trainer.train_dataset[i]) for i in range(2)])
    model.train()
    losses, grads = [], []
    for fused in (None, False):  # None: checked on this first step, then used
        trainer.fused_loss = fused
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch_))
        loss.backward()
        losses.append(loss)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        if fused is None:
            assert trainer.fused_loss is True
    assert_same(losses[0], losses[1], torch.float32, "value")
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[1]:
        assert_same(grads[0][name], grads[1][name], torch.float32, "grad")
