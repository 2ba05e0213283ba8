"""What a :class:`~hermes_model.training.trainer.Trainer` does with validation: score its
exported weights on the cached val cases (``validation.validate_cached``), keep the best as
``best.safetensors`` and log the scores; and, at the end of incremental learning, check that the
old task groups still predict exactly what the starting weights did (or leave no weights).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from hermes_model.training import checkpointing
from hermes_model.training.logbook import utc_now
from hermes_model.training.validation import (
    IncrementalCheckError,
    check_old_tasks_unchanged,
    validate_cached,
)

if TYPE_CHECKING:
    from hermes_model.training.trainer import Trainer

__all__ = ["validate_and_keep_best", "check_old_outputs"]

log = logging.getLogger(__name__)


def validate_and_keep_best(trainer: Trainer) -> None:
    """Score the exported weights on the cached val cases (main process only); a better mean
    replaces ``best.safetensors``; the scores go to the run log."""
    result = validate_cached(
        trainer.export_model, trainer.data.val, trainer.groups, trainer.window, trainer.device
    )
    assert trainer.runlog is not None  # the main process always keeps the log
    if not result.tasks:
        log.warning("no validation cases (split %r)", trainer.recipe.validation.split)
        return
    mean = result.mean
    improved = math.isfinite(mean) and (trainer.best_dice is None or mean > trainer.best_dice)
    trainer.last_val = dict(result.tasks)
    if improved:
        trainer.best_dice, trainer.best_iteration = mean, trainer.iteration
        checkpointing.save_weights(trainer, "best.safetensors")
    trainer.runlog.add({
        "kind": "val", "iteration": trainer.iteration, "val_dice": mean,
        "val_tasks": result.tasks, "val_cases": len(result.cases), "best": improved,
        "elapsed_s": round(trainer.seconds(), 3), "time": utc_now(),
    })  # fmt: skip


def check_old_outputs(trainer: Trainer) -> None:
    """Incremental learning: old groups bit-identical on the validation cases, or no files."""
    assert trainer.start is not None
    if trainer.main:
        start = trainer.start.model.to(trainer.device)
        try:
            trainer.check_count = check_old_tasks_unchanged(
                start, trainer.export_model, trainer.start.task_groups, trainer.data.val,
                trainer.window, trainer.device,
            )  # fmt: skip
        except IncrementalCheckError:
            for name in ("best.safetensors", "last.safetensors"):
                (trainer.dir / name).unlink(missing_ok=True)
            raise
        finally:
            trainer.start.model.to("cpu")
    trainer.ctx.barrier()
