"""From probabilities to what users keep: masks, label map, volumes, legend, stats (the
picture is ``preview``).

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

import torch

from hermes_model import tasks as registry
from hermes_model.io import write_bytes_atomically
from hermes_model.pipeline import boxes
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
    "label_map_from",
    "task_file_stems",
    "legend",
    "stats_rows",
    "stats_csv",
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

    The input-grid arrays are in Fortran memory order (as NIfTI stores voxels) except on the
    CPU with probabilities kept, where a transposing copy would cost more than it saves.
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
    probability maps are kept as they are. Without ``keep_probabilities``, on the CPU, each task
    is restored only inside the box where it can reach ``threshold`` (``boxes``: the same values
    there, bit for bit, so the same outputs).
    """
    device = device or probabilities.device
    shape = tuple(prepared.meta.shape)
    n = len(task_ids)
    label_torch = torch.uint8 if n <= 255 else torch.int32
    # Without probability maps, a CPU restore computes each task only inside its box (``boxes``),
    # in Fortran order (the order NIfTI files store, so writing copies instead of gathering).
    inside = _boxes_apply(probabilities, device, keep_probabilities)
    if inside and tuple(probabilities.shape[1:]) != tuple(prepared.image.shape[1:]):
        inside = False  # restore() refuses it with a clear message
    layout = _fortran_zeros if inside else torch.zeros
    label = layout(shape, dtype=label_torch, device=device)
    best = layout(shape, dtype=torch.float32, device=device)
    masks = (layout if inside else torch.empty)((n, *shape), dtype=torch.bool, device=device)
    kept = (
        torch.empty((n, *shape), dtype=torch.float16, device=device) if keep_probabilities else None
    )
    parents = _parents(task_ids)
    counts: dict[str, int] = {}
    for row in precedence_order(task_ids):
        box: tuple[slice, ...] = (slice(None),) * 3
        if inside:
            restored = boxes.restore_box(
                prepared.reorientation.invert(probabilities[row : row + 1])[0], shape, threshold
            )
            if restored is None:  # nowhere near the threshold: an empty mask
                counts[task_ids[row]] = 0
                continue
            box, prob = restored[0], _fortran(restored[1])
        else:
            prob = restore(probabilities[row : row + 1], prepared)[0].to(device)
        half = prob.half()
        mask = half >= threshold  # the same test on the float16 maps users get: no disagreement
        if task_ids[row] in keep_largest:
            mask = largest_component_tensor(mask)  # the mask's box holds all of its components
        masks[row][box] = mask
        if kept is not None:
            kept[row] = half
        del half
        counts[task_ids[row]] = int(torch.count_nonzero(mask))
        if inside:
            best[box] = _place(label[box], best[box], row, prob, mask, parents.get(row))
        else:
            best = _place(label, best, row, prob, mask, parents.get(row))
        del prob
    if torch.device(device).type != "cpu":  # a transposing copy costs nothing on a GPU
        label, masks = _fortran(label), _fortran(masks)
        kept = None if kept is None else _fortran(kept)
    return Outputs(masks, label, kept, {t: counts[t] for t in task_ids})


def _fortran(tensor: torch.Tensor) -> torch.Tensor:
    """The same tensor with its last three axes in Fortran memory order (a copy if needed)."""
    swap = (*range(tensor.dim() - 3), tensor.dim() - 1, tensor.dim() - 2, tensor.dim() - 3)
    return tensor.permute(swap).contiguous().permute(swap)


def _fortran_zeros(shape: tuple[int, ...], **kwargs: Any) -> torch.Tensor:
    """Zeros of ``shape`` whose last three axes are in Fortran memory order."""
    swapped = (*shape[:-3], shape[-1], shape[-2], shape[-3])
    swap = (*range(len(shape) - 3), len(shape) - 1, len(shape) - 2, len(shape) - 3)
    return torch.zeros(swapped, **kwargs).permute(swap)


def _boxes_apply(probabilities: torch.Tensor, device: torch.device, keep: bool) -> bool:
    """Whether ``finalise`` restores inside boxes: only masks kept, float32 maps, all on the CPU,
    and ``boxes`` reproduces this torch build's kernel (else the full restore, as always)."""
    on_cpu = probabilities.device.type == "cpu" and torch.device(device).type == "cpu"
    return not keep and on_cpu and probabilities.dtype == torch.float32 and boxes.matches_kernel()


def _place(
    label: torch.Tensor,
    best: torch.Tensor,
    row: int,
    prob: torch.Tensor,
    mask: torch.Tensor,
    parent: int | None,
) -> torch.Tensor:
    """Write label ``row + 1`` where task ``row`` wins (module docstring) into ``label``, in
    place; returns the updated best scores. Rows must come in ``precedence_order``."""
    score, take = prob, mask & (prob > best)
    if parent is not None:
        on_parent = label == parent + 1  # its organ won so far: replace it
        score = torch.where(on_parent, torch.maximum(prob, best), prob)
        take |= mask & on_parent
    label.masked_fill_(take, row + 1)  # no host sync, unlike label[take] = ...
    return torch.where(take, score, best)


def label_map_from(
    masks: torch.Tensor, probabilities: torch.Tensor, task_ids: Sequence[str]
) -> torch.Tensor:
    """The label map of (T, I, J, K) masks and their (float16) probabilities, with the
    precedence of ``finalise``: for results of several weights files merged into one."""
    shape = tuple(masks.shape[1:])
    label_torch = torch.uint8 if len(task_ids) <= 255 else torch.int32
    label = torch.zeros(shape, dtype=label_torch, device=masks.device)
    best = torch.zeros(shape, dtype=torch.float32, device=masks.device)
    parents = _parents(task_ids)
    for row in precedence_order(task_ids):
        best = _place(label, best, row, probabilities[row].float(), masks[row], parents.get(row))
    return label


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

    Each label names the weights (and their sha256) that segmented it; ``engine``,
    ``precision`` and ``device`` say what computed the masks, ``weights_used`` the same per
    weights file, so two runs of one command on two machines can be told apart.
    ``files`` maps task id -> the per-task output file names written (``--split``), if any.
    ``out_of_distribution``: one line per task group the scan is far outside the training data
    of (``ood``); ``withheld``: the tasks not segmented for it (none with ``force``).
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
        source = result.source_of(task) or result.weights
        entry["weights"], entry["weights_sha256"] = source.get("name"), source.get("sha256")
        labels.append(entry)
    meta = result.meta
    return {
        "input": input_file,
        "shape": list(meta.shape),
        "spacing_mm": [round(s, 6) for s in meta.spacing],
        "modality": result.modality,
        "modality_confidence": round(result.modality_confidence, 3),
        "weights": dict(result.weights),
        **{key: _joined(result, key) for key in ("engine", "precision", "device")},
        "weights_used": [dict(s) for s in result.sources],
        "hermes_version": __version__,
        "labels": labels,
        "precedence": PRECEDENCE,
        "threshold": 0.5,
        "warnings": list(result.warnings),
        "out_of_distribution": list(result.out_of_distribution),
        "withheld": list(result.withheld),
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
    }


def _joined(result: SegmentationResult, key: str) -> str | None:
    """``key`` (engine, precision, device) of the weights files that made ``result``: one value,
    or ``"a + b"`` when they differed; None when unrecorded."""
    values = list(dict.fromkeys(str(s[key]) for s in result.sources if key in s))
    return " + ".join(values) if values else None


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
