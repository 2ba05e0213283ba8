"""Validation during training, and the check that incremental learning left old tasks alone.

Both run the inference code of ``hermes segment`` (``inference.sliding_window``: Gaussian-
weighted windows, task groups) on the *cached* validation volumes, i.e. on the model's own
grid after the same preprocessing as at inference; Dice is computed there (thresholded at
0.5), not on the original image grid. ``hermes evaluate`` (``training.evaluate``) measures on
the original grid instead, through the full ``Segmenter``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hermes_model.datasets.annotation import is_annotated
from hermes_model.errors import TrainingError
from hermes_model.evaluation.metrics import dice
from hermes_model.nets.hermes import SegmentationNet
from hermes_model.pipeline.windows import GroupRun, WindowSettings, plan_groups, sliding_window
from hermes_model.training.cache import CachedCase, CachedDataset

__all__ = [
    "IncrementalCheckError",
    "ValidationResult",
    "validate_cached",
    "predict_cached",
    "changed_tensors",
    "check_old_tasks_unchanged",
]


class IncrementalCheckError(TrainingError):
    """Incremental learning changed what the starting weights predict for an old task."""


@dataclass(frozen=True)
class ValidationResult:
    """Dice on the cached validation cases.

    Attributes:
        tasks: task id -> mean Dice over the cases of its dataset that annotate it.
        cases: ``dataset/case`` -> task id -> Dice (tasks the case does not annotate left out).
        mean: mean of ``tasks`` (every task counts once, whatever its dataset's size).
    """

    tasks: dict[str, float]
    cases: dict[str, dict[str, float]]

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.tasks.values()))) if self.tasks else float("nan")


def _image(case: CachedCase, device: torch.device) -> torch.Tensor:
    """The cached, preprocessed image as (1, D, H, W) float32 on ``device``."""
    array = np.load(case.image, mmap_mode="r")
    return torch.from_numpy(np.array(array, dtype=np.float32))[None].to(device)


@torch.no_grad()
def predict_cached(
    model: SegmentationNet,
    case: CachedCase,
    runs: Sequence[GroupRun],
    modality_index: int,
    settings: WindowSettings,
    device: torch.device,
) -> torch.Tensor:
    """(T, D, H, W) float32 probabilities of the ``runs``' rows on one cached case."""
    return sliding_window(model, _image(case, device), runs, modality_index, settings)


def validate_cached(
    model: SegmentationNet,
    datasets: Sequence[CachedDataset],
    task_groups: Mapping[str, list[str]],
    settings: WindowSettings,
    device: torch.device,
) -> ValidationResult:
    """Dice of every task of every dataset on its cached validation cases.

    Each dataset's tasks are fed with the groups they are trained with (``plan_groups`` over
    ``task_groups``, as ``hermes segment`` does); a task's target is the union of its label
    values in the dataset's label map.
    """
    was_training = model.training
    model.eval()
    scores: dict[str, list[float]] = {}
    per_case: dict[str, dict[str, float]] = {}
    for data in datasets:
        tasks = list(data.tasks)
        runs = plan_groups(tasks, data.modality, dict(task_groups), model.task_ids)
        modality = model.modalities.index(data.modality)
        for case in data.cases:
            probs = predict_cached(model, case, runs, modality, settings, device)
            masks = (probs >= 0.5).cpu().numpy()
            label = np.load(case.label, mmap_mode="r")
            row: dict[str, float] = {}
            for t, task in enumerate(tasks):
                if not is_annotated(case.annotated, task):
                    continue  # not contoured in this case: neither right nor wrong
                values = [v for v, name in data.labels.items() if name == task]
                row[task] = dice(masks[t], np.isin(label, values))
                scores.setdefault(task, []).append(row[task])
            per_case[f"{data.name}/{case.case_id}"] = row
    model.train(was_training)
    return ValidationResult({t: float(np.mean(v)) for t, v in scores.items()}, per_case)


def changed_tensors(reference: Mapping[str, torch.Tensor], model: SegmentationNet) -> list[str]:
    """Names of ``reference``'s tensors (a state_dict) whose values differ in ``model``."""
    current = model.state_dict()
    return [
        name
        for name, value in reference.items()
        if name not in current or not torch.equal(value.cpu(), current[name].detach().cpu())
    ]


def _group_runs(name: str, ids: Sequence[str], model: SegmentationNet) -> list[GroupRun]:
    rows = tuple(range(len(ids)))
    return [GroupRun(name, tuple(model.task_index(list(ids))), rows, rows)]


def check_old_tasks_unchanged(
    start: SegmentationNet,
    model: SegmentationNet,
    old_groups: Mapping[str, list[str]],
    datasets: Sequence[CachedDataset],
    settings: WindowSettings,
    device: torch.device,
) -> int:
    """Raise IncrementalCheckError unless every old task group gives bit-identical
    probabilities through ``start`` and ``model`` on every cached case of ``datasets``.

    Each group is run whole (as inference feeds it), with the modality of each dataset.
    Returns the number of (case, group) comparisons made.
    """
    start.eval()
    was_training = model.training
    model.eval()
    compared = 0
    with _deterministic():
        compared = _compare_groups(start, model, old_groups, datasets, settings, device)
    model.train(was_training)
    return compared


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """cuDNN with fixed, deterministic algorithms, so that equal weights give equal bits."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _compare_groups(
    start: SegmentationNet,
    model: SegmentationNet,
    old_groups: Mapping[str, list[str]],
    datasets: Sequence[CachedDataset],
    settings: WindowSettings,
    device: torch.device,
) -> int:
    compared = 0
    for data in datasets:
        for case in data.cases:
            for name, ids in old_groups.items():
                before = predict_cached(
                    start, case, _group_runs(name, ids, start),
                    start.modalities.index(data.modality), settings, device,
                )  # fmt: skip
                after = predict_cached(
                    model, case, _group_runs(name, ids, model),
                    model.modalities.index(data.modality), settings, device,
                )  # fmt: skip
                if not torch.equal(before, after):
                    gap = float((before - after).abs().max())
                    raise IncrementalCheckError(
                        f"incremental learning changed the old task group {name!r} on "
                        f"validation case {data.name}/{case.case_id} (largest probability "
                        f"change {gap:.3g}); nothing was saved. The old tasks must stay "
                        "bit-identical: train with 'hermes finetune' to update the whole model"
                    )
                compared += 1
    return compared
