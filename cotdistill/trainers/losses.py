"""Losses: pure tensor functions, no trainer, no I/O (train.loss: sft | kd).

    loss = kd_loss(logits, labels, teacher_ids, teacher_logprobs, teacher_mask, alpha=0.5, temperature=1.0)

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
"""

from __future__ import annotations

from typing import Any

KD_INTERPOLATIONS = ("none", "taid")


def _shift(logits: Any, *aligned: Any) -> tuple[Any, ...]:
    return (logits[:, :-1, :],) + tuple(t[:, 1:] for t in aligned)


def bucket_logprobs(topk_logprobs: Any) -> Any:
    """[..., k] logprobs of k tokens -> [..., k + 1] with the leftover mass as the last bucket."""
    import torch

    mass = torch.logsumexp(topk_logprobs, dim=-1, keepdim=True)  # log of the k tokens' total probability
    # log(1 - exp(mass)), floored: the k tokens may hold (numerically) all of the mass.
    tail = torch.log(torch.clamp(-torch.expm1(torch.clamp(mass, max=0.0)), min=1e-8))
    return torch.cat([topk_logprobs, tail], dim=-1)


def kd_loss(logits: Any, labels: Any, teacher_ids: Any, teacher_logprobs: Any, teacher_mask: Any, *,
            alpha: float, temperature: float = 1.0, taid_lambda: float | None = None,
            num_items_in_batch: Any = None) -> tuple[Any, dict[str, float]]:
    """α·CE + (1−α)·T²·KL over the completion tokens; returns (loss, its parts for logging).

    Normalised like TRL's SFT loss: sums over tokens divided by the number of completion tokens in the batch
    (or `num_items_in_batch`, the count over all gradient-accumulation micro-batches, when the trainer gives it),
    so α = 1 gives exactly the SFT loss.
    """
    import torch
    import torch.nn.functional as F

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


def taid_lambda(progress: float, start: float, end: float) -> float:
    """TAID's interpolation weight at `progress` (0 at the first step, 1 at the last), linear from start to end."""
    progress = min(max(progress, 0.0), 1.0)
    return start + (end - start) * progress
