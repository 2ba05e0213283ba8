"""What a :class:`~hermes_model.training.trainer.Trainer` writes and reads back: the weights
(``last`` / ``best`` ``.safetensors`` with provenance metadata) and the exact-resume state
(``resume.py``'s format), plus the incremental-learning guard on every write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hermes_model.errors import ConfigError
from hermes_model.training.logbook import utc_now
from hermes_model.training.prepare import data_licence, git_commit
from hermes_model.training.resume import (
    TrainState,
    capture_rng,
    flatten_optimizer,
    global_rng_doc,
    load_state,
    restore_rng,
    save_state,
    unflatten_optimizer,
)
from hermes_model.training.validation import IncrementalCheckError, changed_tensors

if TYPE_CHECKING:
    from hermes_model.training.trainer import Trainer

__all__ = ["save_weights", "checkpoint", "resume", "checkpoint_metadata"]


def _assert_frozen(trainer: Trainer) -> None:
    changed = changed_tensors(trainer.reference, trainer.export_model)
    if changed:
        raise IncrementalCheckError(
            f"incremental learning changed {len(changed)} frozen tensor(s) of the starting "
            f"weights (first: {changed[0]}); nothing was saved. Only new task parameters "
            "may train: check the architecture's new_task_parameters()"
        )


def save_weights(trainer: Trainer, name: str) -> Path:
    """Write the exported weights (EMA when on) as ``name`` in the run folder.

    Incremental runs first check that every frozen tensor equals the starting weights'.
    """
    from hermes_model.weights.checkpoint import MIRROR_AXES_KEY, save_checkpoint

    if trainer.incremental:
        _assert_frozen(trainer)
    return save_checkpoint(
        trainer.export_model,
        trainer.dir / name,
        preprocess=trainer.recipe.preprocess,
        task_groups=trainer.groups,
        group_spacing=group_spacing(trainer),
        training_statistics=training_statistics(trainer),
        **{MIRROR_AXES_KEY: mirror_axes(trainer), **checkpoint_metadata(trainer)},
    )


def mirror_axes(trainer: Trainer) -> list[int]:
    """The canonical axes this run mirrored its patches along (none when it did not mirror)."""
    a = trainer.recipe.augment
    return sorted(a.mirror_axes) if a.enabled and a.p_mirror > 0 else []


def training_statistics(trainer: Trainer) -> dict[str, Any]:
    """Per task group, what its training scans looked like (``hermes_model.pipeline.ood``:
    spacing, field of view, intensity percentiles), so that segment can warn about scans far
    outside it: the run's datasets from their cache, the starting weights' other groups as they
    recorded them."""
    from hermes_model.pipeline.ood import KEY

    recorded = dict(_start_metadata(trainer).get(KEY, {}))
    own = {}
    if trainer.total > 0 or trainer.start is None:
        for entry, cached in zip(trainer.recipe.datasets, trainer.data.train, strict=True):
            own[cached.name] = cached.training_statistics(split=entry.split)
    known = {**recorded, **own}
    return {group: known[group] for group in trainer.groups if group in known}


def group_spacing(trainer: Trainer) -> dict[str, list[float]]:
    """Spacing (mm) of every task group written: the run's datasets as cached, the starting
    weights' other groups as they recorded them (``group_spacing.spacing_for_group``)."""
    from hermes_model.pipeline.group_spacing import spacing_for_group

    own = trainer.data.group_spacing
    start = _start_metadata(trainer)
    return {g: own[g] if g in own else list(spacing_for_group(start, g)) for g in trainer.groups}


def _start_metadata(trainer: Trainer) -> dict[str, Any]:
    """The starting weights' checkpoint metadata; empty for a run from scratch."""
    return getattr(trainer.start.model, "metadata", {}) if trainer.start else {}


def checkpoint(trainer: Trainer, position: int) -> None:
    """Write ``last.safetensors`` and the resume state (every rank's RNGs gathered on rank 0);
    ``position`` is the sampler position after the last consumed batch."""
    state = _capture(trainer, position)
    if trainer.main and state is not None:
        save_weights(trainer, "last.safetensors")
        save_state(trainer.dir, state)
    trainer.ctx.barrier()


def _capture(trainer: Trainer, position: int) -> TrainState | None:
    blobs = trainer.ctx.gather_bytes(capture_rng(trainer.device, trainer.augmenter.generator))
    if not trainer.main:
        return None
    state = TrainState()
    state.put("model", trainer.model.state_dict())
    if trainer.ema is not None:
        state.put("ema", trainer.ema.state_dict())
    if trainer.supervised is not None:
        state.put("deep_supervision", trainer.supervised.project.state_dict())
    tensors, optimizer_doc = flatten_optimizer(trainer.optimizer.state_dict())
    state.put("optimizer", tensors)
    for rank, blob in enumerate(blobs):
        state.tensors[f"rng/packed/{rank}"] = blob.clone()
    keys, rng_doc = global_rng_doc()
    state.tensors["rng/numpy_keys"] = keys
    scheduler = trainer.scheduler.state_dict()
    scheduler["lr_lambdas"] = [None] * len(scheduler["lr_lambdas"])  # rebuilt from the recipe
    state.doc = {
        **_identity(trainer), **rng_doc,
        "iteration": trainer.iteration, "total_iterations": trainer.total,
        "sampler": trainer.sampler.state_dict(position=position),
        "optimizer": optimizer_doc, "scheduler": scheduler,
        "scaler": trainer.scaler.state_dict(), "best_dice": trainer.best_dice,
        "best_iteration": trainer.best_iteration, "last_validation": trainer.last_val,
        "validated_at": trainer.validated_at, "final_loss": trainer.final_loss,
        "training_seconds": trainer.seconds(), "started": trainer.started,
    }  # fmt: skip
    return state


def _identity(trainer: Trainer) -> dict[str, Any]:
    """What must match for a resume to be exact (JSON-normalised)."""
    r = trainer.recipe.to_dict()
    keys = ("model", "preprocess", "optimizer", "schedule", "loss", "augment", "ema", "seed")
    recipe = {k: r[k] for k in keys}
    recipe["train"] = {k: r["train"][k] for k in ("batch_size", "amp", "grad_clip")}
    doc = {
        "mode": trainer.options.mode,
        "world_size": trainer.ctx.world_size,
        "task_ids": list(trainer.model.task_ids),
        "recipe": recipe,
    }
    return dict(json.loads(json.dumps(doc)))


def resume(trainer: Trainer) -> None:
    """Load the run folder's state into ``trainer`` (built from the same recipe)."""
    state = load_state(trainer.dir)
    doc = state.doc
    for key, value in _identity(trainer).items():
        if doc.get(key) != value:
            raise ConfigError(
                f"{trainer.dir}: cannot resume exactly: the saved run's {key} differs "
                f"({_difference(doc.get(key), value)}); resume with the same recipe, mode "
                "and number of processes, or start a new --output"
            )
    trainer.model.load_state_dict(state.section("model"))
    trainer.optimizer.load_state_dict(
        unflatten_optimizer(state.section("optimizer"), doc["optimizer"])
    )
    trainer.scheduler.load_state_dict(doc["scheduler"])
    if trainer.ema is not None:
        trainer.ema.load_state_dict(state.section("ema"))
    if trainer.supervised is not None:
        trainer.supervised.project.load_state_dict(state.section("deep_supervision"))
    if doc["scaler"]:
        trainer.scaler.load_state_dict(doc["scaler"])
    trainer.sampler.load_state_dict(doc["sampler"])
    restore_rng(state, trainer.ctx.rank, trainer.device, trainer.augmenter.generator)
    trainer.iteration, trainer.validated_at = int(doc["iteration"]), int(doc["validated_at"])
    trainer.best_dice, trainer.best_iteration = doc["best_dice"], doc["best_iteration"]
    trainer.last_val, trainer.final_loss = dict(doc["last_validation"]), doc["final_loss"]
    trainer.base_seconds, trainer.started = float(doc["training_seconds"]), doc["started"]
    trainer.last_lr = float(trainer.optimizer.param_groups[0]["lr"])


def _difference(saved: Any, current: Any, path: str = "") -> str:
    """The first place where two JSON values differ, as ``path: saved -> current``."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            if saved.get(key) != current.get(key):
                return _difference(saved.get(key), current.get(key), f"{path}.{key}".strip("."))
    return f"{path or 'value'}: saved {saved!r}, now {current!r}"


def checkpoint_metadata(trainer: Trainer) -> dict[str, Any]:
    """Checkpoint metadata of a run: name, data licence, provenance (recipe, data, split,
    iterations, seed, versions, commit, times, device, starting weights, last validation)."""
    from hermes_model.version import __version__

    recipe, data = trainer.recipe, trainer.data
    datasets, licences = [], []
    for entry, card, cached, val in zip(
        recipe.datasets, data.cards, data.train, data.val, strict=True
    ):
        licence = data_licence(card)
        if licence:
            licences.append(f"{card.name}: {licence}")
        datasets.append({
            "name": card.name, "card": str(card.source), "split": entry.split,
            "subset": entry.subset, "subset_seed": entry.subset_seed, "cases": len(cached.cases),
            "validation_split": recipe.validation.split, "validation_cases": len(val.cases),
            "modality": card.modality, "tasks": list(cached.tasks), "licence": licence,
        })  # fmt: skip
    device = str(trainer.device)
    if trainer.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(trainer.device)})"
    start = trainer.start
    provenance = {
        "mode": trainer.options.mode, "recipe": recipe.to_dict(), "datasets": datasets,
        "iteration": trainer.iteration, "total_iterations": trainer.total, "seed": recipe.seed,
        "hermes_version": __version__, "torch_version": torch.__version__,
        "git_commit": git_commit(), "started": trainer.started,
        "saved": utc_now(),
        "training_seconds": round(trainer.seconds(), 3), "device": device,
        "world_size": trainer.ctx.world_size,
        "weights": "ema" if trainer.ema is not None else "model",
        "init_weights": None if start is None else {
            "name": start.name, "sha256": start.sha256, "source": start.source,
        },
        "validation": {"iteration": trainer.validated_at, "tasks": trainer.last_val},
        "best": {"iteration": trainer.best_iteration, "mean_dice": trainer.best_dice},
    }  # fmt: skip
    if trainer.incremental and start is not None:
        # (case, old group) pairs proven bit-identical; 0 until the end-of-run check ran.
        provenance["incremental_check"] = {
            "old_groups": sorted(start.task_groups),
            "comparisons": trainer.check_count,
        }
    metadata: dict[str, Any] = {"name": recipe.name, "provenance": provenance}
    if licences:
        metadata["licence"] = "; ".join(licences)
    return metadata
