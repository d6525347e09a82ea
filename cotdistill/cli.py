"""The `cotdistill` command: argparse only. The stages, their order and their options come from cotdistill/stages/.

    cotdistill run pipelines/demo.yaml                     every stage in order, skipping those already up to date
    cotdistill STAGE pipelines/demo.yaml key=value ...     one stage, with overrides of the config's keys

Exit codes: 0 the work is done; 2 a mistake in the config or the data, or a stage that cannot go on (the message
says why and what to run); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM): journaled work is kept.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from cotdistill import __version__
from cotdistill.config.load import load_config, merge_overrides
from cotdistill.core.fields import ConfigError
from cotdistill.core.logs import setup_logging
from cotdistill.core.prompts import PromptError
from cotdistill.questions.sources import SourceError
from cotdistill.stages import BY_NAME, STAGES, pipeline, run_stages
from cotdistill.stages.base import Stage

logger = logging.getLogger("cotdistill")

OUTPUTS = ("Outputs go to <output_dir>/<run_name>/ (output_dir: runs, relative to the directory the command runs "
           "in); the resolved config is written beside them, and every line of the run, vLLM's and TRL's included, "
           "to <output_dir>/<run_name>/logs/.")


class Terminated(Exception):
    """SIGTERM, as a batch scheduler sends it: handled like Ctrl-C, with its own exit code."""


def add_options(parser: argparse.ArgumentParser, stages: list[Stage]) -> None:
    """The options the stages declare, and --force where a stage refuses outputs made with other settings."""
    if any(stage.on_change not in ("discard", "keep") for stage in stages):
        parser.add_argument("--force", action="store_true",
                            help="discard outputs made with other settings instead of refusing")
    for option in (o for stage in stages for o in stage.options):
        if option.parse is None:
            parser.add_argument(option.flag, action="store_true", help=option.help)
        else:
            parser.add_argument(option.flag, type=option.parse, metavar=option.metavar, help=option.help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cotdistill", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Offline chain-of-thought distillation: teacher rationales, filtered, into a student.",
        epilog="examples:\n  cotdistill run pipelines/demo.yaml\n" + "".join(
            f"  cotdistill {s.name} pipelines/demo.yaml {s.example}\n" for s in STAGES[:1] if s.example)
        + "  cotdistill COMMAND --help\n\n" + OUTPUTS)
    parser.add_argument("--version", action="version", version=f"cotdistill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, tuple[str, list[Stage]]] = {
        "run": ("every stage in order: " + ", ".join(s.name for s in STAGES) + " (those the config does not ask "
                "for are left out), each skipped when its outputs are complete and made with today's settings",
                list(STAGES)),
        **{stage.name: (stage.help, [stage]) for stage in STAGES},
    }
    for name, (help_text, stages) in commands.items():
        example = stages[0].example if len(stages) == 1 else "key=value"
        p = sub.add_parser(name, help=help_text, description=help_text + ".\n\n" + OUTPUTS,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=f"example:\n  cotdistill {name} pipelines/demo.yaml {example}".rstrip())
        p.add_argument("config", help="a pipeline YAML, e.g. pipelines/demo.yaml")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted overrides of the config's keys (docs/config.md lists them all)")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        add_options(p, stages)
    return parser


def terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may also follow a flag (`STAGE CONFIG --dry-run key=value`), which argparse leaves over.
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    overrides = [*args.overrides, *extra]
    setup_logging(args.verbose, args.command)
    signal.signal(signal.SIGTERM, terminate)
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "overrides", "verbose", "force")}
    try:
        config = load_config(args.config, overrides)
        stages = pipeline(config) if args.command == "run" else [BY_NAME[args.command]]
        alone = [s for s in stages for o in s.options if o.alone and given.get(o.dest)]
        stages = alone or stages  # a job array's part runs its stage alone: the rest runs once every part is done
        for option in (o for s in stages for o in s.options if o.inherits is not None and given.get(o.dest)):
            recorded = option.inherits(config)
            if recorded is not None:  # an earlier part's overrides, which this one runs with too
                merged = merge_overrides(recorded, overrides, f"the first part ({option.flag})")
                if merged != overrides:
                    logger.info("%s: running with the first part's overrides too: %s", option.flag, " ".join(merged))
                    config = load_config(args.config, merged)
        for stage, summary in run_stages(config, stages, force=getattr(args, "force", False), **given):
            shown = summary.get("shown") if isinstance(summary, dict) else None
            shown = shown or stage.show(summary)
            if shown:
                print(shown)
        if args.command == "run" and not alone:
            logger.info("done: %s", config.paths.metrics)
    except KeyboardInterrupt:
        logger.error("interrupted; journaled work is kept, rerun to resume")
        sys.exit(130)
    except Terminated:
        logger.error("terminated; journaled work is kept, rerun to resume")
        sys.exit(143)
    except (ConfigError, SourceError, PromptError, ValueError, RuntimeError, FileNotFoundError) as e:
        logger.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
