"""The `cotdistill` command.

    cotdistill run pipelines/demo.yaml                     every stage, skipping those already up to date
    cotdistill generate pipelines/demo.yaml generate.num_samples=4
    cotdistill filter|prune|score|train|dpo|evaluate CONFIG [key=value ...]

Every command goes through the same stage contract (cotdistill/stages.py): a stage is skipped when its outputs are
complete and made with today's settings, redone otherwise, and generate's outputs made with other settings are
refused unless --force. Each stage reads only what earlier stages wrote under runs/<run_name>/, and the resolved
configuration is written to runs/<run_name>/config.yaml.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cotdistill.config import ConfigError, RunConfig, dump_config, load_config
from cotdistill.prompts import PromptError
from cotdistill.shards import create_text_once, write_text_atomic
from cotdistill.sources import SourceError
from cotdistill.stages import Stage

logger = logging.getLogger("cotdistill")

STAGES = ("generate", "filter", "prune", "score", "train", "dpo", "evaluate")  # the order of a run


def stage(name: str) -> Stage:
    """A stage by name: the STAGE of module cotdistill.<name>, imported when asked for."""
    return importlib.import_module(f"cotdistill.{name}").STAGE


def pipeline_stages(config: RunConfig) -> list[str]:
    """The stages `cotdistill run` runs, in order: prune, score and dpo only when configured."""
    return [name for name in STAGES if stage(name).wanted(config)]


def preflight(config: RunConfig, stages: list[str]) -> None:
    """Read now what the stages about to run will need, so that a bad row or a missing file fails in seconds,
    before any engine starts or any teacher token is paid for (load_config has checked the values)."""
    from cotdistill.sources import QuestionSource

    if "generate" in stages:
        QuestionSource(config.data)
    if "train" in stages:
        from trl import SFTConfig

        check_passed_through(SFTConfig, config.train.sft, "train.sft")
        if config.train.loss == "kd":  # the tokenizers alone: a vocabulary mismatch costs seconds, not a run
            from cotdistill.train import check_kd_vocabulary

            check_kd_vocabulary(config)
    if "dpo" in stages and config.dpo is not None:
        from trl import DPOConfig

        check_passed_through(DPOConfig, config.dpo, "dpo")
    if "evaluate" in stages and (config.evaluate.models or config.evaluate.extra_models):
        if config.evaluate.data is None:
            raise ConfigError("evaluate.data is not set: name the test questions to evaluate on")
        QuestionSource(config.evaluate.data)


def check_passed_through(cls: type, values: dict, key: str) -> None:
    """A section passed to a TRL config as is (train.sft -> SFTConfig, dpo -> DPOConfig): every key one of its
    fields, and numbers where numbers belong."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{key}: unknown {cls.__name__} field '{unknown[0]}'")
    for name, value in values.items():  # TRL keeps a string where a number belongs
        default = fields[name].default
        if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
            raise ConfigError(f"{key}.{name}: must be a number, got {value!r} (YAML reads 1e-4 as text: "
                              "write 1.0e-4)")


def part_of(text: str) -> tuple[int, int]:
    """`--part I/K` -> (I, K)."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/K, e.g. 0/4") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text!r}: I must be at least 0 and less than K")
    return index, count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cotdistill", description=__doc__.split("\n\n")[0].strip() +
                                     ": offline chain-of-thought distillation.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {name: stage(name).help for name in STAGES}
    commands["run"] = ("every stage in order (prune and score when configured), skipping stages that are complete "
                       "and made with today's settings (their fingerprint matches)")
    for name, help_text in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("config", help="a pipeline YAML, e.g. pipelines/demo.yaml")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted overrides, e.g. generate.num_samples=4 train.sft.max_steps=10")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        if name in ("generate", "run"):
            p.add_argument("--force", action="store_true",
                           help="discard generate outputs made with other settings instead of refusing")
            p.add_argument("--part", metavar="I/K", type=part_of,
                           help="a job array's part I of K (0 <= I < K): generate only the shards whose index is "
                                "I modulo K, then stop; K processes or Slurm array tasks share one run folder")
        if name == "generate":
            p.add_argument("--dry-run", action="store_true",
                           help="count the requests, prompt tokens and estimated cost; send nothing")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may also follow a flag (`generate CONFIG --dry-run key=value`), which argparse leaves over.
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        config = load_config(args.config, args.overrides)
        if getattr(args, "dry_run", False):
            from cotdistill.generate import dry_run

            preflight(config, ["generate"])
            plan = dry_run(config)
            print("generate --dry-run (nothing sent): " + ", ".join(f"{k} {v:,}" for k, v in plan.items()))
            return
        part = getattr(args, "part", None)
        if part:  # the parts of a job array run at once: the first writes the config, the others leave it
            create_text_once(dump_config(config), config.paths.config)
        else:
            write_text_atomic(dump_config(config), config.paths.config)
        names = ["generate"] if part else pipeline_stages(config) if args.command == "run" else [args.command]
        preflight(config, names)
        for name in names:
            result = stage(name).run(config, force=getattr(args, "force", False), **({"part": part} if part else {}))
            if name == "evaluate":
                from cotdistill.report import format_table

                print(format_table(result["models"]))
        if args.command == "run" and not part:
            logger.info("done: %s", config.paths.metrics)
    except (ConfigError, SourceError, PromptError, ValueError, RuntimeError, FileNotFoundError) as e:
        logger.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
