"""What a served teacher costs against a local engine: the `openai` backend talking to vLLM's OpenAI-compatible
server on 127.0.0.1, against the `vllm` backend in this process, on the same model, prompts and sampling.

    .venv/bin/python benchmarks/server_teacher.py [--questions 48] [--num-samples 4] [--max-tokens 128]
    .venv/bin/python benchmarks/server_teacher.py --smoke     # 4 questions, 2 samples, 16 tokens

SmolLM2-135M-Instruct (the demo's teacher), GSM8K test questions from ../shared/data with the zero-shot prompt,
top_k=1 so both sides generate the same tokens. The local engine runs first and is released; then the server is
started (about 40 s) and the openai backend is timed at each `--concurrency` (requests in flight). Only
generation is timed, after a warm-up request. Prints tokens/s of each and, last, a JSON line with
`server_over_local` (at the default max_concurrency, 16) and `by_concurrency`.
`--smoke` runs the same steps (local engine, then the server) on 4 questions, 2 samples of 16 tokens, at the
default max_concurrency only (tests/test_benchmarks.py): its figures say only that it runs.
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

from cotdistill.config.sections import ModelConfig
from cotdistill.teachers.openai_server import OpenAIConfig  # noqa: E402
from cotdistill.models.resolve import resolve_model  # noqa: E402
from cotdistill.teachers.base import TeacherRequest  # noqa: E402
from tests.servers import start_vllm_server, stop_server  # noqa: E402
from tests.teacher_requests import zero_shot_requests  # noqa: E402

GSM8K_TEST = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
ENGINE = {"dtype": "float32", "max_model_len": 1024, "enforce_eager": True, "kv_cache_memory_bytes": 1 << 30}
SMOKE = {"questions": 4, "num_samples": 2, "max_tokens": 16,
         "concurrency": [OpenAIConfig().max_concurrency]}  # --smoke: server_over_local is at the default


def timed(teacher, requests: list[TeacherRequest]) -> tuple[int, float]:
    list(teacher.generate(requests[:1]))  # warm-up: first-request costs stay out of the figure
    started = time.perf_counter()
    done = list(teacher.generate(requests))
    seconds = time.perf_counter() - started
    assert len(done) == len(requests) and not any(f.error for f in done), [f.error for f in done if f.error][:3]
    return sum(c.completion_tokens for f in done for c in f.completions), seconds


def main() -> None:
    from cotdistill.teachers import openai_server, vllm_local

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--smoke", action="store_true", help="a tiny size (4 questions, 2 samples, 16 tokens, "
                        "the default concurrency): the same steps; explicit options still apply")
    if parser.parse_known_args()[0].smoke:
        parser.set_defaults(**SMOKE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model_dir = resolve_model("smollm2-135m-instruct")
    questions = [json.loads(line)["question"] for line in GSM8K_TEST.read_text().splitlines()[: args.questions]]
    local = vllm_local.build(ModelConfig(model=model_dir, engine=ENGINE), seed=0)
    try:
        requests = zero_shot_requests(local.tokenizer(), questions, n=args.num_samples, temperature=1.0, top_k=1,
                                      max_tokens=args.max_tokens)
        local_tokens, local_seconds = timed(local, requests)
    finally:
        local.close()
    local_tps = local_tokens / local_seconds
    print(f"local vllm backend: {local_tokens} tokens in {local_seconds:.1f} s = {local_tps:.1f} tokens/s")

    started = time.monotonic()
    process, base_url = start_vllm_server(model_dir, max_model_len=ENGINE["max_model_len"],
                                          kv_cache_bytes=ENGINE["kv_cache_memory_bytes"], timeout=300)
    print(f"server up in {time.monotonic() - started:.0f} s at {base_url}")
    by_concurrency = {}
    try:
        for concurrency in args.concurrency:
            config = ModelConfig(model=model_dir, engine=ENGINE, backend="openai",
                                 settings=OpenAIConfig(base_url=base_url, max_concurrency=concurrency))
            served = openai_server.build(config, seed=0)
            try:
                tokens, seconds = timed(served, requests)
            finally:
                served.close()
            by_concurrency[concurrency] = round(tokens / seconds / local_tps, 4)
            print(f"openai backend, max_concurrency {concurrency:>3}: {tokens} tokens in {seconds:.1f} s = "
                  f"{tokens / seconds:.1f} tokens/s ({by_concurrency[concurrency]:.2f} of local)")
    finally:
        stop_server(process)
    default = OpenAIConfig().max_concurrency
    print(json.dumps({"server_over_local": by_concurrency.get(default), "by_concurrency": by_concurrency,
                      "local_tokens_per_s": round(local_tps, 2), "local_tokens": local_tokens,
                      "questions": args.questions, "num_samples": args.num_samples, "max_tokens": args.max_tokens}))


if __name__ == "__main__":
    main()
