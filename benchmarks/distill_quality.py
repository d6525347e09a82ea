"""Does distillation work? SCoTD's findings at CPU scale: a student trained on a teacher's sampled rationales
against one trained on labels, N rationales per question, answer filtering, and KD, on the same questions.

    .venv/bin/python benchmarks/distill_quality.py             # full size (about 50 minutes on 2 cores)
    .venv/bin/python benchmarks/distill_quality.py --smoke     # every step at a tiny size, in a temporary folder

benchmarks/distill_quality.yaml, one run per arm, through the pipeline's own stages (generate, filter, score, train;
then one evaluate over every arm's student):
  - the task: questions.wordsteps, word problems of 1 to 4 steps with program-computed gold answers; `train`
    questions for the corpus, `validation` to choose settings, `test` scored once (never used to choose);
  - the teacher, wordsteps-teacher, samples 16 rationales per training question at temperature 1 (the pool,
    generated once: every arm's generate output is a copy of it, its fingerprint the same, so nothing is redone);
  - the arms, each the same student (wordsteps-student: the teacher's tokenizer, random weights) trained for the
    same number of steps on the same questions:
      label           question -> "The answer is N." (train.target label): the labels-only baseline
      n1, n4, n16     the first N samples of each question's pool (filter.use_samples), answer-filtered
      n16_unfiltered  all 16, answers not checked (filter.label none): OpenThoughts' question
      kd_n4           n4's corpus, trained with KD on the teacher's top-8 logprobs (score step, train.loss kd)
  - evaluate: the teacher, the untrained student and every arm on the test questions: greedy accuracy and maj@K
    with 95% intervals, each arm against label and n1 paired over the questions (evaluate.compare_to), and the
    share of the teacher's maj@K each recovers.
Per arm also the teacher tokens its corpus cost and its wall time (filter, score, train). The figures go to
--results (default docs/figures/distill_quality.json, with a plot beside it, from which `make docs` writes the
README's "Does it work?" section). The last line printed is a JSON object of the same figures.

`--smoke` runs every step at a tiny size (SMOKE below: 8 train and 8 test questions, 2 samples, a few training
steps; its teacher, student-sized, learns the 8 training questions by heart in seconds) in a temporary folder,
removed after; its figures, plot and README block are written there, never to --results: they say only that every
step runs (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import copy
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

import yaml  # noqa: E402

from cotdistill.config.load import load_config  # noqa: E402
from cotdistill.core.shards import read_json, write_json_atomic  # noqa: E402
from cotdistill.stages import BY_NAME  # noqa: E402

PIPELINE = Path(__file__).with_suffix(".yaml")  # the base configuration, the arms' changes applied to it
RESULTS = REPO / "docs" / "figures" / "distill_quality.json"
# name -> what the arm changes in the pipeline: (filter, train, score) settings
ARMS = {
    "label": {"train": {"target": "label"}},
    "n1": {"filter": {"use_samples": 1}},
    "n4": {"filter": {"use_samples": 4}},
    "n16": {},
    "n16_unfiltered": {"filter": {"label": "none"}},
    "kd_n4": {"filter": {"use_samples": 4}, "train": {"loss": "kd", "kd": {"alpha": 0.5, "temperature": 1.0}},
              "score": {"logprobs": 8, "context": "student"}},
}
SIZES = {"pretrain": 20000, "train": 1000, "validation": 300, "test": 600}  # the wordsteps splits
# Models this small train fastest on one thread, and one thread does not collapse when another process shares the
# cores: the labels arm took 0.16 s a step on 2 threads alone, and 2 s a step on 2 threads beside a test run.
TRAIN_THREADS = 1
SMOKE = {"train": 8, "test": 8, "samples": 2, "steps": 4, "k": 2, "teacher_steps": 80}


def merged(base: dict, change: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in change.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def run_stages(config, names: list[str]) -> float:
    """The stages by name, each skipped when its output is complete; the wall time they took when they ran, in this
    invocation or an earlier one (kept in the run's folder: a test run that reuses the arms a validation run
    trained still reports what they cost). Training runs on TRAIN_THREADS torch threads."""
    import torch

    record = config.paths.root / "benchmark_seconds.json"
    seconds = read_json(record) if record.exists() else {}
    for name in names:
        stage = BY_NAME[name]
        if stage.is_complete(config):
            logging.info("%s: %s up to date", config.run_name, name)
            continue
        logging.info("%s: %s", config.run_name, name)
        threads = torch.get_num_threads()
        if name in ("train", "score"):
            torch.set_num_threads(TRAIN_THREADS)
        started = time.perf_counter()
        try:
            stage.run(config)
        finally:
            torch.set_num_threads(threads)
        seconds[name] = round(time.perf_counter() - started, 1)
        write_json_atomic(seconds, record)
    return sum(seconds.get(name, 0.0) for name in names)


def pool_tokens(samples_dir: Path, use_samples: int | None) -> int:
    """The teacher's completion tokens in the first `use_samples` samples of every question (all: None)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    total = 0
    for shard in sorted(samples_dir.glob("*.parquet")):
        table = pq.read_table(shard, columns=["sample_index", "completion_tokens"])
        if use_samples is not None:
            table = table.filter(pc.less(table.column("sample_index"), use_samples))
        total += pc.sum(table.column("completion_tokens")).as_py() or 0
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=None, help="where the runs go (default: runs/distill-quality, or a "
                        "temporary folder with --smoke)")
    parser.add_argument("--results", default=str(RESULTS), help="the figures' JSON file (a PNG beside it)")
    parser.add_argument("--smoke", action="store_true", help="every step at a tiny size; no results written")
    parser.add_argument("--validation", action="store_true", help="score on the validation split (to choose "
                        "settings; never on test), its figures beside the runs in --output, not in --results")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"the arms to run, of {','.join(ARMS)} (all by "
                        "default; fewer to choose settings on validation)")
    parser.add_argument("--train-steps", type=int, default=None, help="train.sft.max_steps of every arm (default: "
                        "the YAML's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    temporary = args.smoke and args.output is None
    output = (Path(tempfile.mkdtemp(prefix="distill-quality-")) if temporary
              else Path(args.output or REPO / "runs" / "distill-quality"))
    try:
        arms = [a for a in args.arms.split(",") if a]
        unknown = sorted(set(arms) - set(ARMS))
        if unknown:
            parser.error(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
        result = run_benchmark(output, args.smoke, "validation" if args.validation else "test", arms,
                               args.train_steps)
        # --smoke writes its figures, the plot and the README's block too, but into the run's folder, never --results
        # (as does --validation: settings are chosen there, figures are quoted from test)
        results = output / "distill_quality.json" if args.smoke or args.validation else Path(args.results)
        results.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(result, results)
        plot(result, results.with_suffix(".png"))
        if args.smoke:
            from cotdistill.reference import distill_quality_block

            assert "| N = 16 |" in distill_quality_block(result)
        print(json.dumps(result["summary"]))
    finally:
        if temporary:
            shutil.rmtree(output, ignore_errors=True)


def run_benchmark(output: Path, smoke: bool, split: str = "test", only: list[str] | None = None,
                  train_steps: int | None = None) -> dict:
    from cotdistill.questions.wordsteps import write_splits

    started = time.perf_counter()
    sizes = {**SIZES, "train": SMOKE["train"], "validation": SMOKE["test"], "test": SMOKE["test"]} if smoke else SIZES
    data = write_splits(output / "data", seed=0, sizes=sizes)
    base = yaml.safe_load(PIPELINE.read_text())
    base = merged(base, {"output_dir": str(output / "runs"), "data": {"path": str(data["train"])},
                         "evaluate": {"data": {"path": str(data[split])}}})
    if train_steps is not None:
        base = merged(base, {"train": {"sft": {"max_steps": train_steps}}})
    if smoke:  # the models built small in the run's folder, not the cache's (the teacher's full build is long)
        from cotdistill.models.wordsteps import STUDENT, build_student, build_teacher
        from cotdistill.questions.wordsteps import make_splits

        # The smoke's teacher learns its own 8 training questions by heart (student-sized, a few seconds): enough
        # right answers for every filtered arm to have a corpus, so each stage runs on real rows.
        models = output / "models"
        own = make_splits(0, sizes)["train"]
        teacher = build_teacher(models / "teacher", steps=SMOKE["teacher_steps"], batch_size=8, sizes=STUDENT,
                                problems=own)
        student = build_student(models / "student")
        base = merged(base, {"teacher": {"model": str(teacher)}, "student": {"model": str(student)}})
        base = merged(base, {"generate": {"num_samples": SMOKE["samples"], "max_tokens": 128},
                             "train": {"sft": {"max_steps": SMOKE["steps"], "warmup_steps": 0, "save_steps": 2,
                                               "per_device_train_batch_size": 4}},
                             "evaluate": {"num_samples": SMOKE["k"], "max_tokens": 128, "bootstrap_resamples": 100,
                                          "maj_draws": 10, "speed": None}})
    configs = {}
    for name, change in ARMS.items():
        if smoke and "use_samples" in change.get("filter", {}):
            change = merged(change, {"filter": {"use_samples": min(change["filter"]["use_samples"], SMOKE["samples"])}})
        arm = merged(base, {**change, "run_name": f"arm-{name}"})
        path = output / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(arm, sort_keys=False))
        configs[name] = load_config(path)

    os.chdir(REPO)
    pool = configs["n16"]
    seconds = {"generate": run_stages(pool, ["generate"])}
    arms: dict[str, dict] = {}
    for name, config in configs.items():
        if only is not None and name not in only:
            continue
        if name != "n16" and not config.paths.generate.exists():  # the same pool: copied, its fingerprint the same
            shutil.copytree(pool.paths.generate, config.paths.generate)
        stages = ["filter", *(["score"] if config.score is not None else []), "train"]  # generate: the pool's
        arm_seconds = run_stages(config, stages)
        filtered = read_json(config.paths.filter / "stats.json")
        trained = read_json(config.paths.train / "stats.json")
        use = config.filter.use_samples
        arms[name] = {"seconds": round(arm_seconds, 1), "train_seconds": trained.get("train_runtime_s"),
                      "examples": trained["examples"], "steps": trained["global_steps"],
                      "accepted": filtered["accepted"], "rationales": filtered["rationales"],
                      "teacher_tokens": 0 if config.train.target == "label" else pool_tokens(
                          config.paths.samples, use)}

    # One evaluate over every arm's student, beside the teacher and the untrained student.
    compare = merged(base, {"run_name": f"compare-{split}", "evaluate": {
        "models": ["teacher", "base_student"],
        "compare_to": ["teacher", "base_student", *(name for name in ("label", "n1") if name in arms)],
        "extra_models": {name: {"model": str(configs[name].paths.trained_model), "engine": base["student"]["engine"]}
                         for name in arms}}})
    path = output / "configs" / f"compare-{split}.yaml"
    path.write_text(yaml.safe_dump(compare, sort_keys=False))
    evaluation = load_config(path)
    seconds["evaluate"] = run_stages(evaluation, ["evaluate"])
    metrics = read_json(evaluation.paths.metrics)["models"]
    seconds["total"] = time.perf_counter() - started  # this invocation
    # the whole benchmark's work, each stage timed when it ran (a test run reuses the arms its validation run trained)
    seconds["work"] = seconds["generate"] + sum(arm["seconds"] for arm in arms.values()) + seconds["evaluate"]
    result = summarize(metrics, arms, seconds, evaluation.evaluate.num_samples, smoke, split)
    result["split"] = result["summary"]["split"] = split
    return result


def summarize(metrics: dict, arms: dict, seconds: dict, k: int, smoke: bool, split: str = "test") -> dict:
    """The figures per model, printed as a table; the JSON object the benchmark writes and prints."""
    import datetime
    import platform

    def figures(name: str) -> dict:
        m = metrics[name]
        out = {"greedy": m["greedy_accuracy"], "greedy_ci": m["greedy_accuracy_ci"], "maj": m[f"maj@{k}"],
               "maj_ci": m["maj_at_K_ci"], "questions": m["questions"]}
        for other in ("teacher", "label", "n1"):
            vs = m.get(f"vs_{other}")
            if vs:
                out[f"vs_{other}"] = {key: vs.get(key) for key in ("maj_difference", "maj_difference_ci",
                                                                   "greedy_difference", "greedy_difference_ci",
                                                                   "maj_share", "maj_share_ci") if key in vs}
        return out

    models = {name: figures(name) for name in ("teacher", "base_student", *arms)}
    for name, arm in arms.items():
        models[name].update(arm)
    pct = lambda v: f"{100 * v:5.1f}" if v is not None else "    -"  # noqa: E731
    ci = lambda c: f"[{100 * c[0]:4.1f}, {100 * c[1]:4.1f}]" if c else ""  # noqa: E731
    diff = lambda d: (f"{100 * d['maj_difference']:+5.1f} {ci(d['maj_difference_ci']):>14}"  # noqa: E731
                      if d else "")
    print(f"\n{models['teacher']['questions']} {split} questions; maj@{k}; intervals 95% (paired for differences)")
    print(f"{'model':15} {'greedy %':>21} {f'maj@{k} %':>21} {'vs label (maj)':>22} {'vs n1 (maj)':>22} "
          f"{'teacher share':>14} {'examples':>8} {'teacher tok':>11} {'s':>6}")
    for name, m in models.items():
        share = m.get("vs_teacher", {}).get("maj_share")
        print(f"{name:15} {pct(m['greedy'])} {ci(m['greedy_ci']):>15} {pct(m['maj'])} {ci(m['maj_ci']):>15} "
              f"{diff(m.get('vs_label')):>22} {diff(m.get('vs_n1')):>22} "
              f"{(f'{100 * share:.0f}%' if share is not None else '-'):>14} {m.get('examples', ''):>8} "
              f"{m.get('teacher_tokens', ''):>11} {m.get('seconds', ''):>6}")
    summary = {"teacher_maj": models["teacher"]["maj"], "base_student_maj": models["base_student"]["maj"],
               **{f"{name}_maj": models[name]["maj"] for name in arms},
               **{f"{name}_greedy": models[name]["greedy"] for name in arms},
               "n16_minus_n1_maj": models.get("n16", {}).get("vs_n1", {}).get("maj_difference"),
               "n16_minus_n1_maj_ci": models.get("n16", {}).get("vs_n1", {}).get("maj_difference_ci"),
               "n1_minus_label_maj": models.get("n1", {}).get("vs_label", {}).get("maj_difference"),
               "n1_minus_label_maj_ci": models.get("n1", {}).get("vs_label", {}).get("maj_difference_ci"),
               "k": k, "seconds": round(seconds["total"], 1), "smoke": smoke}
    return {"command": "python benchmarks/distill_quality.py", "date": datetime.date.today().isoformat(),
            "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}", "k": k,
            "seconds": {key: round(v, 1) for key, v in seconds.items()}, "models": models, "summary": summary}


def plot(result: dict, path: Path) -> None:
    """Accuracy against N (maj@K and greedy, with intervals), the teacher, the untrained student and the labels-only
    student as lines, unfiltered and KD as their own points at their N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, k = result["models"], result["k"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ns = [n for n in (1, 4, 16) if f"n{n}" in models]
    for key, label, style in (("maj", f"maj@{k}", "o-"), ("greedy", "greedy", "s--")):
        values = [100 * models[f"n{n}"][key] for n in ns]
        low = [v - 100 * models[f"n{n}"][f"{key}_ci"][0] for v, n in zip(values, ns)]
        high = [100 * models[f"n{n}"][f"{key}_ci"][1] - v for v, n in zip(values, ns)]
        ax.errorbar(ns, values, yerr=[low, high], fmt=style, capsize=4, label=f"student, {label}")
    for name, color, text in (("teacher", "tab:green", "teacher"), ("label", "tab:red", "labels only"),
                              ("base_student", "tab:gray", "untrained student")):
        if name not in models:
            continue
        value, (low, high) = 100 * models[name]["maj"], models[name]["maj_ci"]
        ax.axhline(value, color=color, lw=1.2, label=f"{text}, maj@{k}")
        ax.axhspan(100 * low, 100 * high, color=color, alpha=0.12)
    for name, marker, text in (("n16_unfiltered", "x", "N=16 unfiltered"), ("kd_n4", "D", "N=4 with KD")):
        if name not in models:
            continue
        m = models[name]
        n = 16 if name.startswith("n16") else 4
        ax.errorbar([n * (1.08 if marker == "x" else 0.92)], [100 * m["maj"]],
                    yerr=[[100 * (m["maj"] - m["maj_ci"][0])], [100 * (m["maj_ci"][1] - m["maj"])]],
                    fmt=marker, capsize=4, label=f"{text}, maj@{k}")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 4, 16], ["1", "4", "16"])
    ax.set_xlabel("rationales per training question (N)")
    ax.set_ylabel(f"{result.get('split', 'test')} accuracy (%)")
    ax.set_title(f"wordsteps: {models['teacher']['questions']} {result.get('split', 'test')} questions, "
                 "95% intervals")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
