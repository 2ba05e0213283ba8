"""What one scan's segmentation gives back: masks, label map, probabilities and volumes.

Kept apart from the pipeline that fills it so that ``postprocess`` (which formats a result) and
``segmenter`` (which makes one) both import it without importing each other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hermes_model.errors import TaskError
from hermes_model.io import ImageMeta

__all__ = ["SegmentationResult", "label_dtype"]


def label_dtype(n_tasks: int) -> np.dtype:
    """Smallest unsigned integer dtype for label values 0..n_tasks (uint8, uint16, uint32)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n_tasks <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{n_tasks} labels do not fit in 32 bits")


@dataclass
class SegmentationResult:
    """Everything one scan's segmentation produced, on the input grid.

    Tensors stay on the device they were computed on (``device.plan_memory``) until written; the
    ``mask``, ``probability`` and ``labels`` methods give numpy arrays.

    Attributes:
        task_ids: the requested tasks; label value ``i + 1`` is ``task_ids[i]``.
        masks: (T, I, J, K) bool, probabilities >= 0.5 after restoring to the input grid.
        label_map: (I, J, K) uint8 (uint16 beyond 255 tasks); precedence in ``postprocess``.
        probabilities: (T, I, J, K) float16, or None when not kept.
        volumes_ml: task id -> mask volume in mL (voxel count x voxel volume).
        voxel_counts: task id -> voxels in the mask.
        modality, modality_confidence: the modality used and how sure detection was (1.0 when
            given or read from a DICOM tag).
        meta: the input's geometry.
        warnings: one line each (image checks, tasks not trained on this modality).
        timings: seconds per stage: read, prepare, network, restore.
        weights: name, sha256 and source of the checkpoint.
        windows: number of windows (per group and flip), skipped ones included.
        skipped_windows: of those, how many held only background and were not run.
        largest_component: the tasks whose mask kept only its largest connected component.
        sources: one entry per weights file that produced masks: ``name``, ``sha256``,
            ``source``, ``engine``, ``precision``, ``device`` and its ``tasks`` (several when a
            request spanned weights files, ``pipeline.routed``).
        out_of_distribution: one line per task group the scan lies far outside the training data
            of (``pipeline.ood``; also among ``warnings``).
        withheld: the requested tasks not segmented for that reason (none with ``force``).
    """

    task_ids: list[str]
    masks: torch.Tensor
    label_map: torch.Tensor
    probabilities: torch.Tensor | None
    volumes_ml: dict[str, float]
    voxel_counts: dict[str, int]
    modality: str
    modality_confidence: float
    meta: ImageMeta
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    windows: int = 0
    skipped_windows: int = 0
    largest_component: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    out_of_distribution: list[str] = field(default_factory=list)
    withheld: list[str] = field(default_factory=list)

    def source_of(self, task: str) -> dict[str, Any]:
        """The ``sources`` entry whose weights segmented ``task`` (empty when unrecorded)."""
        return next((s for s in self.sources if task in s.get("tasks", ())), {})

    def to(self, device: str | torch.device) -> SegmentationResult:
        """A copy whose tensors are on ``device`` (e.g. ``"cpu"`` before writing in a thread)."""
        probabilities = None if self.probabilities is None else self.probabilities.to(device)
        return dataclasses.replace(
            self, masks=self.masks.to(device), label_map=self.label_map.to(device),
            probabilities=probabilities,
        )  # fmt: skip

    def _row(self, task: str) -> int:
        if task not in self.task_ids:
            raise TaskError(f"task {task!r} was not segmented; this result has {self.task_ids}")
        return self.task_ids.index(task)

    def mask(self, task: str) -> np.ndarray:
        """(I, J, K) bool mask of ``task`` on the input grid."""
        return self.masks[self._row(task)].cpu().numpy()

    def probability(self, task: str) -> np.ndarray:
        """(I, J, K) float32 probability of ``task``; TaskError when they were not kept."""
        if self.probabilities is None:
            raise TaskError("probabilities were not kept; call segment(..., probabilities=True)")
        return self.probabilities[self._row(task)].float().cpu().numpy()

    def labels(self) -> np.ndarray:
        """(I, J, K) label map (0 background, ``i + 1`` for ``task_ids[i]``), smallest uint."""
        return self.label_map.cpu().numpy().astype(label_dtype(len(self.task_ids)), copy=False)
