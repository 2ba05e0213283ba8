"""From probabilities to what users keep: masks, label map, volumes, legend, preview, stats.

Label-map precedence (documented in the legend JSON too): each voxel gets the label of the task
with the highest *score* among the tasks whose mask is on there. A task's score is its
probability, except that a tumour's score is at least its parent organ's where that organ's mask
is on (``Task.parent``): a tumour always replaces its own organ, and competes with other organs
as strongly as its organ does. Ties go to the task listed first. Per-task masks and volumes are
computed before this resolution, so organ volumes include their tumours.
"""

from __future__ import annotations

import csv
import io as stdio
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hermes_model import tasks as registry
from hermes_model.io import write_bytes_atomically
from hermes_model.pipeline.components import largest_component_tensor
from hermes_model.pipeline.preprocess import Prepared, restore
from hermes_model.pipeline.result import SegmentationResult, label_dtype

__all__ = [
    "PRECEDENCE",
    "STATS_FIELDS",
    "Outputs",
    "label_dtype",
    "precedence_order",
    "finalise",
    "task_file_stems",
    "legend",
    "stats_rows",
    "stats_csv",
    "preview_png",
    "write_bytes_atomically",
]

PRECEDENCE = (
    "highest score among the tasks whose mask is on; score = probability, but a tumour's score "
    "is at least its parent organ's where that organ's mask is on (a tumour replaces its organ); "
    "ties go to the lower label value"
)
STATS_FIELDS = (
    "case", "input", "task", "name", "label", "voxels", "volume_ml", "modality",
    "modality_confidence",
)  # fmt: skip


@dataclass
class Outputs:
    """Outputs on the input grid (``finalise``).

    Attributes:
        masks: (T, I, J, K) bool.
        label_map: (I, J, K) uint8 (int32 beyond 255 tasks), 0 = background.
        probabilities: (T, I, J, K) float16, or None.
        voxel_counts: task id -> voxels in its mask.
    """

    masks: torch.Tensor
    label_map: torch.Tensor
    probabilities: torch.Tensor | None
    voxel_counts: dict[str, int]


def _parents(task_ids: Sequence[str]) -> dict[int, int]:
    """Row of a tumour -> row of its parent organ, for parents among ``task_ids``."""
    known = {t.id: t for t in registry.all_tasks()}
    rows = {t: i for i, t in enumerate(task_ids)}
    out = {}
    for row, task in enumerate(task_ids):
        parent = known[task].parent if task in known else None
        if parent in rows:
            out[row] = rows[parent]
    return out


def precedence_order(task_ids: Sequence[str]) -> list[int]:
    """Rows in the order ``finalise`` places them: every parent before its tumours."""
    tumours = _parents(task_ids)
    return [r for r in range(len(task_ids)) if r not in tumours] + sorted(tumours)


def finalise(
    probabilities: torch.Tensor,
    prepared: Prepared,
    task_ids: Sequence[str],
    threshold: float = 0.5,
    keep_probabilities: bool = True,
    device: torch.device | None = None,
    keep_largest: Collection[str] = (),
) -> Outputs:
    """Restore (T, D, H, W) model-grid probabilities to the input grid, threshold, label.

    One task at a time (memory: one float32 input-grid map beside the outputs): restore on the
    probabilities' device (trilinear, ``preprocess.restore``), round to float16 (the precision of
    the kept and written maps) and threshold at ``threshold`` (mask = ``p16 >= threshold``), then
    update the label map with the precedence of the module docstring. Outputs go to ``device``
    (default: the probabilities' device). The masks of the tasks in ``keep_largest`` keep only
    their largest connected component (``components``) before they enter the label map; their
    probability maps are kept as they are.
    """
    device = device or probabilities.device
    shape = tuple(prepared.meta.shape)
    n = len(task_ids)
    label_torch = torch.uint8 if n <= 255 else torch.int32
    label = torch.zeros(shape, dtype=label_torch, device=device)
    best = torch.zeros(shape, dtype=torch.float32, device=device)
    masks = torch.empty((n, *shape), dtype=torch.bool, device=device)
    kept = (
        torch.empty((n, *shape), dtype=torch.float16, device=device) if keep_probabilities else None
    )
    parents = _parents(task_ids)
    counts: dict[str, int] = {}
    for row in precedence_order(task_ids):
        prob = restore(probabilities[row : row + 1], prepared)[0].to(device)
        half = prob.half()
        mask = half >= threshold  # the same test on the float16 maps users get: no disagreement
        if task_ids[row] in keep_largest:
            mask = largest_component_tensor(mask)
        masks[row] = mask
        if kept is not None:
            kept[row] = half
        del half
        counts[task_ids[row]] = int(mask.sum())
        score, take = prob, mask & (prob > best)
        if row in parents:
            on_parent = label == parents[row] + 1  # its organ won so far: replace it
            score = torch.where(on_parent, torch.maximum(prob, best), prob)
            take |= mask & on_parent
        label.masked_fill_(take, row + 1)  # no host sync, unlike label[take] = ...
        best = torch.where(take, score, best)
        del prob, score, take
    return Outputs(masks, label, kept, {t: counts[t] for t in task_ids})


def task_file_stems(task_ids: Sequence[str]) -> dict[str, str]:
    """File stem per task: its label (``liver``), or ``dataset_label`` where labels collide."""
    labels = [t.split("/")[-1] for t in task_ids]
    return {
        t: (label if labels.count(label) == 1 else t.replace("/", "_"))
        for t, label in zip(task_ids, labels, strict=True)
    }


def _task_name(task_id: str) -> str:
    known = {t.id: t for t in registry.all_tasks()}
    return known[task_id].name if task_id in known else task_id


def legend(
    result: SegmentationResult, input_file: str, files: dict[str, str] | None = None
) -> dict[str, Any]:
    """JSON-ready legend of a label map: value -> task, volumes, modality, weights, versions.

    ``files`` maps task id -> the per-task output file names written (``--split``), if any.
    """
    from hermes_model.version import __version__

    labels = []
    for value, task in enumerate(result.task_ids, start=1):
        entry: dict[str, Any] = {
            "value": value,
            "task": task,
            "name": _task_name(task),
            "voxels": result.voxel_counts[task],
            "volume_ml": round(result.volumes_ml[task], 6),
        }
        if files and task in files:
            entry["file"] = files[task]
        if task in result.largest_component:
            entry["largest_component_only"] = True
        labels.append(entry)
    meta = result.meta
    return {
        "input": input_file,
        "shape": list(meta.shape),
        "spacing_mm": [round(s, 6) for s in meta.spacing],
        "modality": result.modality,
        "modality_confidence": round(result.modality_confidence, 3),
        "weights": dict(result.weights),
        "hermes_version": __version__,
        "labels": labels,
        "precedence": PRECEDENCE,
        "threshold": 0.5,
        "warnings": list(result.warnings),
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
    }


def stats_rows(case: str, result: SegmentationResult, input_file: str) -> list[dict[str, Any]]:
    """One row per task (``STATS_FIELDS``): voxels and volume in mL."""
    return [
        {
            "case": case,
            "input": input_file,
            "task": task,
            "name": _task_name(task),
            "label": value,
            "voxels": result.voxel_counts[task],
            "volume_ml": round(result.volumes_ml[task], 6),
            "modality": result.modality,
            "modality_confidence": round(result.modality_confidence, 3),
        }
        for value, task in enumerate(result.task_ids, start=1)
    ]


def stats_csv(rows: Sequence[dict[str, Any]]) -> bytes:
    """CSV bytes (header ``STATS_FIELDS``) of stats rows."""
    buffer = stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=STATS_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


# -- preview ----------------------------------------------------------------------------------

_PALETTE = np.array(
    [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
        (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
        (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
    ],
    dtype=np.float32,
)  # fmt: skip


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The array on RAS axes (flips and a permutation only) and its spacing per RAS axis."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    ornt = io_orientation(affine)
    transform = ornt_transform(ornt, axcodes2ornt(("R", "A", "S")))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    ras_spacing = np.empty(3)
    for axis, (target, _) in enumerate(transform):
        ras_spacing[int(target)] = spacing[axis]
    return apply_orientation(array, transform), ras_spacing


def _window(image: np.ndarray, modality: str) -> np.ndarray:
    """Grey levels 0-1: CT abdominal window (W 400, L 40), MR 1st-99th percentile."""
    if modality == "ct":
        low, high = -160.0, 240.0
    else:
        low, high = (
            float(v) for v in np.percentile(image[:: max(1, image.size // 2**20)], [1, 99])
        )
    return np.clip((image.astype(np.float32) - low) / max(high - low, 1e-6), 0.0, 1.0)


def _panel(grey: np.ndarray, labels: np.ndarray, spacing: tuple[float, float], height: int) -> Any:
    """One RGB slice: rows top = superior/anterior, columns = patient's right on the left."""
    from PIL import Image

    grey, labels = grey[::-1, ::-1].T, labels[::-1, ::-1].T  # (x, y) -> display (row, col)
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=2)
    on = labels > 0
    colours = _PALETTE[(labels[on].astype(np.int64) - 1) % len(_PALETTE)]
    rgb[on] = 0.55 * rgb[on] + 0.45 * colours
    rows, cols = labels.shape
    width = max(1, round(height * cols * spacing[0] / max(rows * spacing[1], 1e-6)))
    image = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    return image.resize((width, height), Image.Resampling.NEAREST)


def preview_png(
    image: np.ndarray,
    meta_affine: np.ndarray,
    label_map: np.ndarray,
    result: SegmentationResult,
    height: int = 320,
) -> bytes:
    """PNG bytes: axial, coronal and sagittal slices through the centre of the foreground.

    The slices go through the centre of the labelled voxels' bounding box (the volume centre
    when nothing is labelled), shown with physical aspect ratios, radiological left/right, the
    label map as coloured overlays and a legend with each task's colour and volume.
    """
    from PIL import Image, ImageDraw, ImageFont

    ras_image, spacing = _canonical(image, meta_affine)
    ras_labels, _ = _canonical(label_map, meta_affine)
    found = np.argwhere(ras_labels > 0)
    centre = (found.min(0) + found.max(0)) // 2 if len(found) else np.array(ras_labels.shape) // 2
    grey = _window(ras_image, result.modality)
    x, y, z = (int(c) for c in centre)
    panels = [
        _panel(grey[:, :, z], ras_labels[:, :, z], (spacing[0], spacing[1]), height),
        _panel(grey[:, y, :], ras_labels[:, y, :], (spacing[0], spacing[2]), height),
        _panel(grey[x, :, :], ras_labels[x, :, :], (spacing[1], spacing[2]), height),
    ]
    font = ImageFont.load_default()
    line = 16
    width = sum(p.width for p in panels) + 10 * (len(panels) + 1)
    canvas = Image.new("RGB", (width, height + 20 + line * (len(result.task_ids) + 1)), "black")
    left = 10
    for panel in panels:
        canvas.paste(panel, (left, 10))
        left += panel.width + 10
    draw = ImageDraw.Draw(canvas)
    top = height + 16
    draw.text(
        (10, top), f"{result.modality.upper()}  axial | coronal | sagittal", fill="white", font=font
    )
    for value, task in enumerate(result.task_ids, start=1):
        top += line
        colour = tuple(int(c) for c in _PALETTE[(value - 1) % len(_PALETTE)])
        draw.rectangle((10, top + 2, 22, top + 12), fill=colour)
        text = f"{value}  {task}  {result.volumes_ml[task]:.1f} mL"
        draw.text((30, top), text, fill="white", font=font)
    buffer = stdio.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
