"""The `cotdistill` command: argparse only. The stages, their order and their options come from cotdistill/stages/.

    cotdistill run pipelines/demo.yaml                     every stage in order, skipping those already up to date
    cotdistill STAGE pipelines/demo.yaml key=value ...     one stage, e.g. `cotdistill generate ... generate.num_samples=4`
"""

from __future__ import annotations

import argparse
import logging
import sys

from cotdistill.config.load import dump_config, load_config
from cotdistill.core.fields import ConfigError
from cotdistill.core.prompts import PromptError
from cotdistill.core.shards import create_text_once, write_text_atomic
from cotdistill.questions.sources import SourceError
from cotdistill.stages import BY_NAME, STAGES, pipeline, run_stages
from cotdistill.stages.base import Stage

logger = logging.getLogger("cotdistill")


def add_options(parser: argparse.ArgumentParser, stages: list[Stage]) -> None:
    """The options the stages declare, and --force where a stage refuses outputs made with other settings."""
    if any(stage.on_change not in ("discard", "keep") for stage in stages):
        parser.add_argument("--force", action="store_true",
                            help="discard outputs made with other settings (generate's) instead of refusing")
    for option in (o for stage in stages for o in stage.options):
        if option.parse is None:
            parser.add_argument(option.flag, action="store_true", help=option.help)
        else:
            parser.add_argument(option.flag, type=option.parse, metavar=option.metavar, help=option.help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cotdistill", description="Offline chain-of-thought distillation: "
                                     "teacher rationales, filtered, into a student.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, tuple[str, list[Stage]]] = {
        "run": ("every stage in order (" + ", ".join(s.name for s in STAGES) + "; those not configured are "
                "skipped), each skipped when its outputs are complete and made with today's settings", list(STAGES)),
        **{stage.name: (stage.help, [stage]) for stage in STAGES},
    }
    for name, (help_text, stages) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("config", help="a pipeline YAML, e.g. pipelines/demo.yaml")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted overrides, e.g. generate.num_samples=4 train.sft.max_steps=10")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        add_options(p, stages)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may also follow a flag (`generate CONFIG --dry-run key=value`), which argparse leaves over.
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "overrides", "verbose", "force")}
    try:
        config = load_config(args.config, overrides)
        stages = pipeline(config) if args.command == "run" else [BY_NAME[args.command]]
        alone = [s for s in stages for o in s.options if o.alone and given.get(o.dest)]
        stages = alone or stages  # a job array's part runs its stage alone: the rest runs once every part is done
        instead = [o for s in stages for o in s.options if o.instead is not None and given.get(o.dest)]
        if not instead:
            if alone:  # the parts of a job array run at once: the first writes the config, the others leave it
                create_text_once(dump_config(config), config.paths.config)
            else:
                write_text_atomic(dump_config(config), config.paths.config)
        for stage, summary in run_stages(config, stages, force=getattr(args, "force", False), **given):
            shown = summary.get("shown") if isinstance(summary, dict) else None
            shown = shown or stage.show(summary)
            if shown:
                print(shown)
        if args.command == "run" and not alone:
            logger.info("done: %s", config.paths.metrics)
    except (ConfigError, SourceError, PromptError, ValueError, RuntimeError, FileNotFoundError) as e:
        logger.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
