"""What a training run is asked to do (:class:`RunOptions`) and what it gives back
(:class:`TrainResult`), apart from the :class:`~hermes_model.training.trainer.Trainer` that does it,
so that callers (``loop.train``, the CLI) can name them without the trainer's imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hermes_model.errors import TrainingError
from hermes_model.nets.hermes import SegmentationNet

__all__ = ["MODES", "RunOptions", "TrainResult", "TrainingDiverged"]

MODES = ("train", "finetune", "incremental")


class TrainingDiverged(TrainingError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class RunOptions:
    """How to run a recipe (the command-line switches); see ``loop.train``."""

    iterations: int | None = None
    resume: bool = False
    init_weights: str | None = None
    mode: str = "train"
    progress: bool = True
    stop_after: int | None = None


@dataclass(frozen=True)
class TrainResult:
    """What a run produced.

    Attributes:
        output_dir: the run folder.
        iterations: iterations done in total (including those before a resume).
        completed: False when ``stop_after`` stopped the run before its last iteration.
        last / best: the checkpoints written (None when not written, e.g. on ranks > 0).
        best_dice / best_iteration: best mean validation Dice and where it was reached.
        validation: task id -> Dice of the last validation.
        final_loss: mean loss of the last logged window.
        seconds: training time (the loop, validation included), over all invocations.
        model: the trained weights (raw, not the EMA; the module DDP wrapped).
    """

    output_dir: Path
    iterations: int
    completed: bool
    last: Path | None
    best: Path | None
    best_dice: float | None
    best_iteration: int | None
    validation: dict[str, float]
    final_loss: float | None
    seconds: float
    model: SegmentationNet = field(repr=False)
