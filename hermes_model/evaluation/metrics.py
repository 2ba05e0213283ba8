"""Segmentation metrics: Dice, HD95 and normalised surface Dice, on boolean masks. Torch-free.

All functions take two boolean arrays of one shape (usually ``(X, Y, Z)`` in the image's own axis
order) and, for the distance metrics, the voxel spacing in mm along those axes. Distances are
Euclidean, in mm, from distance transforms that honour anisotropic spacing. Every definition has
a name (:data:`DEFINITIONS`) that ``hermes evaluate``, its JSON and the model cards print:

- ``dice``: ``2|P∩G| / (|P| + |G|)`` on voxels.
- ``hd95`` ``pooled`` (default): the 95th percentile of the distances from every surface voxel
  of each mask to the other mask's surface, both directions pooled into one set (medpy
  ``metric.binary.hd95``, the nnU-Net v1 evaluator).
- ``hd95`` ``max``: the larger of the two directed 95th percentiles (MONAI
  ``compute_hausdorff_distance(percentile=95)`` default; never smaller than ``pooled``).
- ``surface_dice`` ``area`` (default): the normalised surface Dice of Nikolov et al. (2021) as
  DeepMind's ``surface-distance`` computes it (``compute_surface_dice_at_tolerance``), which MSD
  and most published NSD figures use: the surface is the marching-cubes surface of the mask,
  cut into surface elements (one per 2x2x2 voxel neighbourhood, placed at the voxel corner it
  surrounds) weighted by their area in mm²; the score is the area of both surfaces within
  ``tolerance_mm`` of the other surface over their total area.
- ``surface_dice`` ``voxel``: the same ratio with every surface voxel counted once (MONAI
  ``compute_surface_dice`` default); it under-weights flat, anisotropically sampled faces.

For the voxel definitions a surface voxel is a mask voxel with a face neighbour outside the mask
(voxels on the array border count as surface). Percentiles interpolate linearly between ranks
(``np.percentile``).

Empty masks are defined, not errors:

============================  =====  ======  ============
case                          Dice   HD95    surface Dice
============================  =====  ======  ============
both empty                    1.0    0.0     1.0
one empty, the other not      0.0    inf     0.0
============================  =====  ======  ============

An ``inf`` HD95 is a real result (a structure missed or hallucinated), not a missing value:
tables should print it as ``inf`` and aggregate with NaN/inf-aware statistics (e.g. report the
median, or the mean over finite cases together with the count of infinite ones).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from hermes_model.evaluation.definitions import (
    DEFINITIONS,
    HD95_METHODS,
    NSD_METHODS,
    check_method,
    definitions,
)

__all__ = [  # the definitions live in metric_definitions (torch- and scipy-free)
    "HD95_METHODS",
    "NSD_METHODS",
    "DEFINITIONS",
    "definitions",
    "dice",
    "hd95",
    "surface_dice",
    "surface_distances",
    "surfel_distances",
    "evaluate_case",
]

_SURFELS = Path(__file__).resolve().parents[1] / "assets" / "marching_cubes_surfels.json"


def _masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction and ground truth differ in shape: {pred.shape} vs {gt.shape}; "
            "resample the prediction onto the ground truth's grid first"
        )
    return pred.astype(bool, copy=False), gt.astype(bool, copy=False)


def _spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing {values} has {len(values)} values for a {ndim}-D mask")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be positive and finite (mm), got {values}")
    return values


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient ``2|P∩G| / (|P| + |G|)``; 1.0 when both masks are empty."""
    pred, gt = _masks(pred, gt)
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (or on the array border)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _crop(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union, padded by one background voxel."""
    if not pred.any() or not gt.any():
        raise ValueError("surface distances need two non-empty masks")
    union = np.argwhere(pred | gt)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(union.min(0), union.max(0), strict=True))
    return np.pad(pred[box], 1), np.pad(gt[box], 1)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of one mask to the other mask's surface voxels.

    Both masks must be non-empty. Only the bounding box of the two masks (plus one voxel) is
    processed: distances between points inside it are unaffected by the crop.

    Returns:
        ``(pred_to_gt, gt_to_pred)``: 1-D float64 arrays, one value per surface voxel of ``pred``
        and of ``gt`` respectively.
    """
    pred, gt = _masks(pred, gt)
    sampling = _spacing(spacing, pred.ndim)
    pred, gt = _crop(pred, gt)
    pred_surface = _surface(pred)
    gt_surface = _surface(gt)
    to_gt = ndimage.distance_transform_edt(~gt_surface, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    return np.asarray(to_gt[pred_surface]), np.asarray(to_pred[gt_surface])


@functools.lru_cache(maxsize=1)
def _surfel_vectors() -> tuple[np.ndarray, np.ndarray]:
    """(triangle area vectors (N, 3) at 1 mm, owning code (N,)) from the shipped table."""
    table = json.loads(_SURFELS.read_text())["vectors"]
    vectors = [v for code in table for v in code]
    codes = [c for c, code in enumerate(table) for _ in code]
    return np.asarray(vectors, np.float64).reshape(-1, 3), np.asarray(codes, np.int64)


@functools.lru_cache(maxsize=64)
def _surfel_areas(spacing: tuple[float, float, float]) -> np.ndarray:
    """(256,) surface area in mm² of the marching-cubes surface of each 2x2x2 code."""
    vectors, codes = _surfel_vectors()
    s0, s1, s2 = spacing
    scaled = vectors * np.array([s1 * s2, s0 * s2, s0 * s1])
    return np.bincount(codes, weights=np.linalg.norm(scaled, axis=1), minlength=256)


def _codes(mask: np.ndarray) -> np.ndarray:
    """Code of every 2x2x2 neighbourhood of ``mask`` (already padded): shape ``n - 1`` per axis;
    bit ``2 ** (7 - (4a + 2b + c))`` is corner ``(a, b, c)``."""
    n0, n1, n2 = (n - 1 for n in mask.shape)
    codes = np.zeros((n0, n1, n2), np.uint8)
    m = mask.astype(np.uint8)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                shift = 7 - (4 * a + 2 * b + c)
                codes |= m[a : a + n0, b : b + n1, c : c + n2] << shift
    return codes


def surfel_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Area-weighted surface elements of two non-empty 3-D masks and their distances.

    Every 2x2x2 voxel neighbourhood that is neither empty nor full holds a piece of the mask's
    marching-cubes surface; it sits at the voxel corner in its middle and weighs that piece's
    area. Distances in mm go from each element of one mask to the nearest element of the other.

    Returns:
        ``(pred_to_gt, pred_areas, gt_to_pred, gt_areas)``: 1-D float64 arrays, distances (mm)
        and areas (mm²), one value per surface element of ``pred`` and of ``gt``.
    """
    pred, gt = _masks(pred, gt)
    if pred.ndim != 3:
        raise ValueError(f"area-weighted surfaces need 3-D masks, got {pred.ndim}-D")
    sampling = _spacing(spacing, 3)
    pred, gt = _crop(pred, gt)
    areas = _surfel_areas((sampling[0], sampling[1], sampling[2]))
    pred_codes, gt_codes = _codes(pred), _codes(gt)
    pred_border = (pred_codes != 0) & (pred_codes != 255)
    gt_border = (gt_codes != 0) & (gt_codes != 255)
    to_gt = ndimage.distance_transform_edt(~gt_border, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_border, sampling=sampling)
    return (
        np.asarray(to_gt[pred_border]),
        areas[pred_codes[pred_border]],
        np.asarray(to_pred[gt_border]),
        areas[gt_codes[gt_border]],
    )


def _distance_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float,
    hd95_method: str | None = "pooled",
    nsd_method: str | None = "area",
) -> tuple[float, float]:
    """``(hd95, surface_dice)``, empty cases included; a ``None`` method skips (NaN) that one."""
    if not math.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    if hd95_method is not None:
        check_method(hd95_method, HD95_METHODS, "hd95")
    if nsd_method is not None:
        check_method(nsd_method, NSD_METHODS, "surface Dice")
    pred, gt = _masks(pred, gt)
    _spacing(spacing, pred.ndim)
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return 0.0, 1.0
    if not has_pred or not has_gt:
        return math.inf, 0.0
    hausdorff = nsd = math.nan
    if hd95_method is not None or nsd_method == "voxel":
        to_gt, to_pred = surface_distances(pred, gt, spacing)
        if hd95_method == "pooled":
            hausdorff = float(np.percentile(np.concatenate([to_gt, to_pred]), 95))
        elif hd95_method == "max":
            hausdorff = float(max(np.percentile(to_gt, 95), np.percentile(to_pred, 95)))
        if nsd_method == "voxel":
            within = int((to_gt <= tolerance_mm).sum()) + int((to_pred <= tolerance_mm).sum())
            nsd = within / (to_gt.size + to_pred.size)
    if nsd_method == "area":
        d_pred, a_pred, d_gt, a_gt = surfel_distances(pred, gt, spacing)
        inside = a_pred[d_pred <= tolerance_mm].sum() + a_gt[d_gt <= tolerance_mm].sum()
        nsd = float(inside / (a_pred.sum() + a_gt.sum()))
    return hausdorff, nsd


def hd95(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], method: str = "pooled"
) -> float:
    """95th-percentile Hausdorff distance in mm between the masks' surface voxels.

    ``method``: ``pooled`` (default; both directions' distances in one set: medpy, nnU-Net v1)
    or ``max`` (the larger of the two directed percentiles: MONAI's default). 0.0 when both
    masks are empty; ``inf`` when exactly one is.
    """
    return _distance_metrics(pred, gt, spacing, 0.0, hd95_method=method, nsd_method=None)[0]


def surface_dice(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = 1.0,
    method: str = "area",
) -> float:
    """Normalised surface Dice (Nikolov et al., 2021) at ``tolerance_mm``.

    ``method``: ``area`` (default; marching-cubes surface elements weighted by area, DeepMind's
    ``surface-distance``; 3-D masks only) or ``voxel`` (every surface voxel counts once,
    MONAI's default): ``(|S_P within tau of S_G| + |S_G within tau of S_P|) / (|S_P| + |S_G|)``.
    1.0 when both masks are empty; 0.0 when exactly one is.
    """
    return _distance_metrics(pred, gt, spacing, tolerance_mm, None, method)[1]


def evaluate_case(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    label_values: Mapping[str, int],
    spacing: Sequence[float],
    tolerance_mm: float = 1.0,
    *,
    hd95_method: str = "pooled",
    nsd_method: str = "area",
) -> dict[str, dict[str, float]]:
    """Metrics of every task of one case, from two integer label maps on the same grid.

    Args:
        pred_labels: predicted label map, integer array, e.g. ``(X, Y, Z)``.
        gt_labels: ground-truth label map of the same shape.
        label_values: task id -> the label value that marks it in both maps
            (e.g. ``{"lits/liver": 1, "lits/liver_tumor": 2}``).
        spacing: voxel size in mm along the array axes.
        tolerance_mm: tolerance of the surface Dice.
        hd95_method / nsd_method: the definitions (:data:`HD95_METHODS`, :data:`NSD_METHODS`).

    Returns:
        task id -> ``{"dice", "hd95", "surface_dice", "pred_ml", "gt_ml"}`` (volumes in mL).
    """
    pred_labels = np.asarray(pred_labels)
    gt_labels = np.asarray(gt_labels)
    _masks(pred_labels, gt_labels)
    voxel_ml = math.prod(_spacing(spacing, gt_labels.ndim)) / 1000.0
    results: dict[str, dict[str, float]] = {}
    for task_id, value in label_values.items():
        pred = pred_labels == value
        gt = gt_labels == value
        hausdorff, nsd = _distance_metrics(pred, gt, spacing, tolerance_mm, hd95_method, nsd_method)
        results[task_id] = {
            "dice": dice(pred, gt),
            "hd95": hausdorff,
            "surface_dice": nsd,
            "pred_ml": float(pred.sum()) * voxel_ml,
            "gt_ml": float(gt.sum()) * voxel_ml,
        }
    return results
