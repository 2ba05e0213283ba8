"""Everything a run needs before its first step: checked and cached data, the starting
weights, the model (with new tasks added and, for incremental learning, frozen), provenance.

Data checks fail early and name the case: ``cards.validate`` (tasks, splits, files present)
before caching, the cache's own per-case errors (unreadable file, image/label grid mismatch),
then every cached label value against the card's ``[labels]`` and ``ignore_labels`` (from the
cache's sidecars, without reading the labels again).
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hermes_model.config import PreprocessConfig
from hermes_model.datasets.cards import Case, DatasetCard, validate
from hermes_model.errors import ConfigError
from hermes_model.nets.hermes import SegmentationNet
from hermes_model.training.cache import CachedDataset, build_cache
from hermes_model.training.distributed import DistContext
from hermes_model.training.recipe import Recipe

__all__ = [
    "TrainingData",
    "StartWeights",
    "prepare_data",
    "load_start",
    "make_model",
    "freeze_all_but_new_tasks",
    "git_commit",
    "data_licence",
    "every_parameter_used",
    "loss_pos_weights",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """Cached training and validation cases, one entry per recipe dataset (same order), and
    the preprocessing each dataset was cached with (its own ``spacing`` where it has one)."""

    cards: tuple[DatasetCard, ...]
    train: tuple[CachedDataset, ...]
    val: tuple[CachedDataset, ...]
    preprocess: tuple[PreprocessConfig, ...]

    @property
    def group_spacing(self) -> dict[str, list[float]]:
        """Dataset (task group) name -> the spacing in mm it was cached at."""
        return {d.name: list(c.spacing) for d, c in zip(self.train, self.preprocess, strict=True)}

    @property
    def tasks(self) -> list[str]:
        """Every dataset task, in dataset order, without repeats."""
        return list(dict.fromkeys(t for d in self.train for t in d.tasks))

    @property
    def groups(self) -> dict[str, list[str]]:
        """Dataset name -> its task set (what training feeds the model together)."""
        return {d.name: list(d.tasks) for d in self.train}


@dataclass(frozen=True)
class StartWeights:
    """The checkpoint a run starts from: its model (CPU, eval), groups and identity."""

    model: SegmentationNet
    task_groups: dict[str, list[str]]
    name: str
    sha256: str
    source: str
    path: Path


def _known_tasks(card: DatasetCard) -> set[str]:
    """Registered tasks, plus the card's tasks in namespaces the registry does not use.

    A typo in a registered namespace (``bcv/spleeen``) is an error; a new namespace
    (``mydata/lesion``) declares new tasks, which the model learns as new tokens.
    """
    from hermes_model import tasks as registry

    known = {t.id for t in registry.all_tasks()}
    namespaces = {t.split("/", 1)[0] for t in known}
    return known | {t for t in card.tasks if t.split("/", 1)[0] not in namespaces}


def _check_label_values(card: DatasetCard, cached: CachedDataset) -> None:
    allowed = set(card.labels) | set(card.ignore_labels)
    for case in cached.cases:
        unknown = sorted(set(case.foreground_counts) - allowed)
        if unknown:
            raise ConfigError(
                f"{card.source}: case {case.case_id}: label values {unknown} are not in the "
                "card's labels table; map them to tasks or list them in ignore_labels"
            )


def prepare_data(recipe: Recipe, context: DistContext, progress: bool) -> TrainingData:
    """Check every dataset, then cache its training cases (the recipe's split and subset) and
    validation cases (``validation.split``, the first ``max_cases``).

    The cache lives in ``train.cache_dir`` (relative paths: the working directory). Under DDP,
    rank 0 builds it while the other ranks wait, then they read its sidecars.
    """
    plans = []
    for entry in recipe.datasets:
        card = entry.load()
        validate(card, entry.split, scan=False, known_tasks=_known_tasks(card))
        val_cases = validate(card, recipe.validation.split, scan=False, known_tasks=card.tasks)
        if recipe.validation.max_cases:
            val_cases = val_cases[: recipe.validation.max_cases]
        plans.append((card, entry.cases(card), val_cases, entry.preprocess_for(recipe.preprocess)))
    if context.is_main:
        data = _build(plans, recipe, progress)
    context.barrier()
    if not context.is_main:
        data = _build(plans, recipe, False)
    return data


def _build(
    plans: list[tuple[DatasetCard, list[Case], list[Case], PreprocessConfig]],
    recipe: Recipe,
    progress: bool,
) -> TrainingData:
    root = Path(recipe.train.cache_dir).expanduser()
    options: dict[str, Any] = {
        "dtype": recipe.train.cache_dtype,
        "workers": recipe.train.cache_workers,
        "progress": progress,
    }
    train, val = [], []
    for card, train_cases, val_cases, config in plans:
        train.append(build_cache(card, config, root, train_cases, **options))
        val.append(build_cache(card, config, root, val_cases, **options))
        _check_label_values(card, train[-1])
        _check_label_values(card, val[-1])
    configs = tuple(p[3] for p in plans)
    return TrainingData(tuple(p[0] for p in plans), tuple(train), tuple(val), configs)


def load_start(spec: str, context: DistContext) -> StartWeights:
    """Resolve (download on rank 0 first) and load the starting checkpoint on the CPU."""
    from hermes_model.weights.checkpoint import default_groups, load_checkpoint
    from hermes_model.weights.hub import resolve_weights

    if context.is_main:
        resolved = resolve_weights(spec)
    context.barrier()
    if not context.is_main:
        resolved = resolve_weights(spec)
    model = load_checkpoint(resolved.path, device="cpu")
    metadata: dict[str, Any] = getattr(model, "metadata", {})
    groups = metadata.get("task_groups") or default_groups(list(model.task_ids))
    groups = {str(k): [t for t in v if t in model.task_ids] for k, v in groups.items()}
    return StartWeights(
        model, groups, resolved.name, resolved.sha256, resolved.source, resolved.path
    )


def make_model(recipe: Recipe, tasks: list[str], start: StartWeights | None) -> SegmentationNet:
    """The model to train: a copy of ``start`` with the tasks it lacks added (seeded by the
    recipe's seed), or a fresh ``recipe.model`` (initialised after ``torch.manual_seed``)."""
    from hermes_model.nets import build_model

    if start is None:
        torch.manual_seed(recipe.seed)
        return build_model(recipe.model.config, tasks)
    model = copy.deepcopy(start.model)
    if model.config != recipe.model.config:
        log.warning(
            "the starting weights' architecture (%s) differs from the recipe's [model]; the "
            "weights' architecture is used",
            model.config.arch,
        )
    model.add_tasks([t for t in tasks if t not in model.task_ids], seed=recipe.seed)
    return model


def freeze_all_but_new_tasks(model: SegmentationNet) -> list[nn.Parameter]:
    """Freeze every parameter except ``model.new_task_parameters()``; return those.

    Buffers are never trained; norm layers' affine parameters (LayerNorm in fusion and head)
    are parameters and so are frozen too.
    """
    new = list(model.new_task_parameters())
    if not new:
        raise ConfigError(
            f"the {model.config.arch} architecture has no task-specific parameters to train "
            "alone; incremental learning cannot keep its old tasks fixed (use hermes finetune)"
        )
    ids = {id(p) for p in new}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return new


def git_commit() -> str | None:
    """The checkout's commit (with ``-dirty`` for local changes), or None outside git."""
    folder = Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "-C", str(folder), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def data_licence(card: DatasetCard) -> str | None:
    """The ``licence`` (or ``license``) field of the dataset's own JSON, when it has one."""
    try:
        doc = json.loads((card.root / card.dataset_json).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    value = doc.get("licence", doc.get("license")) if isinstance(doc, dict) else None
    return str(value) if value else None


def every_parameter_used(config: Any) -> bool:
    """Whether every parameter gets a gradient in every step, so DDP need not search."""
    if config.arch == "resunet":
        return True
    return config.arch == "hermes-r" and (config.bidirectional or config.hierarchical)


def loss_pos_weights(
    recipe: Recipe, task_ids: Sequence[str], device: torch.device
) -> torch.Tensor | None:
    """The recipe's ``[loss] pos_weight`` as one weight per model task (None if it is empty)."""
    table = recipe.loss.pos_weight
    if not table:
        return None
    if unknown := sorted(set(table) - set(task_ids)):
        raise ConfigError(
            f"recipe {recipe.source}: loss.pos_weight names task(s) {unknown} that the model "
            f"does not have; its tasks are {list(task_ids)}"
        )
    return torch.tensor([table.get(t, 1.0) for t in task_ids], device=device)
