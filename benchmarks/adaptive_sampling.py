"""Adaptive sampling against fixed N in generate, and adaptive self-consistency against maj@K in evaluate.

    .venv/bin/python benchmarks/adaptive_sampling.py [--questions 40] [--num-samples 16] [--round-size 1]
        [--target-correct 1] [--max-tokens 64] [--eval-questions 400] [--eval-seed 7] [--eval-k 48]
        [--eval-temperature 0.3] [--eval-rule beta] [--eval-confidence 0.95] [--output DIR]
    .venv/bin/python benchmarks/adaptive_sampling.py --smoke     # 4 questions, N = 4, 32 tokens; evaluate 8 x 4

About 11 minutes on this project's 2-core machines, 10 of them evaluate's 400 x 48 samples; never beside another
heavy run (two CPU engines at once slow each other several-fold). Generate uses per-request seeds; evaluate sends
none, and repeats because the engine is seeded and the requests go in a fixed order.

One vLLM engine (the demo's teacher, SmolLM2-135M-Instruct, few-shot on the project's arithmetic problems in
data/arithmetic/train.jsonl, temperature 1.0) serves every run:

  generate  fixed N (one request of n=N per question) against generate.adaptive with the same N cap and
            target_correct T (rounds of round_size; a question closes once T of its rationales reach the gold),
            with generate.rationalize on (STaR: questions ending with no correct rationale asked again with the
            gold as a hint). Both are filtered with max_per_question = T. Reported: the teacher's completion
            tokens (token_ratio = adaptive / fixed, rationalization apart), accepted rationales per question, and
            questions with at least one accepted rationale: fixed, adaptive (its ordinary rows), and adaptive with
            its rationalized rows. The ordinary rows' verdicts do not depend on the rationalized ones (the pass rate
            leaves them out, and a rationalized question has no ordinary survivor to share a cap or a duplicate
            check with), so one adaptive run gives both counts.
  evaluate  the teacher on 400 fresh arithmetic problems (questions/arithmetic.fresh_problems with --eval-seed, none of them
            in data/ nor among the --sweep-seed problems below): one request of K = 48 samples per question at temperature 0.3, scored as maj@K and as
            adaptive self-consistency (evaluate.adaptive: the stopping rule walks the K drawn samples in order, one
            at a time, exactly as drawing them one by one would), so both come from the same samples and the gap is
            paired. Reported: eval_sample_ratio (samples used / K) and eval_accuracy_gap (adaptive accuracy - maj@K,
            points) with its 95% paired bootstrap interval over questions, as evaluate's metrics.json has them.
            The setting (Adaptive-Consistency's Beta rule at its paper's threshold 0.95, K = 48, temperature 0.3)
            was fixed beforehand in a sweep on 400 other fresh problems (--sweep-seed 2026): at temperature 0.5 this
            135M model's answers are spread so thin that 117 of them never settled under Beta 0.95 within K = 32,
            and no rule used <= 0.4 of the samples within a point of maj@K; at 0.3 with K = 48, Beta 0.95 used
            0.312 of them, gap -0.25 points [-1.25, +0.75]. Other settings on the same samples follow, for
            information.

Why "the same or more accepted rationales for every question fixed N served" holds: both runs use per-request
seeds (generate.seed_per_request), so a question's sample i is the same text in both, whatever round or batch it
was drawn in (the script counts the samples that differ: 0 expected), and adaptive's samples are fixed N's first
ones. A question adaptive runs to the cap has exactly fixed N's samples, so the filter keeps the same ones. A
question it closes by target has T rationales reaching the gold, and with max_per_question = T it keeps T >= what
fixed N keeps, unless the filter drops one of them on other grounds (degenerate, too long, a duplicate): the script
counts the questions where adaptive kept fewer, and how many of them it closed by target before the cap.

The last line is one JSON object: token_ratio, questions_served_fixed, questions_served_adaptive,
questions_served_rationalized, eval_sample_ratio, eval_accuracy_gap, adaptive_gap_ci and the settings.
`--smoke` runs the same steps on 4 questions with N = 4, rationalization of 2 samples, 32 tokens a sample, and
evaluate on 8 fresh problems with K = 4 (tests/test_benchmarks.py), in a temporary folder unless --output names
one: its figures say only that it runs.
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
from collections import Counter
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cotdistill.stages import filter as filter_stage  # noqa: E402
from cotdistill.stages import generate  # noqa: E402
from cotdistill.config.sections import AdaptiveEvalConfig
from cotdistill.config.load import load_config  # noqa: E402
from cotdistill.questions.arithmetic import fresh_problems  # noqa: E402
from cotdistill.stages.evaluate.scoring import adaptive_metrics, adaptive_stop, evaluate_model, summarize_model  # noqa: E402
from cotdistill.stages.evaluate.metrics import bootstrap_ci, expected_maj_at_k, question_seed  # noqa: E402
from cotdistill.core.prompts import PromptTemplate  # noqa: E402
from cotdistill.core.shards import read_shards  # noqa: E402
from cotdistill.questions.sources import QuestionSource  # noqa: E402
from cotdistill.teachers import build_teacher  # noqa: E402


SMOKE = {"questions": 4, "num_samples": 4, "rationalize_samples": 2, "max_tokens": 32, "eval_questions": 8,
         "eval_k": 4}  # --smoke


def accepted_per_question(run_dir: Path) -> tuple[Counter, Counter, set[str]]:
    """Accepted rationales per question: ordinary ones, rationalized ones; and every question id generated."""
    accepted = read_shards(run_dir / "filter" / "accepted").to_pylist()
    ordinary = Counter(r["question_id"] for r in accepted if not r["rationalized"])
    hinted = Counter(r["question_id"] for r in accepted if r["rationalized"])
    questions = set(read_shards(run_dir / "generate" / "samples").column("question_id").to_pylist())
    return ordinary, hinted, questions


def run_generate_and_filter(config, teacher) -> tuple[dict, dict, float]:
    started = time.perf_counter()
    gen_stats = generate.STAGE.run(config, teacher=teacher)
    seconds = time.perf_counter() - started
    return gen_stats, filter_stage.STAGE.run(config), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=40, help="generate: arithmetic train questions")
    parser.add_argument("--num-samples", type=int, default=16, help="N, fixed and the adaptive cap")
    parser.add_argument("--round-size", type=int, default=1)
    parser.add_argument("--target-correct", type=int, default=1)
    parser.add_argument("--rationalize-samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--eval-questions", type=int, default=400, help="fresh arithmetic problems")
    parser.add_argument("--eval-seed", type=int, default=7, help="of those problems")
    parser.add_argument("--sweep-seed", type=int, default=2026, help="of the problems the setting was chosen on, "
                        "left out of the evaluated ones")
    parser.add_argument("--eval-k", type=int, default=48)
    parser.add_argument("--eval-temperature", type=float, default=0.3)
    parser.add_argument("--eval-rule", default="beta")
    parser.add_argument("--eval-confidence", type=float, default=0.95)
    parser.add_argument("--eval-window", type=int, default=4)
    parser.add_argument("--output", default=None, help="runs folder (default: a temporary one, removed after)")
    parser.add_argument("--smoke", action="store_true", help="a tiny size (4 questions, N = 4, 32 tokens; evaluate "
                        "8 x K = 4): the same steps, in seconds; explicit options still apply")
    if parser.parse_known_args()[0].smoke:
        parser.set_defaults(**SMOKE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    output = Path(args.output or tempfile.mkdtemp(prefix="adaptive-bench-"))
    T = args.target_correct
    common = [f"output_dir={output}", f"data.limit={args.questions}", f"generate.num_samples={args.num_samples}",
              f"generate.max_tokens={args.max_tokens}", f"filter.max_per_question={T}", "filter.num_workers=1",
              "generate.questions_per_shard=16", "generate.seed_per_request=true"]
    fixed = load_config(REPO / "pipelines" / "demo.yaml", [*common, "run_name=fixed"])
    adaptive = load_config(REPO / "pipelines" / "demo.yaml", [
        *common, "run_name=adaptive", f"generate.adaptive.round_size={args.round_size}",
        f"generate.adaptive.target_correct={T}", "generate.rationalize=true",
        f"generate.rationalize_samples={args.rationalize_samples}"])
    started = time.perf_counter()
    teacher = build_teacher(fixed.teacher, fixed.seed)
    try:
        print(f"engine ready in {time.perf_counter() - started:.0f} s", flush=True)
        fixed_gen, fixed_filter, fixed_s = run_generate_and_filter(fixed, teacher)
        print(f"fixed N={args.num_samples}: {fixed_gen['rationales']} rationales, "
              f"{fixed_gen['completion_tokens']:,} completion tokens, {fixed_s:.0f} s; "
              f"{fixed_filter['accepted']} accepted", flush=True)
        ad_gen, ad_filter, ad_s = run_generate_and_filter(adaptive, teacher)
        hinted_tokens = ad_gen["rationalized"]["completion_tokens"]
        ad_tokens = ad_gen["completion_tokens"] - hinted_tokens
        print(f"adaptive b={args.round_size}, T={T}, cap {args.num_samples}: "
              f"{ad_gen['rationales'] - ad_gen['rationalized']['rationales']} rationales, {ad_tokens:,} completion "
              f"tokens (+{hinted_tokens:,} for {ad_gen['rationalized']['rationales']} rationalized), {ad_s:.0f} s "
              f"with rationalization; samples/question {ad_gen['adaptive']['samples_per_question_mean']}, "
              f"rounds {ad_gen['adaptive']['rounds_mean']}, closed {ad_gen['adaptive']['closed']}", flush=True)

        fixed_ok, _, questions = accepted_per_question(fixed.run_dir)
        ad_ok, hinted_ok, _ = accepted_per_question(adaptive.run_dir)
        served_fixed = {q for q in questions if fixed_ok[q]}
        served_adaptive = {q for q in questions if ad_ok[q]}
        served_rationalized = {q for q in questions if ad_ok[q] or hinted_ok[q]}
        fewer = sorted(q for q in served_fixed if ad_ok[q] < fixed_ok[q])
        drawn = Counter(r["question_id"] for r in read_shards(adaptive.run_dir / "generate" / "samples").to_pylist()
                        if not r["rationalized"])
        closed_early = {q for q in questions if drawn[q] < args.num_samples}  # closed by target before the cap
        fixed_texts = {(r["question_id"], r["sample_index"]): r["rationale"]
                       for r in read_shards(fixed.run_dir / "generate" / "samples").to_pylist()}
        differing = sum(fixed_texts.get((r["question_id"], r["sample_index"])) != r["rationale"]
                        for r in read_shards(adaptive.run_dir / "generate" / "samples").to_pylist()
                        if not r["rationalized"])
        print(f"adaptive samples that differ from fixed N's sample of the same index: {differing} "
              f"(per-request seeds: 0 expected)")
        print(f"questions with >= 1 accepted rationale: fixed {len(served_fixed)}, adaptive {len(served_adaptive)}, "
              f"adaptive + rationalized {len(served_rationalized)} (of {len(questions)}); accepted rationales "
              f"{sum(fixed_ok.values())} fixed, {sum(ad_ok.values())} adaptive, {sum(hinted_ok.values())} rationalized "
              f"({ad_filter['rejected']['quotes_hint']} dropped as quotes_hint)")
        print(f"questions fixed N served where adaptive kept fewer: {len(fewer)} "
              f"({sum(q in closed_early for q in fewer)} of them closed by target before the cap, where the filter "
              f"dropped a rationale reaching the gold; the others ran to the cap)")
        token_ratio = ad_tokens / fixed_gen["completion_tokens"]
        print(f"token_ratio {token_ratio:.3f} (with rationalization "
              f"{(ad_tokens + hinted_tokens) / fixed_gen['completion_tokens']:.3f})", flush=True)

        # --- evaluate: adaptive self-consistency against maj@K, on the same K samples per question ---------------
        exclude = {json.loads(line)["question"] for name in ("arithmetic/train.jsonl", "arithmetic/test.jsonl",
                                                              "fewshot/arithmetic.jsonl")
                   for line in (REPO / "data" / name).read_text().splitlines()}
        # Not the problems the setting was chosen on either (--sweep-seed): the figures are on unseen ones.
        exclude |= {p["question"] for p in fresh_problems(args.eval_questions, args.sweep_seed, exclude)}
        eval_path = output / "eval_questions.jsonl"
        eval_path.write_text("".join(json.dumps(p) + "\n" for p in fresh_problems(args.eval_questions,
                                                                                  args.eval_seed, exclude)))
        config = load_config(REPO / "pipelines" / "demo.yaml", [
            f"output_dir={output}", "run_name=eval", f"evaluate.data.path={eval_path}", "evaluate.data.limit=null",
            f"evaluate.num_samples={args.eval_k}", "evaluate.greedy=false",
            f"evaluate.temperature={args.eval_temperature}", f"evaluate.max_tokens={args.max_tokens}",
            "evaluate.bootstrap_resamples=2000", f"evaluate.adaptive.rule={args.eval_rule}",
            f"evaluate.adaptive.confidence={args.eval_confidence}", f"evaluate.adaptive.window={args.eval_window}",
            "evaluate.adaptive.round_size=1"])
        questions_eval = list(QuestionSource(config.evaluate.data).questions())
        template = PromptTemplate(config.generate.prompt, config.generate.examples)  # the teacher's own prompt
        started = time.perf_counter()
        rows, cost = evaluate_model(teacher, questions_eval, template, config, "teacher")
        metrics = summarize_model(rows, cost, config)
        K = metrics["k"]
        setting = f"{args.eval_rule} " + (f"confidence {args.eval_confidence}" if args.eval_rule == "beta"
                                          else f"window {args.eval_window}")
        eval_ratio, eval_gap, gap_ci = (metrics["adaptive_sample_ratio"], metrics["adaptive_gap_to_maj_at_K"],
                                        metrics["adaptive_gap_ci"])
        print(f"evaluate: {len(rows)} fresh questions x K={K} at temperature {args.eval_temperature}, "
              f"{cost['sampled_tokens']:,} tokens in {time.perf_counter() - started:.0f} s; maj@{K} "
              f"{metrics[f'maj@{K}']:.4f}; adaptive ({setting}) {metrics['adaptive_accuracy']:.4f} with "
              f"{metrics['adaptive_samples_mean']:.2f} samples a question (ratio {eval_ratio:.3f}); gap "
              f"{100 * eval_gap:+.2f} points, 95% paired bootstrap CI [{100 * gap_ci[0]:+.2f}, {100 * gap_ci[1]:+.2f}]")

        # For information, other settings on the same samples (the setting above was fixed beforehand, on other
        # questions: see the docstring).
        from cotdistill.verify.answers import get_answer_format

        fmt = get_answer_format(config.filter.answer_format)
        settings = [AdaptiveEvalConfig(rule="beta", confidence=c, window=4, round_size=1)
                    for c in (0.99, 0.95, 0.9, 0.8)]
        settings += [AdaptiveEvalConfig(rule="window", confidence=0.95, window=w, round_size=1) for w in (2, 3, 4)]
        maj = [expected_maj_at_k(r["sample_answers"], r["sample_correct"], K,  # the same for every setting
                                 seed=question_seed(config.seed, r["question_id"], K)) for r in rows]
        print(f"other settings on the same samples:  samples/K  gap to maj@{K} (points, 95% CI)")
        for other in settings:
            scored = []
            for r in rows:  # the columns score_row writes for evaluate.adaptive, under this setting
                used, answer = adaptive_stop(r["sample_answers"], other)
                scored.append({**r, "adaptive_samples": used,
                               "adaptive_correct": fmt.is_correct(answer, r["gold_answer"])})
            m = adaptive_metrics(scored, maj, K, lambda v: bootstrap_ci(v, seed=config.seed, resamples=2000))
            name = f"beta {other.confidence}" if other.rule == "beta" else f"window {other.window}"
            print(f"  {name:<34} {m['adaptive_sample_ratio']:9.3f}  {100 * m['adaptive_gap_to_maj_at_K']:+.2f} "
                  f"[{100 * m['adaptive_gap_ci'][0]:+.2f}, {100 * m['adaptive_gap_ci'][1]:+.2f}]")
    finally:
        teacher.close()
        if args.output is None:
            shutil.rmtree(output, ignore_errors=True)

    print(json.dumps({
        "token_ratio": round(token_ratio, 4),
        "token_ratio_with_rationalization": round((ad_tokens + hinted_tokens) / fixed_gen["completion_tokens"], 4),
        "questions": len(questions),
        "questions_served_fixed": len(served_fixed),
        "questions_served_adaptive": len(served_adaptive),
        "questions_served_rationalized": len(served_rationalized),
        "served_by_fixed_with_fewer_accepted_adaptive": len(fewer),
        "adaptive_samples_differing_from_fixed": differing,
        "fixed_tokens": fixed_gen["completion_tokens"], "adaptive_tokens": ad_tokens,
        "rationalization_tokens": hinted_tokens,
        "eval_questions": len(rows), "eval_k": K, "eval_temperature": args.eval_temperature,
        "eval_setting": setting,
        "eval_sample_ratio": round(eval_ratio, 4),
        "eval_accuracy_gap": round(100 * eval_gap, 2),
        "adaptive_gap_ci": [round(100 * v, 2) for v in gap_ci],
        "eval_maj_at_K": round(metrics[f"maj@{K}"], 4),
        "eval_adaptive_accuracy": round(metrics["adaptive_accuracy"], 4),
        "settings": {"num_samples": args.num_samples, "round_size": args.round_size, "target_correct": T,
                     "rationalize_samples": args.rationalize_samples},
    }))


if __name__ == "__main__":
    main()
