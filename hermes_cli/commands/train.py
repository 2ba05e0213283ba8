"""``hermes train``, ``hermes finetune`` and ``hermes incremental``: run a training recipe.

The work is ``hermes_model.training.loop.train``; these commands read the recipe (with
``--set`` overrides), call it and print the outcome. Under ``torchrun`` every process runs the
same command; rank 0 prints. torch is imported only when a command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from hermes_cli._common import DebugOption, handle_errors, out
from hermes_model.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

if TYPE_CHECKING:
    from hermes_model.training.loop import TrainResult

Config = Annotated[
    Path,
    typer.Option(
        "--config", "-c", help="Training recipe (TOML), e.g. train/recipes/hippocampus.toml. "
        "Required; its datasets, model, schedule and validation define the run.",
    ),
]  # fmt: skip
Output = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Run folder (checkpoints, logs, resume state). Default: the "
        "recipe's 'output'. A folder that holds a run is only continued with --resume.",
    ),
]  # fmt: skip
Iterations = Annotated[
    int | None,
    typer.Option(
        help="Total optimiser steps, replacing train.iterations (the learning-rate schedule "
        "spans them). Default: the recipe's; fewer is faster but learns less.",
    ),
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume", help="Continue the run in --output exactly from its last saved state "
        "(state.safetensors; every train.checkpoint_every iterations). Default off: a new run.",
    ),
]  # fmt: skip
Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override one recipe value, KEY=VALUE with a dotted key and a TOML value, "
        "repeatable (e.g. --set train.batch_size=4 --set datasets.0.subset=0.1). Default: none.",
    ),
]  # fmt: skip
Progress = Annotated[
    bool,
    typer.Option(
        help="Live view (loss, lr, it/s, ETA, validation Dice) and cache bars on stderr. "
        "Default on; turn off for batch jobs whose logs should stay small.",
    ),
]
Weights = Annotated[
    str,
    typer.Option(
        help="Starting weights: registry name, .safetensors file or hf://org/repo@commit/file. "
        "Required; the run adds the datasets' new tasks to them.",
    ),
]


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["train.iterations=10", 'name="x"']`` -> ``{"train.iterations": 10, "name": "x"}``;
    a value that is not TOML is taken as a string."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.batch_size=4")
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            value = text
        overrides[key.strip()] = value
    return overrides


def _summary(result: TrainResult) -> Table:
    done = "finished" if result.completed else "stopped early (continue with --resume)"
    table = Table(title=f"training {done}")
    table.add_column("item")
    table.add_column("value", overflow="fold")
    table.add_row("run folder", str(result.output_dir))
    table.add_row("iterations", str(result.iterations))
    if result.best_dice is not None:
        table.add_row(
            "best mean Dice", f"{result.best_dice:.4f} (iteration {result.best_iteration})"
        )
    for task, dice in result.validation.items():
        table.add_row(f"last Dice {task}", f"{dice:.4f}")
    if result.final_loss is not None:
        table.add_row("final loss", f"{result.final_loss:.4f}")
    table.add_row("training time", f"{result.seconds:.1f} s")
    for path in (result.best, result.last):
        if path is not None:
            table.add_row(path.stem, str(path))
    return table


def _run(
    config: Path, output: Path | None, iterations: int | None, resume: bool,
    sets: list[str] | None, progress: bool, weights: str | None, mode: str,
) -> None:  # fmt: skip
    from hermes_model.training.loop import train
    from hermes_model.training.recipe import load_recipe

    recipe = load_recipe(config, **parse_sets(sets))
    result = train(
        recipe, output or Path(recipe.output), iterations=iterations, resume=resume,
        init_weights=weights, mode=mode, progress=progress,
    )  # fmt: skip
    if result.last is not None:  # rank 0 (or a single process)
        out.print(_summary(result))


def train_command(
    config: Config, output: Output = None, iterations: Iterations = None,
    resume: Resume = False, sets: Sets = None, progress: Progress = True,
    debug: DebugOption = False,
) -> None:  # fmt: skip
    """Train a model on a recipe's datasets (single process, or every process of torchrun)."""
    with handle_errors(debug):
        _run(config, output, iterations, resume, sets, progress, None, "train")


def finetune_command(
    weights: Weights, config: Config, output: Output = None, iterations: Iterations = None,
    resume: Resume = False, sets: Sets = None, progress: Progress = True,
    debug: DebugOption = False,
) -> None:  # fmt: skip
    """Transfer learning: start from weights, add the recipe's new tasks, train everything."""
    with handle_errors(debug):
        _run(config, output, iterations, resume, sets, progress, weights, "finetune")


def incremental_command(
    weights: Weights, config: Config, output: Output = None, iterations: Iterations = None,
    resume: Resume = False, sets: Sets = None, progress: Progress = True,
    debug: DebugOption = False,
) -> None:  # fmt: skip
    """Incremental learning: train only new task tokens; old tasks' outputs stay bit-identical."""
    with handle_errors(debug):
        _run(config, output, iterations, resume, sets, progress, weights, "incremental")
