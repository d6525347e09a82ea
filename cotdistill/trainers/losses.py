"""Losses: pure tensor functions, no trainer, no I/O (train.loss: sft | kd).

    loss, parts = kd_loss(logits, labels, teacher_ids, teacher_logprobs, teacher_mask, alpha=0.5)
    loss, parts = kd_loss_fused(hidden_states, lm_head.weight, labels, teacher_ids, teacher_logprobs,
                                teacher_mask, bias=lm_head.bias, alpha=0.5)    # no [B, L, V] logits at all

`kd_loss` is α·CE + (1−α)·T²·KL(teacher ‖ student) per completion token (Hinton et al. 2015), from the teacher's
stored top-k logprobs. The teacher's leftover mass (1 − the k probabilities) is a tail bucket: both
distributions are coarsened to k + 1 outcomes, the teacher's k tokens and "anything else", and the KL is taken
between those. That is the exact KL of the coarsened distributions (never above the full KL, by the data
processing inequality) and needs nothing the store does not hold; renormalising the teacher over its k tokens
instead would claim the teacher gives the rest probability 0. The temperature T divides the bucket logprobs of
both sides, so at T = 1 the buckets are the models' own probabilities.

TAID (Shing et al., Sakana AI, ICLR 2025): the target is p_λ = (1 − λ)·stopgrad(q_student) + λ·p_teacher, with λ
moving from `taid_start` to `taid_end` over training (here linearly in the step; TAID's adaptive update is a
refinement of the same schedule), so the student is first pulled toward a target close to itself.

Shapes: logits [B, L, V]; labels [B, L] with −100 where no loss is taken (prompt, padding); teacher_ids and
teacher_logprobs [B, L, k] aligned with labels (row i: the teacher's distribution for token i);
teacher_mask [B, L]: where the teacher's top-k is known. Position i of the logits predicts token i + 1; the
shift is done here, as transformers' causal-LM loss does it.

Chunked. Of each row of V logits the loss needs only three things: its log-normaliser (logsumexp), the logit
at the label and the logits at the teacher's k ids; everything after that is arithmetic on [rows, k + 1].
`kd_loss` takes those from the logits a chunk of rows at a time, upcasting one chunk to float32, never the
whole tensor (nor a full log_softmax), and its backward writes the logits' gradient chunk by chunk
(softmax·∂loss/∂logsumexp, plus the gradients at the k + 1 picked ids). `kd_loss_fused` starts from the last
hidden states and the LM head instead: the logits are made one vocabulary slice at a time, in forward and again
in backward, so they never exist whole, not even in bf16. Both give the values and gradients of
`kd_loss_reference`, the unchunked loss they replace (tests/test_kd_chunked.py; benchmarks/kd_loss.py measures
the memory and time of all three).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

KD_INTERPOLATIONS = ("none", "taid")

# Elements of one float32 tile of logits (128 MiB): rows per chunk in kd_loss, vocabulary per slice in kd_loss_fused.
TILE_ELEMENTS = 1 << 25


def _shift(logits: Any, *aligned: Any) -> tuple[Any, ...]:
    return (logits[:, :-1, :],) + tuple(t[:, 1:] for t in aligned)


def bucket_logprobs(topk_logprobs: Any) -> Any:
    """[..., k] logprobs of k tokens -> [..., k + 1] with the leftover mass as the last bucket."""
    mass = torch.logsumexp(topk_logprobs, dim=-1, keepdim=True)  # log of the k tokens' total probability
    # log(1 - exp(mass)), floored: the k tokens may hold (numerically) all of the mass.
    tail = torch.log(torch.clamp(-torch.expm1(torch.clamp(mass, max=0.0)), min=1e-8))
    return torch.cat([topk_logprobs, tail], dim=-1)


def kd_loss_reference(logits: Any, labels: Any, teacher_ids: Any, teacher_logprobs: Any, teacher_mask: Any, *,
                      alpha: float, temperature: float = 1.0, taid_lambda: float | None = None,
                      num_items_in_batch: Any = None) -> tuple[Any, dict[str, float]]:
    """The unchunked loss, as first written: the reference the chunked `kd_loss` is tested and benchmarked against.
    It upcasts the whole [B, L, V] logits to float32 and builds a full log_softmax for the CE.

    α·CE + (1−α)·T²·KL over the completion tokens; returns (loss, its parts for logging).

    Normalised like TRL's SFT loss: sums over tokens divided by the number of completion tokens in the batch
    (or `num_items_in_batch`, the count over all gradient-accumulation micro-batches, when the trainer gives it),
    so α = 1 gives exactly the SFT loss.
    """
    logits, labels, teacher_ids, teacher_logprobs, teacher_mask = _shift(
        logits, labels, teacher_ids, teacher_logprobs, teacher_mask)
    completion = labels != -100
    count = completion.sum() if num_items_in_batch is None else num_items_in_batch
    count = torch.as_tensor(count, device=logits.device).clamp(min=1)
    logits = logits.float()
    ce_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100,
                             reduction="sum")
    parts = {"ce": (ce_sum / count).item()}
    if alpha >= 1.0:
        return ce_sum / count, parts

    # The student's logprobs at the teacher's k tokens, without building a full [B, L, V] log_softmax.
    student_top = logits.gather(-1, teacher_ids.long()) - torch.logsumexp(logits, dim=-1, keepdim=True)
    student = torch.log_softmax(bucket_logprobs(student_top) / temperature, dim=-1)
    teacher = torch.log_softmax(bucket_logprobs(teacher_logprobs.float()) / temperature, dim=-1)
    if taid_lambda is not None:  # TAID's intermediate target, between the (detached) student and the teacher
        teacher = torch.logaddexp(torch.log1p(torch.tensor(-taid_lambda)) + student.detach(),
                                  torch.log(torch.tensor(taid_lambda)) + teacher)
    p = teacher.exp()
    per_token = torch.where(p > 0, p * (teacher - student), torch.zeros_like(p)).sum(-1)
    kl_sum = (per_token * (completion & teacher_mask.bool())).sum()
    parts["kl"] = (kl_sum / count).item()
    loss = alpha * ce_sum / count + (1.0 - alpha) * temperature ** 2 * kl_sum / count
    return loss, parts


def kd_loss(logits: Any, labels: Any, teacher_ids: Any, teacher_logprobs: Any, teacher_mask: Any, *,
            alpha: float, temperature: float = 1.0, taid_lambda: float | None = None,
            num_items_in_batch: Any = None, chunk_size: int | None = None) -> tuple[Any, dict[str, float]]:
    """α·CE + (1−α)·T²·KL over the completion tokens, from the logits a chunk of `chunk_size` rows at a time
    (by default as many as make a 128 MiB float32 tile); returns (loss, its parts for logging), as
    `kd_loss_reference` does. The logits stay in their dtype (bf16 in training): the only full-size tensor this
    adds is their gradient, in that dtype."""
    vocab = logits.size(-1)
    labels, teacher_ids, teacher_logprobs, kl_rows = _next_token_rows(labels, teacher_ids, teacher_logprobs,
                                                                      teacher_mask)
    count = _count(labels, num_items_in_batch)
    targets = torch.cat([labels.clamp(min=0).long()[:, None], teacher_ids], dim=1)
    chunk = chunk_size or max(1, TILE_ELEMENTS // vocab)
    lse, picked = _ChunkedLogits.apply(logits.reshape(-1, vocab), targets, chunk)
    return _kd_from_rows(lse, picked, labels, teacher_logprobs, kl_rows, count, alpha=alpha,
                         temperature=temperature, taid_lambda=taid_lambda)


def kd_loss_fused(hidden_states: Any, weight: Any, labels: Any, teacher_ids: Any, teacher_logprobs: Any,
                  teacher_mask: Any, *, bias: Any = None, alpha: float, temperature: float = 1.0,
                  taid_lambda: float | None = None, num_items_in_batch: Any = None,
                  chunk_size: int | None = None) -> tuple[Any, dict[str, float]]:
    """`kd_loss` of the logits F.linear(hidden_states, weight, bias) (the LM head), without making them: hidden_states
    [B, L, H] are the model's last (post-norm) hidden states, weight [V, H] and bias [V] the LM head's. Only rows
    with a label are projected, `chunk_size` vocabulary entries at a time (by default as many as make a 128 MiB
    float32 tile with those rows), and the slices are projected again in the backward rather than kept. The
    projection runs in the weight's dtype (or autocast's), as the model's own head does, so the logits are the
    ones the model would have given `kd_loss`."""
    labels, teacher_ids, teacher_logprobs, kl_rows = _next_token_rows(labels, teacher_ids, teacher_logprobs,
                                                                      teacher_mask)
    count = _count(labels, num_items_in_batch)
    keep = labels != -100  # rows with no label carry no CE and no KL: they are not projected at all
    labels, teacher_ids, teacher_logprobs, kl_rows = (t[keep] for t in (labels, teacher_ids, teacher_logprobs,
                                                                        kl_rows))
    hidden = hidden_states.reshape(-1, hidden_states.size(-1))[keep]
    targets = torch.cat([labels.long()[:, None], teacher_ids], dim=1)
    chunk = chunk_size or max(128, TILE_ELEMENTS // max(hidden.size(0), 1))
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    lse, picked = _FusedLinearLogits.apply(hidden, weight, bias, targets, chunk, dtype)
    return _kd_from_rows(lse, picked, labels, teacher_logprobs, kl_rows, count, alpha=alpha,
                         temperature=temperature, taid_lambda=taid_lambda)


def _next_token_rows(labels: Any, teacher_ids: Any, teacher_logprobs: Any, teacher_mask: Any) -> tuple[Any, ...]:
    """The targets of each logits row, one row per position: row i predicts token i + 1, so the targets move one
    position left, and the last position of each sequence (which predicts nothing) gets label −100. Unlike
    `_shift`, this leaves the logits whole, so [B, L, V] -> [B·L, V] is a view, not a copy. Returns labels [N],
    teacher ids [N, k] (long), teacher logprobs [N, k] and the rows that carry KL [N] (a label and a known teacher)."""
    labels = labels.roll(-1, dims=1)
    labels[:, -1] = -100
    kl_rows = teacher_mask.bool().roll(-1, dims=1) & (labels != -100)
    k = teacher_ids.size(-1)
    return (labels.reshape(-1), teacher_ids.long().roll(-1, dims=1).reshape(-1, k),
            teacher_logprobs.roll(-1, dims=1).reshape(-1, k), kl_rows.reshape(-1))


def _count(labels: Any, num_items_in_batch: Any) -> Any:
    count = (labels != -100).sum() if num_items_in_batch is None else num_items_in_batch
    return torch.as_tensor(count, device=labels.device).clamp(min=1)


def _kd_from_rows(lse: Any, picked: Any, labels: Any, teacher_logprobs: Any, kl_rows: Any, count: Any, *,
                  alpha: float, temperature: float, taid_lambda: float | None) -> tuple[Any, dict[str, float]]:
    """The loss from each row's logsumexp [N] and picked logits [N, 1 + k] (the label's, then the teacher's k
    ids'), all float32: `kd_loss_reference`'s arithmetic, on [N, k + 1] instead of [N, V]."""
    ce_sum = torch.where(labels != -100, lse - picked[:, 0], 0.0).sum()
    parts = {"ce": (ce_sum / count).item()}
    if alpha >= 1.0:
        return ce_sum / count, parts
    student_top = picked[:, 1:] - lse[:, None]
    student = torch.log_softmax(bucket_logprobs(student_top) / temperature, dim=-1)
    teacher = torch.log_softmax(bucket_logprobs(teacher_logprobs.float()) / temperature, dim=-1)
    if taid_lambda is not None:  # TAID's intermediate target, between the (detached) student and the teacher
        teacher = torch.logaddexp(torch.log1p(torch.tensor(-taid_lambda)) + student.detach(),
                                  torch.log(torch.tensor(taid_lambda)) + teacher)
    p = teacher.exp()
    per_token = torch.where(p > 0, p * (teacher - student), torch.zeros_like(p)).sum(-1)
    kl_sum = (per_token * kl_rows).sum()
    parts["kl"] = (kl_sum / count).item()
    loss = alpha * ce_sum / count + (1.0 - alpha) * temperature ** 2 * kl_sum / count
    return loss, parts


class _ChunkedLogits(torch.autograd.Function):
    """logits [N, V] (any float dtype), targets [N, m] -> logsumexp [N] and the logits at the targets [N, m], in
    float32, `chunk` rows at a time. Backward: ∂/∂logits = softmax·g_lse + g_picked scattered at the targets,
    written chunk by chunk into one tensor of the logits' dtype."""

    @staticmethod
    def forward(ctx: Any, logits: Any, targets: Any, chunk: int) -> tuple[Any, Any]:
        lse = torch.empty(logits.size(0), device=logits.device, dtype=torch.float32)
        for start in range(0, logits.size(0), chunk):
            lse[start:start + chunk] = torch.logsumexp(logits[start:start + chunk].float(), dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk = chunk
        return lse, logits.gather(1, targets).float()

    @staticmethod
    def backward(ctx: Any, grad_lse: Any, grad_picked: Any) -> tuple[Any, None, None]:
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start in range(0, logits.size(0), ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            g = logits[rows].to(torch.float32, copy=True)
            g.sub_(lse[rows, None]).exp_().mul_(grad_lse[rows, None])  # ∂logsumexp/∂logits is the softmax
            g.scatter_add_(1, targets[rows], grad_picked[rows])
            grad[rows] = g
        return grad, None, None


class _FusedLinearLogits(torch.autograd.Function):
    """hidden [N, H], the head's weight [V, H] and bias [V] -> what `_ChunkedLogits` gives of F.linear(hidden,
    weight, bias), one slice of `chunk` vocabulary entries at a time: [N, chunk] logits in `dtype` (as the head
    makes them), upcast to float32; the logsumexp is combined across slices. Backward makes each slice again and
    turns its gradient into the hidden states' (accumulated in float32 across slices) and that slice's rows of
    the weight's (one product over all N rows)."""

    @staticmethod
    def forward(ctx: Any, hidden: Any, weight: Any, bias: Any, targets: Any, chunk: int, dtype: Any) -> tuple[Any, Any]:
        lse = torch.full((hidden.size(0),), float("-inf"), device=hidden.device, dtype=torch.float32)
        picked = torch.zeros(targets.shape, device=hidden.device, dtype=torch.float32)
        for start in range(0, weight.size(0), chunk):
            logits = _project(hidden, weight, bias, start, chunk, dtype).float()
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
            inside, index = _in_slice(targets, start, logits.size(1))
            picked = torch.where(inside, logits.gather(1, index), picked)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        return lse, picked

    @staticmethod
    def backward(ctx: Any, grad_lse: Any, grad_picked: Any) -> tuple[Any, ...]:
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        grad_hidden = (torch.zeros(hidden.shape, device=hidden.device, dtype=torch.float32)
                       if ctx.needs_input_grad[0] else None)
        grad_weight = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        grad_bias = torch.empty_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        for start in range(0, weight.size(0), ctx.chunk):
            g = _project(hidden, weight, bias, start, ctx.chunk, ctx.dtype).float()
            g.sub_(lse[:, None]).exp_().mul_(grad_lse[:, None])  # ∂logsumexp/∂logits is the softmax
            inside, index = _in_slice(targets, start, g.size(1))
            g.scatter_add_(1, index, torch.where(inside, grad_picked, 0.0))
            rows = slice(start, start + g.size(1))
            if grad_bias is not None:
                grad_bias[rows] = g.sum(0)
            g = g.to(ctx.dtype)
            with torch.autocast(hidden.device.type, enabled=False):
                if grad_hidden is not None:
                    _addmm_fp32(grad_hidden, g, weight[rows].to(ctx.dtype))
                if grad_weight is not None:
                    grad_weight[rows] = g.t() @ hidden.to(ctx.dtype)
        grad_hidden = None if grad_hidden is None else grad_hidden.to(hidden.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def _project(hidden: Any, weight: Any, bias: Any, start: int, size: int, dtype: Any) -> Any:
    """Logits of the vocabulary slice [start, start + size), as the LM head makes them, in `dtype`."""
    rows = slice(start, start + size)
    with torch.autocast(hidden.device.type, enabled=False):
        return F.linear(hidden.to(dtype), weight[rows].to(dtype), None if bias is None else bias[rows].to(dtype))


def _in_slice(targets: Any, start: int, size: int) -> tuple[Any, Any]:
    """Which targets fall in the vocabulary slice [start, start + size), and their column there (clamped in range
    where they do not)."""
    inside = (targets >= start) & (targets < start + size)
    return inside, (targets - start).clamp(0, size - 1)


def _addmm_fp32(acc: Any, a: Any, b: Any) -> None:
    """acc += a @ b for a float32 acc, without rounding a @ b to the inputs' dtype first (summing bf16-rounded
    products slice after slice would bias the gradient; TRL's chunked log-prob kernel does the same)."""
    if acc.device.type == "cuda" and a.dtype != torch.float32:
        try:
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)  # torch >= 2.8
            return
        except (TypeError, RuntimeError):  # an older torch: upcast the operands instead
            pass
    acc.addmm_(a.float(), b.float())


def taid_lambda(progress: float, start: float, end: float) -> float:
    """TAID's interpolation weight at `progress` (0 at the first step, 1 at the last), linear from start to end."""
    progress = min(max(progress, 0.0), 1.0)
    return start + (end - start) * progress
