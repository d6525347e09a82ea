"""The cost of self-consistency curves: one pass of K=16 samples against one pass per k.

    .venv/bin/python benchmarks/self_consistency_cost.py [--questions 16] [--max-tokens 96]
    .venv/bin/python benchmarks/self_consistency_cost.py --smoke     # 2 questions, 16 tokens: the same steps

On one vLLM engine (SmolLM2-135M-Instruct) and the same test questions, it times
  - this project's evaluate core: one request of 16 samples per question, then maj@k for k = 1, 2, 4, 8, 16
    as expected values over k-subsets (cotdistill.stages.evaluate.metrics), and
  - the way tools that repeat the request per k do it: one pass of k samples per question for each k
    (1 + 2 + 4 + 8 + 16 = 31 samples per question), voting over each pass.
Each pass starts with an empty prefix cache. The last line is a JSON object with both times and their ratio.
`--smoke` runs the same steps on 2 questions with 16 tokens a sample (tests/test_benchmarks.py): its figures say
only that it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cotdistill.verify.answers import get_answer_format  # noqa: E402
from cotdistill.config.load import load_config  # noqa: E402
from cotdistill.stages.evaluate.scoring import evaluate_model, summarize_model  # noqa: E402
from cotdistill.stages.evaluate.metrics import majority_vote  # noqa: E402
from cotdistill.core.prompts import PromptTemplate  # noqa: E402
from cotdistill.questions.sources import QuestionSource  # noqa: E402
from cotdistill.teachers import build_teacher
from cotdistill.teachers.base import render_prompt  # noqa: E402

KS = (1, 2, 4, 8, 16)
SMOKE = {"questions": 2, "max_tokens": 16}  # --smoke


def per_k_passes(llm, questions, template, config) -> tuple[dict[int, float], float, int]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    ev = config.evaluate
    fmt = get_answer_format(config.filter.answer_format)
    tokenizer = llm.get_tokenizer()
    prompts = [TokensPrompt(prompt_token_ids=render_prompt(tokenizer, template.render(q.question))[1])
               for q in questions]
    accuracy, seconds, tokens = {}, 0.0, 0
    for k in KS:
        llm.reset_prefix_cache()
        started = time.perf_counter()
        outputs = llm.generate(prompts, SamplingParams(n=k, temperature=ev.temperature, top_p=ev.top_p,
                                                       max_tokens=ev.max_tokens), use_tqdm=False)
        correct = []
        for q, out in zip(questions, outputs):
            voted, _ = majority_vote([fmt.extract(c.text, q.choices).answer for c in out.outputs])
            correct.append(fmt.is_correct(voted, q.gold_answer))
        seconds += time.perf_counter() - started
        tokens += sum(len(c.token_ids) for o in outputs for c in o.outputs)
        accuracy[k] = sum(correct) / len(correct)
    return accuracy, seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--smoke", action="store_true", help="a tiny size (2 questions, 16 tokens): the same steps, "
                        "in seconds; explicit options still apply")
    if parser.parse_known_args()[0].smoke:
        parser.set_defaults(**SMOKE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = load_config(REPO / "pipelines" / "demo.yaml", [
        f"evaluate.data.limit={args.questions}", f"evaluate.max_tokens={args.max_tokens}",
        f"evaluate.num_samples={max(KS)}", "evaluate.greedy=false", "evaluate.temperature=0.7"])
    questions = list(QuestionSource(config.evaluate.data).questions())
    template = PromptTemplate(config.train.prompt)  # the student prompt, as for base_student
    # evaluate takes a teacher (any backend); the per-k passes drive the same local engine's vllm.LLM directly.
    teacher = build_teacher(config.student, config.seed)
    llm = teacher.llm
    try:
        llm.reset_prefix_cache()
        started = time.perf_counter()
        rows, cost = evaluate_model(teacher, questions, template, config, "base_student")
        metrics = summarize_model(rows, cost, config)
        one_pass_s = time.perf_counter() - started
        curve = {k: metrics["maj_at_k"][k - 1] for k in KS}

        per_k, per_k_s, per_k_tokens = per_k_passes(llm, questions, template, config)
    finally:
        teacher.close()
    print(f"one pass of {max(KS)} samples: {one_pass_s:.1f} s, {cost['sampled_tokens']} tokens; "
          f"maj@k {', '.join(f'{k}: {v:.3f}' for k, v in curve.items())}")
    print(f"one pass per k ({sum(KS)} samples per question): {per_k_s:.1f} s, {per_k_tokens} tokens; "
          f"maj@k {', '.join(f'{k}: {v:.3f}' for k, v in per_k.items())}")
    print(json.dumps({"one_pass_s": round(one_pass_s, 2), "per_k_passes_s": round(per_k_s, 2),
                      "ratio": round(per_k_s / one_pass_s, 3), "questions": len(questions), "ks": list(KS),
                      "one_pass_tokens": cost["sampled_tokens"], "per_k_tokens": per_k_tokens}))


if __name__ == "__main__":
    main()
