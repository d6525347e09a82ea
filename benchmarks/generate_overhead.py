"""How much throughput the generate stage loses to its own work (prompts, journals, Parquet, stats) and to
its shard boundaries.

    .venv/bin/python benchmarks/generate_overhead.py [--questions 48] [--num-samples 8] [--max-tokens 96]
    .venv/bin/python benchmarks/generate_overhead.py --smoke     # 4 questions, 2 samples, 16 tokens, 1 round

On one vLLM engine (SmolLM2-135M-Instruct, the demo's teacher) and the same prompts and sampling parameters,
it times raw `LLM.generate` over all the prompts at once, the generate stage in one shard, and the generate stage
in `--shards` shards (8), in alternating rounds so drift on a noisy machine hits all three, each starting with an
empty prefix cache. Throughput is generated tokens over wall time. By default top_k=1, so all three generate the
same tokens; `--top-k -1` measures free sampling instead, where the luck of the draw moves tokens/s by about 10%.
Prints the tokens/s of each and, last, a JSON line with raw_tokens_per_s, stage_tokens_per_s, ratio (target
>= 0.95), multi_shard_tokens_per_s and multi_shard_ratio (target >= 0.97: the engine is kept fed across shard
boundaries, so many shards cost what one does).
`--smoke` runs the same steps (raw, one shard, 2 shards; one round) on 4 questions, 2 samples of 16 tokens
(tests/test_benchmarks.py): its figures say only that it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cotdistill.stages import generate  # noqa: E402
from cotdistill.config.load import load_config  # noqa: E402
from cotdistill.core.prompts import PromptTemplate  # noqa: E402
from cotdistill.core.shards import read_json  # noqa: E402
from cotdistill.questions.sources import QuestionSource  # noqa: E402
from cotdistill.teachers.base import render_prompt  # noqa: E402
from cotdistill.teachers.vllm_local import VLLMTeacher, build_llm  # noqa: E402

SMOKE = {"questions": 4, "num_samples": 2, "max_tokens": 16, "rounds": 1, "shards": 2}  # --smoke


def raw_generate(llm, config) -> tuple[int, float]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    gen = config.generate
    template = PromptTemplate(gen.prompt, gen.examples)
    tokenizer = llm.get_tokenizer()
    prompts = [TokensPrompt(prompt_token_ids=render_prompt(tokenizer, template.render(q.question))[1])
               for q in QuestionSource(config.data).questions()]
    params = SamplingParams(n=gen.num_samples, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k,
                            max_tokens=gen.max_tokens, stop=gen.stop or None)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    return sum(len(c.token_ids) for o in outputs for c in o.outputs), seconds


def stage_generate(llm, config) -> tuple[int, float]:
    started = time.perf_counter()
    stats = generate.STAGE.run(config, teacher=VLLMTeacher(llm, config.teacher.model))
    seconds = time.perf_counter() - started
    return stats["completion_tokens"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=8)
    # top_k=1 by default: every sample is the argmax, so both sides generate exactly the same tokens and the
    # ratio measures the stage's overhead, not the luck of sampling (which moves tokens/s by about 10% here).
    # vLLM refuses temperature 0 with n > 1, hence sampling at temperature 1 with top_k 1.
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="a tiny size (4 questions, 2 samples, 16 tokens, "
                        "1 round, 2 shards): the same steps, in seconds; explicit options still apply")
    if parser.parse_known_args()[0].smoke:
        parser.set_defaults(**SMOKE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"output_dir={tmp}", f"data.limit={args.questions}", f"generate.num_samples={args.num_samples}",
                     f"generate.temperature={args.temperature}", f"generate.top_k={args.top_k}",
                     f"generate.max_tokens={args.max_tokens}", f"generate.questions_per_shard={args.questions}"]
        config = load_config(REPO / "pipelines" / "demo.yaml", overrides)
        llm = build_llm(config.teacher, config.seed)
        raw_generate(llm, load_config(REPO / "pipelines" / "demo.yaml", overrides + ["data.limit=4"]))  # warm-up
        totals = {"raw": [0, 0.0], "stage": [0, 0.0], "multi": [0, 0.0]}
        per_shard = -(-args.questions // args.shards)
        for round_index in range(args.rounds):
            for name, fn, extra in (("raw", raw_generate, []), ("stage", stage_generate, []),
                                    ("multi", stage_generate, [f"generate.questions_per_shard={per_shard}"])):
                run_config = load_config(REPO / "pipelines" / "demo.yaml",
                                         overrides + [f"run_name=bench-{name}-{round_index}", *extra])
                llm.reset_prefix_cache()  # both start cold: the prompts are the same, the cache would favour the second
                tokens, seconds = fn(llm, run_config)
                totals[name][0] += tokens
                totals[name][1] += seconds
                print(f"round {round_index} {name:>5}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.1f} tokens/s")
        for name, shards in (("stage", 1), ("multi", args.shards)):
            stats = read_json(Path(tmp) / f"bench-{name}-0" / "generate" / "stats.json")
            assert stats["rationales"] == args.questions * args.num_samples and stats["shards"] == shards

    raw_tps, stage_tps, multi_tps = (totals[k][0] / totals[k][1] for k in ("raw", "stage", "multi"))
    print(f"raw LLM.generate: {raw_tps:.1f} tokens/s; generate stage, 1 shard: {stage_tps:.1f} tokens/s; "
          f"{args.shards} shards: {multi_tps:.1f} tokens/s")
    print(json.dumps({"raw_tokens_per_s": round(raw_tps, 2), "stage_tokens_per_s": round(stage_tps, 2),
                      "ratio": round(stage_tps / raw_tps, 4), "multi_shard_tokens_per_s": round(multi_tps, 2),
                      "multi_shard_ratio": round(multi_tps / raw_tps, 4), "shards": args.shards,
                      "multi_tokens": totals["multi"][0], "questions": args.questions,
                      "num_samples": args.num_samples, "max_tokens": args.max_tokens, "rounds": args.rounds,
                      "temperature": args.temperature, "top_k": args.top_k, "raw_tokens": totals["raw"][0],
                      "stage_tokens": totals["stage"][0]}))


if __name__ == "__main__":
    main()
