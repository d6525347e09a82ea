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
      n16_onpolicy    n16's student, then on-policy distillation (the onpolicy stage: the student samples, the
                      teacher scores every token; TRL's DistillationTrainer, reverse KL) for ONPOLICY's steps
      n16_longer      SFT alone on n16's corpus, trained longer: as many more steps as n16_onpolicy's on-policy
                      time buys at n16's time per step (equal wall time), a fresh cosine schedule
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
    "n16_onpolicy": {"onpolicy": "ONPOLICY"},  # below: its settings, with the smoke's
    "n16_longer": {},  # its steps set when n16_onpolicy's time is known
}
# The on-policy arm's settings: reverse KL (beta 1), as Thinking Machines' on-policy distillation and MiniLLM use; the
# student's own completions at temperature 1 up to generate's length; 150 steps of 16 (about a minute here). The
# learning rate chosen on the validation split (greedy, its first 60 questions, n16's student at 20 right): 1e-3 20,
# 1e-4 25; beta 0.5 at 1e-4 22, beta 0 at 3e-4 25.
ONPOLICY = {"start": "student", "beta": 1.0, "max_steps": 150, "per_device_train_batch_size": 16,
            "learning_rate": 1.0e-4, "lr_scheduler_type": "cosine", "warmup_steps": 10, "max_completion_length": 160,
            "temperature": 1.0, "logging_steps": 25, "save_steps": 50, "gradient_checkpointing": False}
KL_RATIONALES = 200  # the teacher's own rationales for held-out (evaluated) questions, for the KL to the teacher
SIZES = {"pretrain": 20000, "train": 1000, "validation": 300, "test": 600}  # the wordsteps splits
# Training runs on torch's default threads, 2 here: vLLM's CPU worker, once it has run in this process, turns
# torch.set_num_threads into a no-op. So the benchmark wants the machine to itself: beside another heavy process, the
# labels arm's 0.16 s a step on 2 threads became 2 s.
SMOKE = {"train": 8, "test": 8, "samples": 2, "steps": 4, "k": 2, "teacher_steps": 80, "onpolicy_steps": 2}


def merged(base: dict, change: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in change.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def run_stages(config, names: list[str]) -> float:
    """The stages by name, each skipped when its output is complete; the wall time they took when they ran, in this
    invocation or an earlier one (kept in the run's folder: a test run that reuses the arms a validation run
    trained still reports what they cost)."""
    record = config.paths.root / "benchmark_seconds.json"
    seconds = read_json(record) if record.exists() else {}
    for name in names:
        stage = BY_NAME[name]
        if stage.is_complete(config):
            logging.info("%s: %s up to date", config.run_name, name)
            continue
        logging.info("%s: %s", config.run_name, name)
        started = time.perf_counter()
        stage.run(config)
        seconds[name] = round(time.perf_counter() - started, 1)
        write_json_atomic(seconds, record)
    return sum(seconds.get(name, 0.0) for name in names)


COMPARED = ("label", "n1", "n16", "n16_longer")  # the arms every other is compared to, paired over the questions


def recorded(config, stage: str) -> float | None:
    """The seconds `stage` of this run took when it ran (run_stages keeps them)."""
    record = config.paths.root / "benchmark_seconds.json"
    return read_json(record).get(stage) if record.exists() else None


def student_of(config) -> Path:
    """The arm's student: the on-policy stage's model where the arm has one, else train's."""
    return config.paths.onpolicy_model if config.onpolicy is not None else config.paths.trained_model


def kl_of_arms(arms: dict, configs: dict, evaluation, count: int) -> float:
    """Per arm of n16, n16_onpolicy and n16_longer, the mean KL(teacher || student) per token, full vocabulary, on the
    teacher's own sampled rationales for the evaluated (held-out) questions (prune_distill's measure): into
    arms[name]["kl_to_teacher"] with its interval, and n16_onpolicy's paired difference against n16_longer."""
    import importlib.util

    import pyarrow.parquet as pq

    from cotdistill.models.resolve import resolve_model
    from cotdistill.stages.evaluate.metrics import bootstrap_ci

    started = time.perf_counter()
    spec = importlib.util.spec_from_file_location("prune_distill", Path(__file__).with_name("prune_distill.py"))
    prune_distill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prune_distill)
    rows = pq.read_table(evaluation.paths.eval_rows("teacher"), columns=["question", "samples"]).to_pylist()
    rationales = [(r["question"], s) for r in rows for s in (r["samples"] or [])[:1] if s.strip()][:count]
    names = [name for name in ("n16", "n16_onpolicy", "n16_longer") if name in arms]
    kl = prune_distill.kl_to_teacher({name: str(student_of(configs[name])) for name in names},
                                     resolve_model(evaluation.teacher.model), rationales, evaluation.train.prompt)
    for name in names:
        low, high = bootstrap_ci(kl[name])
        arms[name].update(kl_to_teacher=round(sum(kl[name]) / len(kl[name]), 4), kl_to_teacher_ci=[
            round(low, 4), round(high, 4)], kl_rationales=len(rationales))
    if "n16_longer" in names:
        diff = [a - b for a, b in zip(kl["n16_onpolicy"], kl["n16_longer"])]
        low, high = bootstrap_ci(diff)
        arms["n16_onpolicy"]["kl_minus_n16_longer"] = {"mean": round(sum(diff) / len(diff), 4),
                                                       "ci": [round(low, 4), round(high, 4)]}
    return time.perf_counter() - started


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
    onpolicy = {**ONPOLICY, **({"max_steps": SMOKE["onpolicy_steps"], "per_device_train_batch_size": 4,
                                "max_completion_length": 32, "save_steps": 1} if smoke else {})}

    def arm_config(name: str, change: dict):
        if smoke and "use_samples" in change.get("filter", {}):
            change = merged(change, {"filter": {"use_samples": min(change["filter"]["use_samples"], SMOKE["samples"])}})
        if change.get("onpolicy") == "ONPOLICY":
            change = {**change, "onpolicy": onpolicy}
        arm = merged(base, {**change, "run_name": f"arm-{name}"})
        path = output / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(arm, sort_keys=False))
        return load_config(path)

    configs = {name: arm_config(name, change) for name, change in ARMS.items() if name != "n16_longer"}

    os.chdir(REPO)
    pool = configs["n16"]
    seconds = {"generate": run_stages(pool, ["generate"])}
    arms: dict[str, dict] = {}
    for name in ARMS:
        if only is not None and name not in only:
            continue
        if name == "n16_longer":  # as many more steps as the on-policy stage's time buys at n16's time per step
            n16_seconds, onpolicy_seconds = recorded(configs["n16"], "train"), recorded(configs["n16_onpolicy"],
                                                                                          "onpolicy")
            if n16_seconds is None or onpolicy_seconds is None:
                raise SystemExit("the n16_longer arm needs the n16 and n16_onpolicy arms run first (--arms)")
            steps = configs["n16"].train.sft["max_steps"]
            longer = round(steps * (n16_seconds + onpolicy_seconds) / n16_seconds)
            configs[name] = arm_config(name, {"train": {"sft": {"max_steps": longer}}})
        config = configs[name]
        if name != "n16" and not config.paths.generate.exists():  # the same pool: copied, its fingerprint the same
            shutil.copytree(pool.paths.generate, config.paths.generate)
        if name == "n16_onpolicy":  # n16's corpus and student, copied: their fingerprints the same
            for stage in ("filter", "train"):
                if not config.paths.stage(stage).exists() and configs["n16"].paths.stage(stage).exists():
                    shutil.copytree(configs["n16"].paths.stage(stage), config.paths.stage(stage))
        stages = ["filter", *(["score"] if config.score is not None else []), "train",
                  *(["onpolicy"] if config.onpolicy is not None else [])]  # generate: the pool's
        arm_seconds = own_seconds = run_stages(config, stages)
        if name == "n16_onpolicy":  # its cost: n16's training and then its own on-policy stage
            arm_seconds += recorded(configs["n16"], "train") or 0.0
        filtered = read_json(config.paths.filter / "stats.json")
        trained = read_json(config.paths.train / "stats.json")
        use = config.filter.use_samples
        arms[name] = {"seconds": round(arm_seconds, 1), "own_seconds": round(own_seconds, 1), "train_seconds": trained.get("train_runtime_s"),
                      "examples": trained["examples"], "steps": trained["global_steps"],
                      "accepted": filtered["accepted"], "rationales": filtered["rationales"],
                      "teacher_tokens": 0 if config.train.target == "label" else pool_tokens(
                          config.paths.samples, use)}
        if config.onpolicy is not None:
            costs = read_json(config.paths.onpolicy / "stats.json")
            arms[name].update(onpolicy_steps=costs["global_steps"], onpolicy_seconds=recorded(config, "onpolicy"),
                              student_tokens_sampled=costs["student_tokens_sampled"],
                              teacher_tokens_scored=costs["teacher_tokens_scored"])

    # One evaluate over every arm's student, beside the teacher and the untrained student.
    compare = merged(base, {"run_name": f"compare-{split}", "evaluate": {
        "models": ["teacher", "base_student"],
        "compare_to": ["teacher", "base_student", *(name for name in COMPARED if name in arms)],
        "extra_models": {name: {"model": str(student_of(configs[name])), "engine": base["student"]["engine"]}
                         for name in arms}}})
    path = output / "configs" / f"compare-{split}.yaml"
    path.write_text(yaml.safe_dump(compare, sort_keys=False))
    evaluation = load_config(path)
    seconds["evaluate"] = run_stages(evaluation, ["evaluate"])
    metrics = read_json(evaluation.paths.metrics)["models"]
    if "n16_onpolicy" in arms:  # the KL to the teacher on held-out questions, of the arms the on-policy one is compared to
        seconds["kl"] = kl_of_arms(arms, configs, evaluation, KL_RATIONALES if not smoke else 4)
    seconds["total"] = time.perf_counter() - started  # this invocation
    # the whole benchmark's work, each stage timed when it ran (a test run reuses the arms its validation run trained)
    seconds["work"] = (seconds["generate"] + sum(arm["own_seconds"] for arm in arms.values()) + seconds["evaluate"]
                       + seconds.get("kl", 0.0))
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
        for other in ("teacher", *COMPARED):
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
    if "n16_onpolicy" in models:
        m = models["n16_onpolicy"]
        print(f"on-policy after SFT against SFT alone at the same wall time (n16_onpolicy - n16_longer): "
              f"maj@{k} {diff(m.get('vs_n16_longer'))}, greedy "
              f"{100 * (m.get('vs_n16_longer') or {}).get('greedy_difference', 0):+.1f}")
        for name in ("n16", "n16_onpolicy", "n16_longer"):
            if "kl_to_teacher" in models.get(name, {}):
                print(f"  {name:13} KL to the teacher {models[name]['kl_to_teacher']:.4f} "
                      f"[{models[name]['kl_to_teacher_ci'][0]:.4f}, {models[name]['kl_to_teacher_ci'][1]:.4f}] "
                      f"on {models[name]['kl_rationales']} held-out teacher rationales; {models[name]['seconds']} s")
    summary = {"teacher_maj": models["teacher"]["maj"], "base_student_maj": models["base_student"]["maj"],
               **{f"{name}_maj": models[name]["maj"] for name in arms},
               **{f"{name}_greedy": models[name]["greedy"] for name in arms},
               "n16_minus_n1_maj": models.get("n16", {}).get("vs_n1", {}).get("maj_difference"),
               "n16_minus_n1_maj_ci": models.get("n16", {}).get("vs_n1", {}).get("maj_difference_ci"),
               "n1_minus_label_maj": models.get("n1", {}).get("vs_label", {}).get("maj_difference"),
               "n1_minus_label_maj_ci": models.get("n1", {}).get("vs_label", {}).get("maj_difference_ci"),
               "onpolicy_minus_longer_maj": models.get("n16_onpolicy", {}).get("vs_n16_longer", {}).get(
                   "maj_difference"),
               "onpolicy_minus_longer_maj_ci": models.get("n16_onpolicy", {}).get("vs_n16_longer", {}).get(
                   "maj_difference_ci"),
               "onpolicy_minus_longer_kl": (models.get("n16_onpolicy", {}).get("kl_minus_n16_longer") or {}).get(
                   "mean"),
               "onpolicy_minus_longer_kl_ci": (models.get("n16_onpolicy", {}).get("kl_minus_n16_longer") or {}).get(
                   "ci"),
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
    # colours of their own: not the teacher's green nor the labels' red
    for name, marker, text, color in (("n16_unfiltered", "x", "N=16 unfiltered", "tab:pink"),
                                      ("kd_n4", "D", "N=4 with KD", "tab:cyan"),
                                      ("n16_onpolicy", "^", "N=16, then on-policy", "tab:purple"),
                                      ("n16_longer", "v", "N=16, SFT as long", "tab:brown")):
        if name not in models:
            continue
        m = models[name]
        n = 16 if name.startswith("n16") else 4
        offset = {"x": 1.08, "D": 0.92, "^": 1.17, "v": 1.26}[marker]  # beside the N = 16 point, not on it
        ax.errorbar([n * offset], [100 * m["maj"]],
                    yerr=[[100 * (m["maj"] - m["maj_ci"][0])], [100 * (m["maj_ci"][1] - m["maj"])]],
                    fmt=marker, color=color, capsize=4, label=f"{text}, maj@{k}")
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
