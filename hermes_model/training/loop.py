"""The training loop behind ``hermes train``, ``hermes finetune`` and ``hermes incremental``.

One iteration (paper Algorithm 1): a mixed batch from the sampler (each sample with its own
dataset's tasks, padded), augmentation on the training device, forward under autocast (CUDA
only: bf16, or fp16 with a GradScaler), BCE + lambda Dice on the valid tasks only, backward,
optional gradient clipping, an optimiser and scheduler step, an EMA update.

Modes:
- ``train``: a fresh model from the recipe, or ``train.init_from`` / ``init_weights`` with the
  recipe's ``trainable``;
- ``finetune`` (paper §4.3, transfer): start from weights, add the datasets' new tasks, train
  everything;
- ``incremental`` (paper §4.3): start from weights, add the new tasks, train only their
  parameters (``model.new_task_parameters()``); the model runs in eval mode so that nothing
  frozen can move. Before any weights are written the frozen tensors are compared with the
  starting ones, and at the end every old task group's probabilities on the validation cases
  must be bit-identical to the starting weights' (``validation.check_old_tasks_unchanged``);
  otherwise nothing is saved and IncrementalCheckError is raised.

Files in the run folder: ``last.safetensors`` (every ``checkpoint_every`` iterations and at the
end), ``best.safetensors`` (best mean validation Dice), both the EMA weights when EMA is on;
``state.safetensors`` + ``state.json`` (exact resume, ``resume.py``); ``log.jsonl``,
``log.csv`` and ``curves.png`` (``logbook.py``).

Validation runs every ``validation.every`` iterations and at the end, on rank 0, through the
sliding-window inference code on the cached validation cases (``validation.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from hermes_model.errors import ConfigError, OptionError
from hermes_model.training.distributed import DistContext, setup, teardown
from hermes_model.training.recipe import Recipe
from hermes_model.training.run_types import MODES, RunOptions, TrainingDiverged, TrainResult
from hermes_model.training.trainer import Trainer

__all__ = ["MODES", "RunOptions", "TrainResult", "TrainingDiverged", "train"]


def train(
    recipe: Recipe,
    output_dir: str | Path,
    *,
    iterations: int | None = None,
    resume: bool = False,
    init_weights: str | None = None,
    mode: str = "train",
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Run ``recipe`` into ``output_dir`` (see the module docstring and :class:`RunOptions`).

    Launched by ``torchrun``, every process calls this; the ranks share the work (DDP) and rank
    0 writes the files. Raises ConfigError for a bad recipe, card or data (naming the case),
    WeightsError for unusable starting weights, IncrementalCheckError and TrainingDiverged.
    """
    from hermes_model.device import resolve_device

    options = RunOptions(iterations, resume, init_weights, mode, progress, stop_after)
    _check_options(recipe, options)
    context = setup(resolve_device(recipe.train.device))
    try:
        with _threads(context):
            return Trainer(recipe, Path(output_dir), options, context).run()
    finally:
        teardown(context)


def _check_options(recipe: Recipe, options: RunOptions) -> None:
    if options.mode not in MODES:
        raise ConfigError(f"unknown training mode {options.mode!r}; use one of {MODES}")
    if options.iterations is not None and options.iterations < 0:
        raise OptionError(f"--iterations must be >= 0, got {options.iterations}")
    if options.stop_after is not None and options.stop_after < 1:
        raise ConfigError(f"stop_after must be >= 1, got {options.stop_after}")
    weights = options.init_weights or recipe.train.init_from
    if options.mode in ("finetune", "incremental") and not weights:
        raise ConfigError(
            f"{options.mode} needs starting weights: pass --weights (or set train.init_from "
            f"in {recipe.source})"
        )
    if options.mode == "train" and recipe.train.trainable == "new_tasks" and not weights:
        raise ConfigError(
            f"{recipe.source}: train.trainable = 'new_tasks' needs starting weights "
            "(train.init_from or --weights)"
        )


@contextlib.contextmanager
def _threads(context: DistContext) -> Iterator[None]:
    """Split the CPU threads between the ranks of a CPU job, restoring the count afterwards."""
    saved = torch.get_num_threads()
    if context.distributed and context.device.type == "cpu":
        torch.set_num_threads(max(1, saved // context.world_size))
    try:
        yield
    finally:
        torch.set_num_threads(saved)
