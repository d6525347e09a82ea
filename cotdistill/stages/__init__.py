"""The stages of a run, in order: the one list the command line and `cotdistill run` read.

    for stage in pipeline(config): stage.run(config)        # what `cotdistill run CONFIG` does (run_stages)

Each stage is a module (or folder) here holding one `Stage` (base.py, the contract). A stage never imports
another: it names what it reads by the outputs core/paths.py declares. Adding a stage: its module, its line
below, its config section (config/sections.py) and its outputs (core/paths.py).
"""

from __future__ import annotations

from typing import Any

from cotdistill.config.run import RunConfig
from cotdistill.stages import dpo, evaluate, filter, generate, onpolicy, prune, score, train
from cotdistill.stages.base import Stage

STAGES: tuple[Stage, ...] = (generate.STAGE, filter.STAGE, prune.STAGE, score.STAGE, train.STAGE, dpo.STAGE,
                             onpolicy.STAGE, evaluate.STAGE)
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}


def pipeline(config: RunConfig) -> list[Stage]:
    """The stages `cotdistill run` runs, in order: those the config asks for (prune, score, dpo and onpolicy only
    when set)."""
    return [stage for stage in STAGES if stage.wanted(config)]


def run_stages(config: RunConfig, stages: list[Stage], force: bool = False,
               **options: Any) -> list[tuple[Stage, dict[str, Any]]]:
    """Every stage's checks first (a mistake in the last stage's settings costs seconds, not the first stage's
    hours), then each stage in turn under the contract; returns each one's summary. `options`: the command line's
    stage options, each given to the stage that declares it."""
    for stage in stages:
        stage.preflight(config)
    done = []
    for stage in stages:
        own = {o.dest: options[o.dest] for o in stage.options if options.get(o.dest) is not None}
        done.append((stage, stage.run(config, force=force, **own)))
    return done
