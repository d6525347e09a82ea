"""Benchmarks cannot rot: each one runs end to end at its `--smoke` size and ends with its JSON line.

Every benchmark under benchmarks/ is run as a subprocess, `python benchmarks/X.py --smoke`, from the repository
root. The test fails if it exits non-zero, if the last line of its stdout is not a JSON object, or if that object
lacks (or holds null for) a figure the README or the benchmark's docstring names. The smoke figures themselves
are not checked: at that size they say only that every step ran. Most of a smoke's time is engine starts (one vLLM
engine per benchmark, three Ray actors for scale_out, an OpenAI server for server_teacher) and imports, on one
thread, so the smokes run two at a time, each pinned to a core of its own (smoke_runs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent

# The keys the README ("## Tests and benchmarks") and each benchmark's docstring name for its last JSON line.
# A dotted key is a key inside a key (prune_distill's per-model figures).
EXPECTED_KEYS: dict[str, list[str]] = {
    "generate_overhead": ["ratio", "multi_shard_ratio", "raw_tokens_per_s", "stage_tokens_per_s",
                          "multi_shard_tokens_per_s", "logprobs_ratio", "raw_logprobs_tokens_per_s",
                          "stage_logprobs_tokens_per_s", "driver_questions_per_s",
                          "driver_questions_per_s_no_logprobs", "driver_questions_per_s_json", "driver_speedup"],
    "scale_out": ["replicas_2_over_1"],
    "code_sandbox": ["programs_per_s", "canonical_passed", "mutants_failed", "sandbox_ms", "bare_ms", "overhead_ms",
                     "two_process_ms", "one_process_ms", "test_process_ms"],
    "server_teacher": ["server_over_local", "by_concurrency"],
    "filter_throughput": ["rationales_per_s_exact", "rationales_per_s_near_dup", "math_check_us_per_rationale",
                          "peak_rss_mb"],
    "journal_throughput": ["questions_per_s_fsync_each", "questions_per_s_grouped", "questions_per_s_no_fsync",
                           "grouped_over_fsync_each", "mb_per_s_grouped"],
    # maj@k from one pass of 16 samples against one pass per k: both times and their ratio.
    "self_consistency_cost": ["one_pass_s", "per_k_passes_s", "ratio"],
    "prune_distill": ["teacher", "pruned", "sft", "kd", "kd_minus_sft_kl", "kd_minus_sft_kl.mean",
                      *(f"{model}.{figure}" for model in ("teacher", "pruned", "sft", "kd")
                        for figure in ("parameters", "greedy", "maj_at_1", "maj_at_K", "kl_to_teacher"))],
    # Every arm's maj@K and greedy accuracy, and the two paired differences the README quotes, with intervals.
    "distill_quality": ["teacher_maj", "base_student_maj", "k", "seconds", "n16_minus_n1_maj", "n16_minus_n1_maj_ci",
                        "n1_minus_label_maj", "n1_minus_label_maj_ci",
                        "onpolicy_minus_longer_maj", "onpolicy_minus_longer_maj_ci", "onpolicy_minus_longer_kl",
                        "onpolicy_minus_longer_kl_ci",
                        *(f"{arm}_{figure}" for arm in ("label", "n1", "n4", "n16", "n16_unfiltered", "kd_n4",
                                                        "n16_onpolicy", "n16_longer")
                          for figure in ("maj", "greedy"))],
    "adaptive_sampling": ["token_ratio", "questions_served_fixed", "questions_served_adaptive",
                          "questions_served_rationalized", "eval_sample_ratio", "eval_accuracy_gap",
                          "adaptive_gap_ci"],
    # The chunked KD loss against the unchunked one (and the fused one against the head + the unchunked one).
    "kd_loss": ["memory_ratio", "time_ratio", "peak_mb_reference", "peak_mb_chunked", "ms_reference", "ms_chunked",
                "fused_memory_ratio", "fused_time_ratio", "peak_mb_reference_head", "peak_mb_fused",
                "ms_reference_head", "ms_fused", "device"],
}

# Seconds each may take at smoke size before it counts as hung: several times what it takes on 2 busy cores.
TIMEOUT_S = {"code_sandbox": 300, "filter_throughput": 300, "journal_throughput": 120, "generate_overhead": 600,
             "self_consistency_cost": 600, "scale_out": 600, "server_teacher": 900,
             "adaptive_sampling": 900, "distill_quality": 1200, "prune_distill": 1200,
             "kd_loss": 120}


def test_every_benchmark_is_covered():
    """A benchmark added under benchmarks/ must be added here too (with the keys the README names for it)."""
    assert sorted(p.stem for p in (REPO / "benchmarks").glob("*.py")) == sorted(EXPECTED_KEYS)
    assert sorted(TIMEOUT_S) == sorted(EXPECTED_KEYS)


MISSING = object()


def lookup(result: dict, dotted: str):
    value = result
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def run_smoke(name: str, core: int | None) -> subprocess.CompletedProcess | str:
    """`python benchmarks/<name>.py --smoke`, pinned to `core` (its vLLM threads too) when one is given; a hang past
    TIMEOUT_S comes back as a sentence."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    command = [sys.executable, f"benchmarks/{name}.py", "--smoke"]
    if core is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(core)  # else vLLM binds its threads to every core, past taskset
        command = ["taskset", "-c", str(core), *command]
    try:
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S[name])
    except subprocess.TimeoutExpired:
        return f"{name} --smoke did not finish within {TIMEOUT_S[name]} s"


@pytest.fixture(scope="module")
def smoke_runs() -> dict:
    """Every benchmark's smoke, two at a time where there are two cores, each pinned to a core of its own: most of
    a smoke is engine starts and imports on one thread, so two lanes take about half the time of one, and pinned,
    neither's threads wait on the other's (two unpinned engines slow each other several-fold). The longest first.
    Also whether any of them wrote into runs/ (where a benchmark writes at full size; never under --smoke)."""
    import queue
    from concurrent.futures import ThreadPoolExecutor

    runs = REPO / "runs"
    runs_before = sorted(runs.iterdir()) if runs.is_dir() else None
    cores = sorted(os.sched_getaffinity(0))
    lanes: queue.Queue = queue.Queue()
    for core in (cores[:2] if len(cores) >= 2 and shutil.which("taskset") else [None]):
        lanes.put(core)

    def run(name: str):
        core = lanes.get()
        try:
            return name, run_smoke(name, core)
        finally:
            lanes.put(core)

    with ThreadPoolExecutor(lanes.qsize()) as pool:
        done = dict(pool.map(run, sorted(EXPECTED_KEYS, key=lambda name: -TIMEOUT_S[name])))
    runs_after = sorted(runs.iterdir()) if runs.is_dir() else None
    return {"done": done, "runs_before": runs_before, "runs_after": runs_after}


@pytest.mark.parametrize("name", sorted(EXPECTED_KEYS))
def test_benchmark_smoke(name: str, smoke_runs: dict):
    script = REPO / "benchmarks" / f"{name}.py"
    assert "--smoke" in script.read_text().split('"""')[1], f"{script.name}: its docstring does not mention --smoke"
    done = smoke_runs["done"][name]
    assert not isinstance(done, str), done
    tail = f"\n--- stdout (tail) ---\n{done.stdout[-3000:]}\n--- stderr (tail) ---\n{done.stderr[-5000:]}"
    assert done.returncode == 0, f"{name} --smoke exited with {done.returncode}{tail}"
    lines = done.stdout.strip().splitlines()
    assert lines, f"{name} --smoke printed nothing{tail}"
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        pytest.fail(f"{name} --smoke: the last line of stdout is not JSON: {lines[-1][:300]!r}{tail}")
    assert isinstance(result, dict), f"{name} --smoke: the last line is not a JSON object: {lines[-1][:300]!r}"
    missing = [key for key in EXPECTED_KEYS[name] if lookup(result, key) is MISSING]
    assert not missing, f"{name} --smoke: its JSON line lacks {missing}: {lines[-1][:1000]}"
    null = [key for key in EXPECTED_KEYS[name] if lookup(result, key) is None]
    assert not null, f"{name} --smoke: its JSON line has no value for {null}: {lines[-1][:1000]}"
    assert len(lines) > 1, f"{name} --smoke printed its JSON line but none of its figures before it"


def test_no_smoke_writes_into_runs(smoke_runs: dict):
    assert smoke_runs["runs_after"] == smoke_runs["runs_before"], f"a --smoke wrote into {REPO / 'runs'}"
