"""Out-of-distribution checks: is this scan unlike every scan a task group was trained on?

A checkpoint may record, under its metadata key ``"training_statistics"``, per task group (the
keys of its ``task_groups``) what its training scans looked like::

    {"hippocampus": {
        "cases": 188, "split": "train", "modality": "mr", "card": "hippocampus",
        "spacing_mm": {"min": [1, 1, 1], "max": [1, 1, 1]},          # per world axis R, A, S
        "fov_mm": {"min": [31, 40, 24], "max": [43, 59, 45]},        # per world axis R, A, S
        "intensity": {"percentiles": [1, 50, 99], "units": "z",     # "HU" for CT
                      "min": [...], "max": [...]}}}

Spacing and field of view are taken along the world axes (the array axis closest to each), so a
transposed or flipped copy of a scan has the same statistics. Intensities are percentiles of the
voxels after loading: Hounsfield units for CT (an absolute scale); for MR, whose scale is
arbitrary, after the model's own normalisation (clip to its MR percentiles, z-score), which
keeps the shape of the histogram (e.g. how much of the volume is background).

:func:`check_scan` gives one warning line per task group the scan is far outside of:
- spacing beyond ``SPACING_FACTOR`` x the training range on any axis;
- field of view beyond ``FOV_FACTOR`` x the training range on any axis;
- an intensity percentile beyond the training range widened by its own width (at least
  ``INTENSITY_MARGIN`` units) on either side.
Checkpoints without statistics (imported or older ones) give no warnings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hermes_model.io import ImageMeta

__all__ = [
    "KEY",
    "PERCENTILES",
    "SPACING_FACTOR",
    "FOV_FACTOR",
    "INTENSITY_MARGIN",
    "ScanStatistics",
    "scan_statistics",
    "summarise",
    "training_statistics",
    "check_scan",
]

KEY = "training_statistics"
PERCENTILES = (1.0, 50.0, 99.0)
SPACING_FACTOR = 1.5
FOV_FACTOR = 1.5
#: Smallest margin around the training range of an intensity percentile, by unit.
INTENSITY_MARGIN = {"HU": 100.0, "z": 0.5}
_MAX_SAMPLES = 2_000_000  # percentiles from a fixed subsample of large volumes (deterministic)


@dataclass(frozen=True)
class ScanStatistics:
    """What :func:`check_scan` compares: (3,) mm per world axis R, A, S; (3,) percentiles."""

    spacing_mm: tuple[float, float, float]
    fov_mm: tuple[float, float, float]
    intensity: tuple[float, ...]
    units: str


def _world_axes(meta: ImageMeta) -> tuple[np.ndarray, np.ndarray]:
    """(spacing, field of view) in mm along world R, A, S (bounding box of the voxel grid)."""
    linear = np.abs(np.asarray(meta.affine, dtype=np.float64)[:3, :3])
    fov = linear @ np.asarray(meta.shape, dtype=np.float64)
    closest = np.argmax(np.abs(np.asarray(meta.direction)), axis=1)  # array axis per world axis
    spacing = np.asarray(meta.spacing, dtype=np.float64)[closest]
    return spacing, fov


def _intensities(array: np.ndarray, modality: str, mr_percentiles: Sequence[float]) -> np.ndarray:
    values = np.asarray(array, dtype=np.float32).ravel()
    if values.size > _MAX_SAMPLES:
        values = values[:: values.size // _MAX_SAMPLES + 1]
    if modality == "ct":
        return np.percentile(values, PERCENTILES)
    low, high = np.percentile(values, list(mr_percentiles))
    clipped = np.clip(values, low, high)
    std = float(clipped.std()) or 1.0
    return (np.percentile(clipped, PERCENTILES) - float(clipped.mean())) / std


def scan_statistics(
    array: np.ndarray, meta: ImageMeta, modality: str, mr_percentiles: Sequence[float] = (2, 98)
) -> ScanStatistics:
    """Spacing, field of view and intensity percentiles of one scan (see the module docstring).

    ``array``: (I, J, K) as read; ``modality``: ``ct`` or ``mr`` (MR-like rows such as
    ``mr-t1`` count as ``mr``); ``mr_percentiles``: the model's MR clip percentiles.
    """
    spacing, fov = _world_axes(meta)
    kind = "ct" if modality == "ct" else "mr"
    intensity = _intensities(array, kind, mr_percentiles)
    return ScanStatistics(
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        fov_mm=(float(fov[0]), float(fov[1]), float(fov[2])),
        intensity=tuple(float(v) for v in intensity),
        units="HU" if kind == "ct" else "z",
    )


def summarise(scans: Sequence[ScanStatistics], modality: str, **extra: Any) -> dict[str, Any]:
    """One task group's JSON entry from its training scans' statistics (module docstring)."""
    if not scans:
        raise ValueError("no scans to summarise")

    def span(values: list[Sequence[float]]) -> dict[str, list[float]]:
        stacked = np.asarray(values, dtype=np.float64)
        return {
            "min": [round(float(v), 4) for v in stacked.min(axis=0)],
            "max": [round(float(v), 4) for v in stacked.max(axis=0)],
        }

    return {
        "cases": len(scans),
        "modality": modality,
        "spacing_mm": span([s.spacing_mm for s in scans]),
        "fov_mm": span([s.fov_mm for s in scans]),
        "intensity": {
            "percentiles": list(PERCENTILES),
            "units": scans[0].units,
            **span([s.intensity for s in scans]),
        },
        **extra,
    }


def training_statistics(
    card: Any,
    split: str = "train",
    mr_percentiles: Sequence[float] = (2, 98),
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Statistics of a dataset card's split (its task group's entry for the checkpoint).

    Args:
        card: a :class:`hermes_model.datasets.cards.DatasetCard`.
        split: the split the model was trained on.
        mr_percentiles: the model's ``PreprocessConfig.mr_percentiles``.
        progress: called with (done, total) after each case.

    Reads every image of the split (labels are not needed).
    """
    from hermes_model.io import read_image

    cases = card.cases(split)
    scans = []
    for n, case in enumerate(cases, start=1):
        array, meta = read_image(case.image)
        scans.append(scan_statistics(array, meta, card.modality, mr_percentiles))
        if progress is not None:
            progress(n, len(cases))
    return summarise(scans, card.modality, split=split, card=card.name)


def _axes(values: Sequence[float] | np.ndarray, digits: int = 1) -> str:
    return "x".join(f"{v:.{digits}f}" for v in values)


def _outside(value: np.ndarray, low: np.ndarray, high: np.ndarray, factor: float) -> bool:
    return bool(np.any(value > high * factor) or np.any(value < low / factor))


def _problems(scan: ScanStatistics, entry: Mapping[str, Any]) -> list[str]:
    found = []
    for what, key, measured, factor, digits in (
        ("spacing", "spacing_mm", scan.spacing_mm, SPACING_FACTOR, 2),
        ("field of view", "fov_mm", scan.fov_mm, FOV_FACTOR, 0),
    ):
        extent = entry.get(key, {})
        low, high = np.asarray(extent.get("min", [])), np.asarray(extent.get("max", []))
        if low.size == 3 and _outside(np.asarray(measured), low, high, factor):
            found.append(
                f"{what} {_axes(measured, digits)} mm (training {_axes(low, digits)} to "
                f"{_axes(high, digits)} mm)"
            )
    intensity = entry.get("intensity", {})
    low, high = np.asarray(intensity.get("min", [])), np.asarray(intensity.get("max", []))
    if intensity.get("units") == scan.units and low.size == len(scan.intensity):
        margin = np.maximum(high - low, INTENSITY_MARGIN.get(scan.units, 0.0))
        value = np.asarray(scan.intensity)
        bad = (value < low - margin) | (value > high + margin)
        for n in np.flatnonzero(bad):
            found.append(
                f"intensity p{intensity['percentiles'][n]:g} {value[n]:.2f} {scan.units} "
                f"(training {low[n]:.2f} to {high[n]:.2f})"
            )
    return found


def check_scan(
    array: np.ndarray,
    meta: ImageMeta,
    modality: str,
    metadata: Mapping[str, Any],
    task_ids: Sequence[str],
) -> list[str]:
    """One warning line per task group of ``task_ids`` that the scan lies far outside of.

    Args:
        array, meta: the scan as read.
        modality: the modality it is segmented as.
        metadata: the checkpoint's metadata (``model.metadata``); without ``KEY``, no warnings.
        task_ids: the tasks segmented.
    """
    statistics = metadata.get(KEY) or {}
    if not statistics:
        return []
    groups = metadata.get("task_groups") or {}
    wanted = set(task_ids)
    names = [g for g, members in groups.items() if wanted & set(members) and g in statistics]
    mr_percentiles = (metadata.get("preprocess") or {}).get("mr_percentiles", (2, 98))
    scan = scan_statistics(array, meta, modality, mr_percentiles)
    lines = []
    for name in names:
        entry = statistics[name]
        problems = _problems(scan, entry)
        if problems:
            lines.append(
                f"{meta.source}: unlike the {entry.get('cases', '?')} training scans of "
                f"{name!r}: {'; '.join(problems)}; its masks may be unreliable"
            )
    return lines
