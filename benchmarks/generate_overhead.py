"""How much throughput the generate stage loses to its own work (prompts, journals, Parquet, stats) and to
its shard boundaries, without and with top-k logprobs; and how many questions/s its driver can take at all.

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

The logprobs arm (`--logprobs 20`; 0 leaves it out) times the same two, raw `LLM.generate` and the stage in one
shard, with the top-k logprobs of every generated token asked for (raw: `SamplingParams(logprobs=k,
flat_logprobs=True)`, vLLM's cheapest form; the stage: generate.logprobs, its arrays journaled and written to the
shard): raw_logprobs_tokens_per_s, stage_logprobs_tokens_per_s and logprobs_ratio (target >= 0.95).

The driver's ceiling: the stage's own work (prompts rendered with the teacher's tokenizer, the request loop,
the journal with its fsyncs, compaction into Parquet, stats) fed by a stand-in teacher with no engine, which
answers every request at once with ready completions as the engine returns them (`--driver-samples` 16 of
`--driver-tokens` 256 tokens, each with top-k arrays of k = `--logprobs`), over `--driver-questions` (256) in
shards of `--driver-shard` (128), the best of `--rounds`: driver_questions_per_s with logprobs,
driver_questions_per_s_no_logprobs without, and driver_questions_per_s_json with the logprob path as it was
before the journal's binary side (the arrays base64 in the JSON lines, nested Python lists into
pa.Table.from_pylist at compaction: kept here to measure against); driver_speedup is the first over the last.
(benchmarks/journal_throughput.py takes 2,000 questions/s as 64 GPUs' worth.)
`--smoke` runs the same steps (raw, one shard, 2 shards, both logprobs arms; one round; the driver on 8 questions)
on 4 questions, 2 samples of 16 tokens (tests/test_benchmarks.py): its figures say only that it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cotdistill.stages import generate  # noqa: E402
from cotdistill.config.load import load_config  # noqa: E402
from cotdistill.core.prompts import PromptTemplate  # noqa: E402
from cotdistill.core.shards import read_json  # noqa: E402
from cotdistill.questions.sources import QuestionSource  # noqa: E402
from cotdistill.teachers.base import Completion, Finished, load_tokenizer, render_prompt  # noqa: E402
from cotdistill.teachers.vllm_local import VLLMTeacher, build_llm, release_llm  # noqa: E402

SMOKE = {"questions": 4, "num_samples": 2, "max_tokens": 16, "rounds": 1, "shards": 2,  # --smoke
         "driver_questions": 8, "driver_shard": 4}


def raw_generate(llm, config) -> tuple[int, float]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    gen = config.generate
    template = PromptTemplate(gen.prompt, gen.examples)
    tokenizer = llm.get_tokenizer()
    prompts = [TokensPrompt(prompt_token_ids=render_prompt(tokenizer, template.render(q.question))[1])
               for q in QuestionSource(config.data).questions()]
    params = SamplingParams(n=gen.num_samples, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k,
                            max_tokens=gen.max_tokens, stop=gen.stop or None, logprobs=gen.logprobs,
                            flat_logprobs=gen.logprobs is not None)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    return sum(len(c.token_ids) for o in outputs for c in o.outputs), seconds


def stage_generate(llm, config) -> tuple[int, float]:
    started = time.perf_counter()
    stats = generate.STAGE.run(config, teacher=VLLMTeacher(llm, config.teacher.model))
    seconds = time.perf_counter() - started
    return stats["completion_tokens"], seconds


class ReadyTeacher:
    """No engine: every request is answered at once with the same ready completions, as the local engine returns
    them (token ids, and with k top-k ids and logprobs: numpy arrays), so the stage's driver alone sets the pace."""

    def __init__(self, config, samples: int, tokens: int, k: int | None):
        import numpy as np

        self.name, self.sent = config.teacher.model, 0
        self._tokenizer = load_tokenizer(config.teacher)
        self._context = config.teacher.engine.get("max_model_len")
        rng = np.random.default_rng(0)
        text = ("We add the apples: 3 + 4 = 7, then double them, 7 * 2 = 14. " * (tokens // 4))[:tokens * 4]
        self.completions = []
        for i in range(samples):
            c = Completion(text=f"{text} The answer is {i}.", finish_reason="length", completion_tokens=tokens)
            if k:  # ids as a teacher's top k are spread: a few common tokens, a long tail
                c.topk_ids = (rng.zipf(1.3, (tokens, k)) % 49_152).astype(np.int32)
                c.topk_logprobs = -np.sort(rng.exponential(2.0, (tokens, k)).astype(np.float32), axis=1)
                c.token_ids = c.topk_ids[:, 0].copy()
            self.completions.append(c)

    def tokenizer(self):
        return self._tokenizer

    def max_model_len(self):
        return self._context

    def generate(self, requests):
        for request in requests:
            self.sent += 1
            yield Finished(key=request.key, prompt_tokens=len(request.prompt_token_ids),
                           completions=self.completions[:request.sampling.n])

    def close(self):
        pass


@contextlib.contextmanager
def json_logprob_path() -> Iterator[None]:
    """The logprob path as it was before the journal's binary side: each completion's arrays base64-encoded into
    its JSON line (encode_topk), and at compaction decoded into nested Python lists, each row through
    Sample(**row) and asdict, and the shard built by pa.Table.from_pylist."""
    import numpy as np

    from cotdistill.core.records import SAMPLE_SCHEMA, Sample, decode_topk, encode_topk, samples_to_table
    from cotdistill.stages.generate import compaction

    real_answered, real_add, real_table = (compaction.Pending.answered, compaction.add_record_rows,
                                           compaction.shard_table)

    def answered(self, done, config, seconds):
        record, buffers = real_answered(self, done, config, seconds)
        for row, c in zip(record["samples"], done.completions):
            if row.pop("topk_shape", None) is not None:
                row.update(completion_token_ids=list(c.token_ids.tolist()),
                           teacher_topk_ids=encode_topk(c.topk_ids, c.topk_logprobs), teacher_topk_logprobs=None)
        return record, None

    def add_record_rows(record, columns, read_frame):
        rows = []
        for row in record["samples"]:
            if isinstance(row.get("teacher_topk_ids"), dict):
                ids, logprobs = decode_topk(row["teacher_topk_ids"])
                row = {**row, "teacher_topk_ids": ids.tolist(),
                       "teacher_topk_logprobs": logprobs.astype(np.float32).tolist()}
            columns.add_none()
            rows.append(row)
        return rows

    compaction.Pending.answered = answered
    compaction.add_record_rows = add_record_rows
    compaction.shard_table = lambda rows, columns: samples_to_table([Sample(**row) for row in rows], SAMPLE_SCHEMA)
    try:
        yield
    finally:
        compaction.Pending.answered, compaction.add_record_rows, compaction.shard_table = (real_answered, real_add,
                                                                                           real_table)


def driver_questions_per_s(folder: Path, name: str, args, k: int | None, json_path: bool = False) -> float:
    """The stage over `--driver-questions` questions, answered by a ReadyTeacher: questions per second."""
    questions = folder / "driver-questions.jsonl"
    if not questions.exists():
        questions.write_text("".join(
            json.dumps({"question": f"Tom has {i} apples and buys {i % 7 + 2} more. How many apples does he have?",
                        "answer": f"#### {i + i % 7 + 2}"}) + "\n"
            for i in range(args.driver_questions)))
    config = load_config(REPO / "pipelines" / "demo.yaml", [
        f"output_dir={folder}", f"run_name=driver-{name}", f"data.path={questions}",
        f"data.limit={args.driver_questions}", f"generate.num_samples={args.driver_samples}",
        f"generate.max_tokens={args.driver_tokens}", f"generate.questions_per_shard={args.driver_shard}",
        f"generate.logprobs={k if k else 'null'}"])
    teacher = ReadyTeacher(config, args.driver_samples, args.driver_tokens, k)
    with json_logprob_path() if json_path else contextlib.nullcontext():
        started = time.perf_counter()
        stats = generate.STAGE.run(config, teacher=teacher)
        seconds = time.perf_counter() - started
    assert stats["rationales"] == args.driver_questions * args.driver_samples and teacher.sent == stats["questions"]
    return args.driver_questions / seconds


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
    parser.add_argument("--logprobs", type=int, default=20, help="k of the logprobs arm and the driver (0: off)")
    parser.add_argument("--driver-questions", type=int, default=256)
    parser.add_argument("--driver-shard", type=int, default=128, help="the driver's questions_per_shard")
    parser.add_argument("--driver-samples", type=int, default=16)
    parser.add_argument("--driver-tokens", type=int, default=256)
    parser.add_argument("--smoke", action="store_true", help="a tiny size (4 questions, 2 samples, 16 tokens, "
                        "1 round, 2 shards; the driver on 8 questions): the same steps, in seconds; explicit options "
                        "still apply")
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
        warm = overrides + ["data.limit=4"]
        raw_generate(llm, load_config(REPO / "pipelines" / "demo.yaml", warm))  # warm-up
        if args.logprobs:  # and the logprobs path's own first-call costs, kept out of the first round too
            raw_generate(llm, load_config(REPO / "pipelines" / "demo.yaml",
                                          warm + [f"generate.logprobs={args.logprobs}"]))
        totals = {"raw": [0, 0.0], "stage": [0, 0.0], "multi": [0, 0.0], "raw_lp": [0, 0.0], "stage_lp": [0, 0.0]}
        per_shard = -(-args.questions // args.shards)
        logprobs = [f"generate.logprobs={args.logprobs}"]
        arms = [("raw", raw_generate, []), ("stage", stage_generate, []),
                ("multi", stage_generate, [f"generate.questions_per_shard={per_shard}"])]
        if args.logprobs:
            arms += [("raw_lp", raw_generate, logprobs), ("stage_lp", stage_generate, logprobs)]
        for round_index in range(args.rounds):
            for name, fn, extra in arms:
                run_config = load_config(REPO / "pipelines" / "demo.yaml",
                                         overrides + [f"run_name=bench-{name}-{round_index}", *extra])
                llm.reset_prefix_cache()  # both start cold: the prompts are the same, the cache would favour the second
                tokens, seconds = fn(llm, run_config)
                totals[name][0] += tokens
                totals[name][1] += seconds
                print(f"round {round_index} {name:>8}: {tokens} tokens in {seconds:.2f} s = "
                      f"{tokens / seconds:.1f} tokens/s")
        for name, shards in (("stage", 1), ("multi", args.shards)) + ((("stage_lp", 1),) if args.logprobs else ()):
            stats = read_json(Path(tmp) / f"bench-{name}-0" / "generate" / "stats.json")
            assert stats["rationales"] == args.questions * args.num_samples and stats["shards"] == shards
        release_llm(llm)  # the engine's memory, before the driver runs

        k = args.logprobs or None
        driver: dict[str, float] = {}
        for round_index in range(args.rounds):  # the best of the rounds: a ceiling, on a machine others share
            for name, top_k, json_path in (("logprobs", k, False), ("no_logprobs", None, False),
                                           *((("json", k, True),) if k else ())):
                rate = driver_questions_per_s(Path(tmp), f"{name}-{round_index}", args, top_k, json_path)
                driver[name] = max(driver.get(name, 0.0), rate)
                print(f"round {round_index} driver, no engine, {name:>11}: {rate:8.1f} questions/s "
                      f"({args.driver_samples} samples of {args.driver_tokens} tokens"
                      f"{f', top-{k}' if top_k else ''}{', JSON journal' if json_path else ''})")

    raw_tps, stage_tps, multi_tps = (totals[k][0] / totals[k][1] for k in ("raw", "stage", "multi"))
    print(f"raw LLM.generate: {raw_tps:.1f} tokens/s; generate stage, 1 shard: {stage_tps:.1f} tokens/s; "
          f"{args.shards} shards: {multi_tps:.1f} tokens/s")
    result = {"raw_tokens_per_s": round(raw_tps, 2), "stage_tokens_per_s": round(stage_tps, 2),
              "ratio": round(stage_tps / raw_tps, 4), "multi_shard_tokens_per_s": round(multi_tps, 2),
              "multi_shard_ratio": round(multi_tps / raw_tps, 4), "shards": args.shards,
              "multi_tokens": totals["multi"][0], "questions": args.questions,
              "num_samples": args.num_samples, "max_tokens": args.max_tokens, "rounds": args.rounds,
              "temperature": args.temperature, "top_k": args.top_k, "raw_tokens": totals["raw"][0],
              "stage_tokens": totals["stage"][0]}
    if args.logprobs:
        raw_lp, stage_lp = (totals[k][0] / totals[k][1] for k in ("raw_lp", "stage_lp"))
        print(f"with top-{args.logprobs} logprobs: raw LLM.generate {raw_lp:.1f} tokens/s; generate stage "
              f"{stage_lp:.1f} tokens/s ({stage_lp / raw_lp:.3f})")
        result.update({"logprobs": args.logprobs, "raw_logprobs_tokens_per_s": round(raw_lp, 2),
                       "stage_logprobs_tokens_per_s": round(stage_lp, 2), "logprobs_ratio": round(stage_lp / raw_lp, 4),
                       "raw_logprobs_tokens": totals["raw_lp"][0], "stage_logprobs_tokens": totals["stage_lp"][0]})
    result.update({"driver_questions_per_s": round(driver["logprobs"], 1),
                   "driver_questions_per_s_no_logprobs": round(driver["no_logprobs"], 1),
                   "driver_questions": args.driver_questions, "driver_samples": args.driver_samples,
                   "driver_tokens": args.driver_tokens})
    if "json" in driver:
        result.update({"driver_questions_per_s_json": round(driver["json"], 1),
                       "driver_speedup": round(driver["logprobs"] / driver["json"], 2)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
