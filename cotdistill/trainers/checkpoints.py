"""Checkpoints of the training stages (train: SFT or KD; dpo: preference pairs): resuming from the newest
complete one, and the final model moved into place whole.

    result, checkpoint, steps = train_resuming(trainer, "train")
    finish(trainer, config.paths.trained_model, merge_adapter=True, card=text, stats=stats)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from cotdistill.core.shards import replace_dir_atomic, write_text_atomic

logger = logging.getLogger(__name__)

def run_stats(result: Any, checkpoint: Path | None, steps: Any) -> dict[str, Any]:
    """What one training invocation did (train_resuming's results), for the stage's stats.json."""
    return {
        "global_steps": result.global_step,
        "resumed_from_checkpoint": checkpoint.name if checkpoint is not None else None,
        "resumed_from_step": steps.start_step,  # as the trainer loaded it, not as the folder name claims
        "steps_this_run": steps.count,
        "train_loss": result.training_loss,
        "train_runtime_s": result.metrics.get("train_runtime"),
    }


def finish(trainer: Any, target: Path, merge_adapter: bool, card: str, stats: dict[str, Any]) -> dict[str, Any]:
    """The final model swapped into `target` (save_final_model), then the stage's stats.json beside it, last: the
    stage is done. Returns the stats on rank 0, {} on the others."""
    if not save_final_model(trainer, target, merge_adapter, card):
        return {}
    write_text_atomic(json.dumps(stats, indent=2) + "\n", target.parent / "stats.json")
    logger.info("%s: saved %s (%s)", target.parent.name, target, stats)
    return stats


def save_final_model(trainer: Any, target: Path, merge_adapter: bool, card: str) -> bool:
    """The trained model, its tokenizer and `card` (README.md) written to a temporary folder beside `target`,
    then swapped into place with its fsyncs (shards.replace_dir_atomic). With `merge_adapter` (a LoRA run)
    the adapter is folded into the base (an ordinary folder vLLM serves), else saved alone. Every rank calls it
    (save_model is a collective under FSDP/DeepSpeed); only rank 0 writes, and only it gets True."""
    tmp_dir = target.with_name(f".{target.name}.tmp")
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp_dir, ignore_errors=True)
    if merge_adapter:
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(str(tmp_dir))
    else:  # a full model, or the adapter alone (adapter_config.json names the base; evaluate merges it)
        trainer.save_model(str(tmp_dir))
    if not trainer.is_world_process_zero():
        return False
    trainer.processing_class.save_pretrained(str(tmp_dir))
    (tmp_dir / "README.md").write_text(card)
    replace_dir_atomic(tmp_dir, target)
    return True


def checkpoint_problem(checkpoint: Path, *, require_optimizer: bool = True) -> str | None:
    """Why `checkpoint` (a `checkpoint-N` folder) cannot be resumed from, or None when it is complete.

    `Trainer._save_checkpoint` (transformers 5.x) writes straight into `checkpoint-N`, with no temporary folder
    and no rename: the model (weights, config, tokenizer, training_args.bin), then optimizer.pt, scheduler.pt,
    rng_state.pth and, last, trainer_state.json (a plain, non-atomic write). So a kill while saving leaves a
    folder without trainer_state.json or with a truncated one: a trainer_state.json that parses and names step N
    is the mark of completion. The weights and optimizer checks catch folders damaged another way (a copy cut
    short, a file truncated to nothing): transformers refuses a folder without weights, and without an optimizer
    it silently resumes with a fresh one.
    """
    from transformers.trainer import (
        FSDP_MODEL_NAME, OPTIMIZER_NAME, OPTIMIZER_NAME_BIN, SCHEDULER_NAME, TRAINER_STATE_NAME,
    )
    from transformers.utils import (
        ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME,
        WEIGHTS_NAME,
    )

    def non_empty(path: Path) -> bool:
        return path.is_file() and path.stat().st_size > 0

    try:
        state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    except FileNotFoundError:
        return f"no {TRAINER_STATE_NAME}, which the trainer writes last"
    except (ValueError, OSError) as e:  # truncated mid-write: JSONDecodeError, UnicodeDecodeError
        return f"unreadable {TRAINER_STATE_NAME} ({e})"
    step = int(checkpoint.name.rsplit("-", 1)[1])
    if not isinstance(state, dict) or state.get("global_step") != step:
        return f"{TRAINER_STATE_NAME} is not the state at step {step}"
    # The weights transformers' Trainer._load_from_checkpoint accepts: single or sharded, full or adapter, FSDP.
    weights = (SAFE_WEIGHTS_NAME, WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME,
               ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME)
    subdirs = [p for p in checkpoint.iterdir() if p.is_dir()]
    if not (any(non_empty(checkpoint / name) for name in weights)
            or any(FSDP_MODEL_NAME in p.name for p in subdirs) or non_empty(checkpoint / f"{FSDP_MODEL_NAME}.bin")
            or any(non_empty(p / name) for p in subdirs
                   for name in (ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME))):
        return "no model weights, or empty ones"
    if require_optimizer:  # as Trainer._load_optimizer_and_scheduler looks for them (FSDP: an optimizer_* folder)
        if not (non_empty(checkpoint / OPTIMIZER_NAME) or non_empty(checkpoint / OPTIMIZER_NAME_BIN)
                or any("optimizer" in p.name for p in subdirs)):
            return f"no {OPTIMIZER_NAME}, or an empty one"
        if not non_empty(checkpoint / SCHEDULER_NAME):
            return f"no {SCHEDULER_NAME}, or an empty one"
    return None


def set_aside(checkpoint: Path) -> Path:
    """Move a partial checkpoint into `partial/` beside it; returns where it went.

    transformers' get_last_checkpoint and save_total_limit rotation only look at `checkpoint-*` directly in the
    output folder, so there it is neither resumed from nor rotated away: kept for the user to inspect or delete.
    """
    parked = checkpoint.parent / "partial"
    parked.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = parked / f"{checkpoint.name}.{stamp}", 1
    while target.exists():
        target, n = parked / f"{checkpoint.name}.{stamp}-{n}", n + 1
    checkpoint.rename(target)
    return target


def resume_checkpoint(output_dir: Path, *, require_optimizer: bool = True) -> Path | None:
    """The newest complete checkpoint in `output_dir`, or None to train from the start.

    Newer partial checkpoints (a run killed while saving) are set aside with a warning: left in place, they
    would be what transformers' get_last_checkpoint picks, and the trainer would refuse it on every rerun.
    """
    from transformers.trainer_utils import get_last_checkpoint

    if not output_dir.is_dir():
        return None
    seen = set()
    while (last := get_last_checkpoint(str(output_dir))) is not None:
        checkpoint = Path(last)
        if checkpoint in seen:  # set aside, yet still there: never loop
            raise RuntimeError(f"{checkpoint}: could not move this partial checkpoint aside")
        seen.add(checkpoint)
        problem = checkpoint_problem(checkpoint, require_optimizer=require_optimizer)
        if problem is None:
            return checkpoint
        try:
            moved = set_aside(checkpoint)
        except FileNotFoundError:  # another rank (another node on a shared filesystem) moved it first
            continue
        logger.warning("train: %s is a partial checkpoint (%s), left by a run stopped while saving it; "
                       "moved it aside to %s and resuming from an earlier one", checkpoint.name, problem, moved)
    return None


def step_counter() -> Any:
    """A TrainerCallback counting the optimizer steps this invocation runs, and the step it started from."""
    from transformers import TrainerCallback

    class StepCounter(TrainerCallback):
        def __init__(self) -> None:
            self.start_step = 0
            self.count = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start_step = state.global_step  # after the trainer loaded the checkpoint's trainer_state.json

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.count += 1

    return StepCounter()


def train_resuming(trainer: Any, stage: str) -> tuple[Any, Path | None, Any]:
    """trainer.train(), resumed from the newest complete checkpoint in its output folder (partial ones set aside):
    (its TrainOutput, the checkpoint resumed from or None, the StepCounter of this invocation)."""
    args = trainer.args
    # The main process sets partial checkpoints aside first, so the other ranks then pick the same checkpoint.
    with args.main_process_first(desc="choosing the checkpoint to resume from"):
        checkpoint = resume_checkpoint(Path(args.output_dir),
                                       require_optimizer=not (args.save_only_model or trainer.is_deepspeed_enabled))
    if checkpoint is not None:
        logger.info("%s: resuming from the last checkpoint, %s", stage, checkpoint)
    steps = step_counter()
    trainer.add_callback(steps)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    return result, checkpoint, steps
