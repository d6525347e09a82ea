"""Does it distill? A student pruned from the teacher, trained by SFT and by KD, against the teacher, on CPU.

    .venv/bin/python benchmarks/prune_distill.py [--train-questions 64] [--test-questions 50] [--output runs]
    .venv/bin/python benchmarks/prune_distill.py --smoke     # every step at a tiny size, in a temporary folder

pipelines/prune_distill_smollm2_cpu.yaml, run twice on the same corpus:
  1. the KD run (run_name prune-distill-kd): SmolLM2-135M-Instruct samples rationales for GSM8K train questions
     with its top-20 logprobs; the filter; the student pruned from it to 15 of its 30 blocks; that student
     trained with train.loss kd; evaluate on held-out GSM8K test questions the corpus never saw: the teacher,
     the pruned student untrained (base_student) and the KD student;
  2. the SFT run (prune-distill-sft): the same generate, filter and prune outputs (copied: their fingerprints
     match, so they are reused, not redone), the student trained with train.loss sft, evaluated.
Then the mean KL(teacher || model) per token, full vocabulary, on the teacher's own sampled rationales for the
held-out questions (evaluate's teacher samples), every model given the same tokens: the student's prompt, then
the rationale. A smooth measure of how close each model has come to its teacher, which a 50-question accuracy
cannot resolve. One table; the last line is a JSON object keyed by teacher, pruned, sft and kd (and
kd_minus_sft_kl, the paired difference of their KL).

`--smoke` runs every step of both runs (generate, filter, prune, train, evaluate; then the KL) at a tiny size
(SMOKE and SMOKE_OVERRIDES below: 4 train questions x 2 samples, one training step, 2 test questions with K = 2,
2 KL rationales) in a temporary folder, removed after, unless --output names one (tests/test_benchmarks.py): its
figures say only that it runs. Generate keeps its 256 tokens: at 128 every rationale ends truncated, the filter
accepts none, and there is nothing to train on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cotdistill.stages import pipeline  # noqa: E402
from cotdistill.config.load import load_config  # noqa: E402
from cotdistill.stages.evaluate.metrics import bootstrap_ci  # noqa: E402
from cotdistill.core.shards import read_json  # noqa: E402

PIPELINE = REPO / "pipelines" / "prune_distill_smollm2_cpu.yaml"
SHARED = ("generate", "filter", "prune")  # what the SFT run takes from the KD run
# --smoke: the options' values, and the pipeline's settings it shrinks besides (the same stages and code paths).
SMOKE = {"train_questions": 4, "test_questions": 2, "kl_rationales": 2, "output": None}
SMOKE_OVERRIDES = ["generate.num_samples=2", "student.prune.calibration_samples=4",
                   "student.prune.calibration_max_tokens=128",
                   # One step, without the pipeline's 2 warm-up steps: at warm-up step 0 the learning rate is 0,
                   # and the trained students would be the pruned one unchanged.
                   "train.sft.max_steps=1", "train.sft.warmup_steps=0",
                   "evaluate.num_samples=2", "evaluate.max_tokens=32", "evaluate.bootstrap_resamples=100",
                   "evaluate.maj_draws=10"]


def run_stages(config, stages) -> float:
    started = time.perf_counter()
    for stage in stages:
        if stage.is_complete(config):
            logging.info("%s: %s up to date", config.run_name, stage.name)
            continue
        logging.info("%s: %s", config.run_name, stage.name)
        stage.run(config)
    return time.perf_counter() - started


def kl_to_teacher(models: dict[str, str], teacher: str, rationales: list[tuple[str, str]], prompt: str,
                  batch_size: int = 4) -> dict[str, list[float]]:
    """Per rationale, the mean over its tokens of KL(teacher || model), full vocabulary, every model fed the
    same tokens (the student's prompt in the chat template, then the rationale and end-of-sequence)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotdistill.core.prompts import PromptTemplate
    from cotdistill.teachers.base import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    template = PromptTemplate(prompt)
    examples = []
    for question, rationale in rationales:
        prompt_ids = render_prompt(tokenizer, template.render(question=question))[1]
        completion = tokenizer(rationale, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        examples.append((prompt_ids + completion, len(prompt_ids)))
    loaded = {name: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
              for name, path in {"teacher": teacher, **models}.items()}
    kl: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id or 0)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            scored = torch.zeros((len(batch), width), dtype=torch.bool)  # positions predicting a rationale token
            for row, (ids, prompt_len) in enumerate(batch):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                attention[row, :len(ids)] = 1
                scored[row, prompt_len - 1:len(ids) - 1] = True
            t = torch.log_softmax(loaded["teacher"](input_ids=input_ids, attention_mask=attention).logits, -1)
            for name in models:
                s = torch.log_softmax(loaded[name](input_ids=input_ids, attention_mask=attention).logits, -1)
                per_token = (t.exp() * (t - s)).sum(-1)
                for row in range(len(batch)):
                    kl[name].append(float(per_token[row][scored[row]].mean()))
    return kl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-questions", type=int, default=64)
    parser.add_argument("--test-questions", type=int, default=50)
    parser.add_argument("--kl-rationales", type=int, default=64, help="held-out teacher rationales for the KL")
    parser.add_argument("--output", default=str(REPO / "runs"))
    parser.add_argument("--smoke", action="store_true", help="every step at a tiny size, in a temporary folder "
                        "unless --output is given; explicit options still apply")
    if parser.parse_known_args()[0].smoke:
        parser.set_defaults(**SMOKE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    temporary = args.output is None  # --smoke without --output: never into the repository
    output = Path(tempfile.mkdtemp(prefix="prune-distill-bench-")) if temporary else Path(args.output)
    try:
        run_benchmark(args, output)
    finally:
        if temporary:
            shutil.rmtree(output, ignore_errors=True)


def run_benchmark(args: argparse.Namespace, output: Path) -> None:
    common = [f"output_dir={output}", f"data.limit={args.train_questions}",
              f"evaluate.data.limit={args.test_questions}", *(SMOKE_OVERRIDES if args.smoke else [])]
    kd = load_config(PIPELINE, [*common, "run_name=prune-distill-kd", "train.loss=kd"])
    sft = load_config(PIPELINE, [*common, "run_name=prune-distill-sft", "train.loss=sft", "evaluate.models=[student]"])
    os.chdir(REPO)  # the pipeline's data paths are relative to the repository
    started = time.perf_counter()
    kd_seconds = run_stages(kd, pipeline(kd))
    for stage in SHARED:
        if not sft.paths.stage(stage).exists():
            shutil.copytree(kd.paths.stage(stage), sft.paths.stage(stage))
    sft_seconds = run_stages(sft, pipeline(sft))

    kd_metrics = read_json(kd.paths.metrics)["models"]
    sft_metrics = read_json(sft.paths.metrics)["models"]
    rows = {"teacher": kd_metrics["teacher"], "pruned": kd_metrics["base_student"], "sft": sft_metrics["student"],
            "kd": kd_metrics["student"]}

    import pyarrow.parquet as pq

    from cotdistill.models.resolve import resolve_model

    held_out = pq.read_table(kd.paths.eval_rows("teacher"), columns=["question", "samples"]).to_pylist()
    rationales = [(r["question"], s) for r in held_out for s in (r["samples"] or []) if s.strip()]
    rationales = rationales[:args.kl_rationales]
    kl_started = time.perf_counter()
    kl = kl_to_teacher({"pruned": str(kd.paths.pruned_model), "sft": str(sft.paths.trained_model),
                        "kd": str(kd.paths.trained_model)}, resolve_model(kd.teacher.model),
                       rationales, kd.train.prompt)
    kl["teacher"] = [0.0] * len(rationales)
    kl_seconds = time.perf_counter() - kl_started

    k = kd.evaluate.num_samples
    pct = lambda v: f"{100 * v:5.1f}"  # noqa: E731
    interval = lambda ci: f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""  # noqa: E731
    print(f"\n{len(held_out)} held-out GSM8K test questions; KL on {len(rationales)} held-out teacher rationales")
    print(f"{'model':8} {'params':>9} {'greedy %':>20} {'maj@1 %':>20} {f'maj@{k} %':>20} {'tok/s':>7} "
          f"{'KL to teacher':>22}")
    result = {}
    for name, m in rows.items():
        ci = bootstrap_ci(kl[name]) if name != "teacher" else (0.0, 0.0)
        mean_kl = sum(kl[name]) / len(kl[name]) if kl[name] else None
        print(f"{name:8} {m['parameters'] or 0:>9,} {pct(m['greedy_accuracy'] or 0)} "
              f"{interval(m['greedy_accuracy_ci']):>14} {pct(m['maj@1'])} {interval(m['maj_at_1_ci']):>14} "
              f"{pct(m[f'maj@{k}'])} {interval(m['maj_at_K_ci']):>14} {m.get('tokens_per_s') or 0:>7.0f} "
              f"{mean_kl:8.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
        result[name] = {"greedy": m["greedy_accuracy"], "greedy_ci": m["greedy_accuracy_ci"], "maj_at_1": m["maj@1"],
                        "maj_at_K": m[f"maj@{k}"], "maj_at_K_ci": m["maj_at_K_ci"], "K": k,
                        "parameters": m["parameters"], "tokens_per_s": m.get("tokens_per_s"),
                        "kl_to_teacher": round(mean_kl, 4) if mean_kl is not None else None,
                        "kl_to_teacher_ci": [round(ci[0], 4), round(ci[1], 4)]}
    # Paired over the same rationales: tighter than comparing the two intervals above.
    diff = [a - b for a, b in zip(kl["kd"], kl["sft"])]
    diff_ci = bootstrap_ci(diff)
    print(f"KL of kd minus KL of sft, paired over the rationales: {sum(diff) / len(diff):.4f} "
          f"[{diff_ci[0]:.4f}, {diff_ci[1]:.4f}]")
    result["kd_minus_sft_kl"] = {"mean": round(sum(diff) / len(diff), 4),
                                 "ci": [round(diff_ci[0], 4), round(diff_ci[1], 4)]}
    train_stats = {name: read_json(c.paths.train / "stats.json") for name, c in (("sft", sft), ("kd", kd))}
    for name, stats in train_stats.items():
        result[name].update(train_examples=stats["examples"], train_steps=stats["global_steps"])
    result["seconds"] = {"kd_run": round(kd_seconds, 1), "sft_run": round(sft_seconds, 1),
                         "kl": round(kl_seconds, 1), "total": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
