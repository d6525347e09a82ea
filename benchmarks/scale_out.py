"""How the ray teacher backend scales: 2 replicas against 1 on this machine, same prompts, same sampling.

    .venv/bin/python benchmarks/scale_out.py [--questions 48] [--num-samples 4] [--max-tokens 128] [--rounds 2]
    .venv/bin/python benchmarks/scale_out.py --smoke     # 4 questions, 2 samples, 16 tokens, 1 round

Both pools run SmolLM2-135M-Instruct (the demo's teacher, converted once into ~/.cache/cotdistill/models) with the
demo's CPU engine arguments, one core per replica (`ray.num_cpus: 1`), on one local Ray. The questions are the
first GSM8K test questions, rendered with math_zero_shot_cot.jinja; each engine is given the same load at a time
(--chunks-per-actor chunks of --chunk-size questions). Only generation is timed: both pools are up
and every actor has run one tiny request before the clock starts. The pools take turns, round after round, so
drift on a noisy machine hits both. Throughput is generated tokens over wall time. By default top_k=1, so both
pools generate the same tokens (see generate_overhead.py: the luck of sampling moves tokens/s by about 10%).
Prints the tokens/s of each and their ratio and, last, a JSON line with replicas_2_over_1 (target: >= 1.7).
`--smoke` runs the same steps (both pools, the same 3 actors) on 4 questions, 2 samples of 16 tokens, one round,
chunks of 1 question (tests/test_benchmarks.py): its figures say only that it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cotdistill.config.sections import ModelConfig
from cotdistill.teachers.ray_pool import RayConfig  # noqa: E402
from cotdistill.teachers.base import Sampling, TeacherRequest  # noqa: E402
from cotdistill.teachers.ray_pool import RayPoolTeacher  # noqa: E402
from tests.teacher_requests import zero_shot_requests  # noqa: E402

GSM8K_TEST = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
CPU_ENGINE = {"dtype": "float32", "max_model_len": 1024, "enforce_eager": True,
              "kv_cache_memory_bytes": 1024 ** 3}  # pipelines/demo.yaml's cpu_engine
SMOKE = {"questions": 4, "num_samples": 2, "max_tokens": 16, "rounds": 1, "chunk_size": 1,
         "chunks_per_actor": 1}  # --smoke


def make_requests(tokenizer, args) -> list[TeacherRequest]:
    with open(GSM8K_TEST) as f:
        questions = [json.loads(line)["question"] for line, _ in zip(f, range(args.questions))]
    return zero_shot_requests(tokenizer, questions, n=args.num_samples, temperature=args.temperature,
                              top_k=args.top_k, max_tokens=args.max_tokens)


def timed_generate(pool: RayPoolTeacher, requests: list[TeacherRequest]) -> tuple[int, float, dict[str, list[int]]]:
    started = time.perf_counter()
    results = list(pool.generate(requests))
    seconds = time.perf_counter() - started
    assert sorted(f.key for f in results) == sorted(r.key for r in requests) and not any(f.error for f in results)
    lengths = {f.key: [c.completion_tokens for c in f.completions] for f in results}
    return sum(sum(v) for v in lengths.values()), seconds, lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=1)  # vLLM refuses temperature 0 with n > 1
    parser.add_argument("--rounds", type=int, default=2)
    # 48 questions in chunks of 8 make 6 chunks: 3 on each of 2 replicas at once; 1 replica holds 3 as well and gets
    # the next chunk as one comes back. Either way an engine holds 24 questions (96 sequences), about what its KV
    # cache of 1 GiB (23,296 tokens for this model) can run at once.
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--chunks-per-actor", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a tiny size (4 questions, 2 samples, 16 tokens, "
                        "1 round): the same steps, in seconds; explicit options still apply")
    if parser.parse_known_args()[0].smoke:
        parser.set_defaults(**SMOKE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray

    # Both pools stay up (3 one-CPU actors) so that they can take turns; only one pool generates at a time.
    # The actors' own logs stay in Ray's log folder: this script's last line must be its JSON.
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    pools: dict[int, RayPoolTeacher] = {}
    try:
        for replicas in (1, 2):
            started = time.perf_counter()
            config = ModelConfig(model=args.model, backend="ray", engine=dict(CPU_ENGINE),
                                 settings=RayConfig(replicas=replicas, num_cpus=1, num_gpus=0, chunk_size=args.chunk_size,
                                               chunks_per_actor=args.chunks_per_actor))
            pools[replicas] = RayPoolTeacher(config, seed=0)
            print(f"{replicas} replica(s) up in {time.perf_counter() - started:.1f} s")
        requests = make_requests(pools[1].tokenizer(), args)
        warm = make_requests(pools[1].tokenizer(), argparse.Namespace(**{**vars(args), "questions": 1}))[0]
        warm.sampling = Sampling(n=1, max_tokens=4)
        for pool in pools.values():
            pool.warm_up(warm)

        totals = {1: [0, 0.0], 2: [0, 0.0]}
        lengths: dict[int, dict[str, list[int]]] = {}
        for round_index in range(args.rounds):
            for replicas, pool in pools.items():
                tokens, seconds, lengths[replicas] = timed_generate(pool, requests)
                totals[replicas][0] += tokens
                totals[replicas][1] += seconds
                print(f"round {round_index} replicas={replicas}: {tokens} tokens in {seconds:.2f} s = "
                      f"{tokens / seconds:.1f} tokens/s")
    finally:
        for pool in pools.values():
            pool.close()
        ray.shutdown()

    one, two = (totals[r][0] / totals[r][1] for r in (1, 2))
    same = lengths[1] == lengths[2]
    print(f"1 replica: {one:.1f} tokens/s; 2 replicas: {two:.1f} tokens/s; ratio {two / one:.3f} "
          f"(same completion lengths in both: {same})")
    print(json.dumps({"replicas_2_over_1": round(two / one, 4), "replicas_1_tokens_per_s": round(one, 2),
                      "replicas_2_tokens_per_s": round(two, 2), "replicas_1_tokens": totals[1][0],
                      "replicas_2_tokens": totals[2][0], "replicas_1_seconds": round(totals[1][1], 2),
                      "replicas_2_seconds": round(totals[2][1], 2), "same_lengths": same,
                      "questions": args.questions, "num_samples": args.num_samples, "max_tokens": args.max_tokens,
                      "temperature": args.temperature, "top_k": args.top_k, "rounds": args.rounds,
                      "chunk_size": args.chunk_size, "chunks_per_actor": args.chunks_per_actor,
                      "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
    main()
