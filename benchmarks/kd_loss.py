"""Memory and time of the KD loss at Qwen's vocabulary: the unchunked reference against the chunked and fused losses.

    .venv/bin/python benchmarks/kd_loss.py [--batch B] [--seq L] [--vocab 151936] [--hidden 1536] [--k 20]
    .venv/bin/python benchmarks/kd_loss.py --smoke     # vocabulary 4,096, 64 tokens: the same steps in seconds

Forward plus backward of top-20 KD (alpha 0.5, temperature 1, the tail bucket; the first eighth of each
sequence is prompt, label -100) at vocabulary 151,936, in bf16, four ways, each in a process of its own:

- reference: cotdistill.trainers.losses.kd_loss_reference on given logits [B, L, V] (today's loss: a float32
  copy of the whole logits, a full log_softmax);
- chunked: losses.kd_loss on the same logits (one float32 chunk of rows at a time);
- reference_head: F.linear(hidden, lm_head) then kd_loss_reference, gradients to the hidden states and the head;
- fused: losses.kd_loss_fused on the same hidden states and head (no [B, L, V] logits at all).

Peak memory is measured above the inputs (the logits, or the hidden states and the head, and the teacher's
columns), so it counts what the loss adds, the inputs' gradients included. With CUDA: torch.cuda.max_memory_allocated
at 2 x 2,048 tokens. On CPU: the peak resident set (ru_maxrss) above the resident set once the inputs exist, at a
reduced batch, 1 x 512 tokens (the reference's float32 copies of 2 x 2,048 x 151,936 logits would not fit
beside other work here). Time: the median of --repeats runs after one untimed run. Targets: the chunked loss
peaks at <= 2 GiB above its inputs at 2 x 2,048 on CUDA, in <= 1.2x the reference's time.

The last line is a JSON object: memory_ratio and time_ratio (chunked over reference), peak_mb_reference,
peak_mb_chunked, ms_reference, ms_chunked; fused_memory_ratio and fused_time_ratio (fused over reference_head),
peak_mb_reference_head, peak_mb_fused, ms_reference_head, ms_fused; the losses of each (loss_*, the same inputs
give the same loss up to float32 rounding); device, dtype, batch, seq, vocab, hidden, k. `--smoke` runs vocabulary
4,096 and 64 tokens (tests/test_benchmarks.py): its figures say only that it runs.

Imports torch and cotdistill.trainers.losses only (no TRL, no datasets): it runs on a bare CUDA machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VARIANTS = ("reference", "chunked", "reference_head", "fused")
SMOKE = {"batch": 1, "seq": 64, "vocab": 4096, "hidden": 64, "k": 20, "repeats": 1}


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_inputs(variant: str, args: argparse.Namespace, device: str, dtype) -> dict:
    """The loss's inputs, made without a float32 copy of anything large (on CPU the peak resident set counts
    from the start of the process, so making the inputs must not peak above the loss)."""
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    b, length, vocab, k = args.batch, args.seq, args.vocab, args.k
    labels = torch.randint(0, vocab, (b, length), generator=g, device=device)
    labels[:, : length // 8] = -100  # the prompt
    teacher_ids = torch.randint(0, vocab, (b, length, k), generator=g, device=device)
    teacher = torch.log_softmax(torch.randn(b, length, k + 1, generator=g, device=device) * 2, dim=-1)
    teacher_logprobs = teacher[..., :k].sort(dim=-1, descending=True).values  # the top k; the rest is the tail
    teacher_mask = labels != -100
    inputs = {"targets": (labels, teacher_ids, teacher_logprobs, teacher_mask)}
    if variant in ("reference", "chunked"):
        logits = torch.empty(b, length, vocab, device=device, dtype=dtype)
        for row in logits.view(-1, vocab).split(64):
            row.copy_(torch.randn(row.shape, generator=g, device=device) * 3)
        inputs["logits"] = logits.requires_grad_()
    else:
        inputs["hidden"] = torch.randn(b, length, args.hidden, generator=g, device=device).to(dtype).requires_grad_()
        weight = torch.empty(vocab, args.hidden, device=device, dtype=dtype)
        for rows in weight.split(4096):
            rows.copy_(torch.randn(rows.shape, generator=g, device=device) * args.hidden ** -0.5 * 3)
        inputs["weight"] = weight.requires_grad_()
    return inputs


def step(variant: str, inputs: dict) -> float:
    """One forward and backward; the inputs' gradients are dropped after it. Returns the loss."""
    import torch.nn.functional as F

    from cotdistill.trainers.losses import kd_loss, kd_loss_fused, kd_loss_reference

    options = {"alpha": 0.5, "temperature": 1.0}
    if variant == "reference":
        loss, _ = kd_loss_reference(inputs["logits"], *inputs["targets"], **options)
    elif variant == "chunked":
        loss, _ = kd_loss(inputs["logits"], *inputs["targets"], **options)
    elif variant == "reference_head":
        loss, _ = kd_loss_reference(F.linear(inputs["hidden"], inputs["weight"]), *inputs["targets"], **options)
    else:
        loss, _ = kd_loss_fused(inputs["hidden"], inputs["weight"], *inputs["targets"], **options)
    loss.backward()
    for name in ("logits", "hidden", "weight"):
        if name in inputs:
            inputs[name].grad = None
    return loss.item()


def worker(variant: str, args: argparse.Namespace) -> dict:
    """One variant in this process: the peak above the inputs on the first run, then the median time."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16
    inputs = make_inputs(variant, args, device, dtype)
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = current_rss()
    loss = step(variant, inputs)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step(variant, inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"variant": variant, "peak_mb": round(peak / 2**20, 1), "ms": round(times[len(times) // 2] * 1000, 2),
            "loss": loss, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, help="sequences (default 2 with CUDA, 1 on CPU)")
    parser.add_argument("--seq", type=int, help="tokens per sequence (default 2048 with CUDA, 512 on CPU)")
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=1536, help="hidden size for the fused loss (Qwen2.5-1.5B's)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeats", type=int, help="timed runs (default 10 with CUDA, 3 on CPU)")
    parser.add_argument("--smoke", action="store_true", help="vocabulary 4,096, 64 tokens: says only that it runs")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    import torch

    cuda = torch.cuda.is_available()
    if args.smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)
    args.batch = args.batch or (2 if cuda else 1)
    args.seq = args.seq or (2048 if cuda else 512)
    args.repeats = args.repeats or (10 if cuda else 3)
    sizes = ["--batch", args.batch, "--seq", args.seq, "--vocab", args.vocab, "--hidden", args.hidden, "--k", args.k,
             "--repeats", args.repeats]
    where = "CUDA, torch.cuda.max_memory_allocated" if cuda else "CPU, peak RSS (ru_maxrss)"
    print(f"top-{args.k} KD, forward + backward, bf16: {args.batch} x {args.seq} tokens, vocabulary {args.vocab}, "
          f"hidden {args.hidden} (fused); {where} above the inputs; median of {args.repeats} runs", flush=True)
    if not cuda and not args.smoke:
        print("(CPU: a reduced batch; the goal is set for 2 x 2,048 on CUDA)", flush=True)
    results = {}
    for variant in VARIANTS:
        done = subprocess.run([sys.executable, __file__, "--worker", variant, *map(str, sizes)], cwd=REPO,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(f"  {variant:15s} peak {r['peak_mb']:9.1f} MB above the inputs   {r['ms']:9.2f} ms   loss {r['loss']:.6f}",
              flush=True)
    ref, chunked, ref_head, fused = (results[v] for v in VARIANTS)
    result = {
        "memory_ratio": round(chunked["peak_mb"] / ref["peak_mb"], 4),
        "time_ratio": round(chunked["ms"] / ref["ms"], 4),
        "peak_mb_reference": ref["peak_mb"], "peak_mb_chunked": chunked["peak_mb"],
        "ms_reference": ref["ms"], "ms_chunked": chunked["ms"],
        "fused_memory_ratio": round(fused["peak_mb"] / ref_head["peak_mb"], 4),
        "fused_time_ratio": round(fused["ms"] / ref_head["ms"], 4),
        "peak_mb_reference_head": ref_head["peak_mb"], "peak_mb_fused": fused["peak_mb"],
        "ms_reference_head": ref_head["ms"], "ms_fused": fused["ms"],
        "loss_reference": ref["loss"], "loss_chunked": chunked["loss"],
        "loss_reference_head": ref_head["loss"], "loss_fused": fused["loss"],
        "device": ref["device"], "dtype": "bfloat16", "batch": args.batch, "seq": args.seq, "vocab": args.vocab,
        "hidden": args.hidden, "k": args.k,
    }
    print(f"chunked over reference: memory {result['memory_ratio']:.3f}x, time {result['time_ratio']:.3f}x; "
          f"fused over reference_head: memory {result['fused_memory_ratio']:.3f}x, time {result['fused_time_ratio']:.3f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
