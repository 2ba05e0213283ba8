"""Segmentation metrics: Dice, HD95 and normalised surface Dice, on boolean masks. Torch-free.

All functions take two boolean arrays of one shape (any dimensionality, usually ``(X, Y, Z)`` in
the image's own axis order) and, for the distance metrics, the voxel spacing in mm along those
axes. Surfaces are the mask voxels with at least one face neighbour outside the mask (voxels on
the array border count as surface); distances between surfaces are Euclidean, in mm, computed
with a distance transform that honours anisotropic spacing.

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

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["dice", "hd95", "surface_dice", "surface_distances", "evaluate_case"]


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


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of one mask to the other mask's surface.

    Both masks must be non-empty. Only the bounding box of the two masks (plus one voxel) is
    processed: distances between points inside it are unaffected by the crop.

    Returns:
        ``(pred_to_gt, gt_to_pred)``: 1-D float64 arrays, one value per surface voxel of ``pred``
        and of ``gt`` respectively.
    """
    pred, gt = _masks(pred, gt)
    sampling = _spacing(spacing, pred.ndim)
    if not pred.any() or not gt.any():
        raise ValueError("surface distances need two non-empty masks")
    union = np.argwhere(pred | gt)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(union.min(0), union.max(0), strict=True))
    pred = np.pad(pred[box], 1)
    gt = np.pad(gt[box], 1)
    pred_surface = _surface(pred)
    gt_surface = _surface(gt)
    to_gt = ndimage.distance_transform_edt(~gt_surface, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    return np.asarray(to_gt[pred_surface]), np.asarray(to_pred[gt_surface])


def _distance_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> tuple[float, float]:
    """``(hd95, surface_dice)`` from one pair of distance transforms, empty cases included."""
    if not math.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    pred, gt = _masks(pred, gt)
    _spacing(spacing, pred.ndim)
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return 0.0, 1.0
    if not has_pred or not has_gt:
        return math.inf, 0.0
    to_gt, to_pred = surface_distances(pred, gt, spacing)
    hausdorff = float(max(np.percentile(to_gt, 95), np.percentile(to_pred, 95)))
    within = int((to_gt <= tolerance_mm).sum()) + int((to_pred <= tolerance_mm).sum())
    return hausdorff, within / (to_gt.size + to_pred.size)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm.

    The larger of the two directed 95th percentiles (prediction to ground truth and back) of
    surface-to-surface distances, with linear interpolation between ranks (``np.percentile``).
    0.0 when both masks are empty; ``inf`` when exactly one is.
    """
    return _distance_metrics(pred, gt, spacing, 0.0)[0]


def surface_dice(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 1.0
) -> float:
    """Normalised surface Dice (Nikolov et al., 2021) at ``tolerance_mm``.

    The fraction of both surfaces that lies within ``tolerance_mm`` of the other surface:
    ``(|{p in S_P: d(p, S_G) <= tau}| + |{g in S_G: d(g, S_P) <= tau}|) / (|S_P| + |S_G|)``.
    Each surface voxel counts once (a voxel approximation of the surfel areas of the original).
    1.0 when both masks are empty; 0.0 when exactly one is.
    """
    return _distance_metrics(pred, gt, spacing, tolerance_mm)[1]


def evaluate_case(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    label_values: Mapping[str, int],
    spacing: Sequence[float],
    tolerance_mm: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Metrics of every task of one case, from two integer label maps on the same grid.

    Args:
        pred_labels: predicted label map, integer array, e.g. ``(X, Y, Z)``.
        gt_labels: ground-truth label map of the same shape.
        label_values: task id -> the label value that marks it in both maps
            (e.g. ``{"lits/liver": 1, "lits/liver_tumor": 2}``).
        spacing: voxel size in mm along the array axes.
        tolerance_mm: tolerance of the surface Dice.

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
        hausdorff, nsd = _distance_metrics(pred, gt, spacing, tolerance_mm)
        results[task_id] = {
            "dice": dice(pred, gt),
            "hd95": hausdorff,
            "surface_dice": nsd,
            "pred_ml": float(pred.sum()) * voxel_ml,
            "gt_ml": float(gt.sum()) * voxel_ml,
        }
    return results
