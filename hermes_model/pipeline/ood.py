"""Out-of-distribution checks: is this scan, as the model sees it, unlike a group's training scans?

A checkpoint may record, under its metadata key ``"training_statistics"``, per task group (the
keys of its ``task_groups``) what its training scans looked like (``"version": 2``)::

    {"openkbp": {
        "version": 2, "cases": 166, "split": "train", "modality": "ct", "card": "openkbp",
        "range_percentiles": [2, 98],
        "spacing_mm": {"low": [...], "high": [...], "min": [...], "max": [...]},  # world R, A, S
        "fov_mm": {...},                     # the scan's extent (recorded, not judged)
        "body_mm": {...},                    # the body's bounding box
        "body_area_cm2": {...},              # median axial cross-section of the body
        "intensity": {"percentiles": [25, 50, 95], "units": "HU", "region": "body", ...}}}

Each statistic's range is ``low`` to ``high``, the ``RANGE_PERCENTILES`` of its training cases
(``min``/``max`` beside them). Everything is in mm and HU along the world axes (the array axis
closest to each), so neither the voxel grid nor a transposition changes it: a scan resampled to
1 mm keeps its statistics. The body is CT above ``BODY_HU`` (air and the couch's surroundings
out); for MR, whose scale is arbitrary, above 10% of the model's ``mr_percentiles`` clip window,
as ``norm_region = "body"``. Intensities are percentiles of the body's voxels: HU for CT; for MR
clipped to that window and z-scored over the body. Large volumes are read at about
``ANALYSIS_MM`` (an integer stride, deterministic).

:func:`assess` scores each task group the scan is segmented by: the largest of
- body extent and body cross-section (the body region: a neck is ~150-300 cm², an abdomen
  500-900 cm²) beyond their range, as a log ratio over ``log(FACTOR)``;
- the resolution the model sees, ``max(native spacing, group spacing)`` per axis, the same way
  (a scan finer than the group's grid is resampled to it: its native spacing never counts);
- each intensity percentile beyond its range, over the range's width (at least
  ``INTENSITY_MARGIN`` units).
A score above 1 is *far outside*: ``pipeline.segmenter`` withholds that group's masks unless
``force``. Version 1 entries (whole field of view intensities) are judged on field of view and
resolution only; checkpoints without statistics never. Thresholds and figures: docs/ood.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hermes_model.io import ImageMeta

__all__ = [
    "KEY",
    "VERSION",
    "PERCENTILES",
    "BODY_HU",
    "RANGE_PERCENTILES",
    "FACTOR",
    "INTENSITY_MARGIN",
    "ScanStatistics",
    "Verdict",
    "scan_statistics",
    "summarise",
    "training_statistics",
    "assess",
    "check_scan",
    "withhold",
]

KEY = "training_statistics"
VERSION = 2
PERCENTILES = (25.0, 50.0, 95.0)
#: A group's range of each statistic: these percentiles over its training cases ("low", "high";
#: "min" and "max" are kept too): one odd training scan (OpenKBP has a chest slab twice the
#: usual cross-section) does not widen it for everyone.
RANGE_PERCENTILES = (2.0, 98.0)
BODY_HU = -500.0
ANALYSIS_MM = 1.5
#: A mm quantity (field of view, body extent, cross-section, resolution) is far outside when it
#: is more than FACTOR x beyond its training range (chosen on train/val splits: docs/ood.md).
FACTOR = 1.5
#: Smallest margin around the training range of an intensity percentile, by unit.
INTENSITY_MARGIN = {"HU": 100.0, "z": 0.5}
_MAX_SAMPLES = 2_000_000  # percentiles from a fixed subsample of large volumes (deterministic)
#: What is judged, by entry version: (words, key) of the mm statistics.
_MM = {
    1: (("field of view", "fov_mm"),),
    VERSION: (("body extent", "body_mm"), ("body cross-section", "body_area_cm2")),
}


@dataclass(frozen=True)
class ScanStatistics:
    """What :func:`assess` compares (module docstring): (3,) mm per world axis R, A, S."""

    spacing_mm: tuple[float, float, float]
    fov_mm: tuple[float, float, float]
    body_mm: tuple[float, float, float]
    body_area_cm2: float
    intensity: tuple[float, ...]
    units: str

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ScanStatistics:
        """Inverse of ``dataclasses.asdict`` (KeyError for a document of an older form)."""
        a, b, c = (_triple(doc[k]) for k in ("spacing_mm", "fov_mm", "body_mm"))
        return cls(
            a, b, c, float(doc["body_area_cm2"]),
            tuple(float(v) for v in doc["intensity"]), str(doc["units"]),
        )  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """One task group's judgement of one scan: ``score`` above 1 is far outside."""

    group: str
    tasks: tuple[str, ...]
    score: float
    problems: tuple[str, ...] = field(default=())
    cases: Any = "?"

    @property
    def far_outside(self) -> bool:
        return self.score > 1.0

    def line(self, source: str, withheld: bool) -> str:
        """The one-line warning (or reason for withholding) for this group."""
        what = (
            "masks withheld (--force to keep them)" if withheld else "its masks may be unreliable"
        )
        return (
            f"{source}: far outside the {self.cases} training scans of {self.group!r} "
            f"(score {self.score:.1f}): {'; '.join(self.problems)}; {what}"
        )


def _triple(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


def _world(meta: ImageMeta) -> np.ndarray:
    """The world axis (0 R, 1 A, 2 S) closest to each array axis."""
    return np.argmax(np.abs(np.asarray(meta.direction, dtype=np.float64)), axis=0)


def scan_statistics(
    array: np.ndarray, meta: ImageMeta, modality: str, mr_percentiles: Sequence[float] = (2, 98)
) -> ScanStatistics:
    """Spacing, field of view, body extent and cross-section, and intensity percentiles inside
    the body of one scan (module docstring).

    ``array``: (I, J, K) as read; ``modality``: ``ct`` or ``mr`` (MR-like rows such as
    ``mr-t1`` count as ``mr``); ``mr_percentiles``: the model's MR clip percentiles.
    """
    kind = "ct" if modality == "ct" else "mr"
    world = _world(meta)
    spacing = np.asarray(meta.spacing, dtype=np.float64)
    fov = np.abs(np.asarray(meta.affine, dtype=np.float64)[:3, :3]) @ np.asarray(meta.shape)
    step = np.maximum(1, np.floor(ANALYSIS_MM / spacing + 1e-6)).astype(int)
    grid = np.asarray(array[:: step[0], :: step[1], :: step[2]], dtype=np.float32)
    voxel = spacing * step
    values = _sample(grid.ravel())
    if kind == "ct":
        body = grid > BODY_HU
    else:
        low, high = np.percentile(values, list(mr_percentiles))
        body = grid > low + 0.1 * (high - low)
        grid = np.clip(grid, low, high)
    extent, area = np.zeros(3), 0.0
    if body.any():
        for axis in range(3):
            hit = np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis)))
            extent[world[axis]] = (hit[-1] - hit[0]) * voxel[axis] + spacing[axis]
        axial = int(np.flatnonzero(world == 2)[0])
        in_plane = float(np.prod(np.delete(voxel, axial))) / 100.0  # cm² per voxel
        counts = body.sum(axis=tuple(a for a in range(3) if a != axial))
        area = float(np.median(counts[counts > 0])) * in_plane
        inside = _sample(grid[body])
    else:
        inside = np.zeros(1, np.float32)
    if kind == "ct":
        intensity = np.percentile(inside, PERCENTILES)
    else:
        std = float(inside.std()) or 1.0
        intensity = (np.percentile(inside, PERCENTILES) - float(inside.mean())) / std
    return ScanStatistics(
        spacing_mm=_triple(spacing[np.argsort(world)]),
        fov_mm=_triple(fov),
        body_mm=_triple(extent),
        body_area_cm2=round(area, 2),
        intensity=tuple(float(v) for v in intensity),
        units="HU" if kind == "ct" else "z",
    )


def _sample(values: np.ndarray) -> np.ndarray:
    return values[:: values.size // _MAX_SAMPLES + 1] if values.size > _MAX_SAMPLES else values


def summarise(scans: Sequence[ScanStatistics], modality: str, **extra: Any) -> dict[str, Any]:
    """One task group's JSON entry from its training scans' statistics (module docstring)."""
    if not scans:
        raise ValueError("no scans to summarise")

    def span(values: Sequence[Sequence[float]]) -> dict[str, list[float]]:
        stacked = np.asarray(values, dtype=np.float64)
        low, high = np.percentile(stacked, RANGE_PERCENTILES, axis=0)
        return {
            key: [round(float(v), 4) for v in row]
            for key, row in (
                ("low", low), ("high", high), ("min", stacked.min(axis=0)),
                ("max", stacked.max(axis=0)),
            )
        }  # fmt: skip

    return {
        "version": VERSION,
        "cases": len(scans),
        "modality": modality,
        "spacing_mm": span([s.spacing_mm for s in scans]),
        "range_percentiles": list(RANGE_PERCENTILES),
        "fov_mm": span([s.fov_mm for s in scans]),
        "body_mm": span([s.body_mm for s in scans]),
        "body_area_cm2": span([[s.body_area_cm2] for s in scans]),
        "intensity": {
            "percentiles": list(PERCENTILES),
            "units": scans[0].units,
            "region": "body",
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


def _axes(values: Sequence[float] | np.ndarray, digits: int = 0) -> str:
    return "x".join(f"{v:.{digits}f}" for v in values)


def _ratio_score(value: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """How far positive ``value`` lies beyond [low, high], in units of log(FACTOR); 0 inside."""
    value, low, high = (
        np.maximum(np.asarray(x, dtype=np.float64), 1e-3) for x in (value, low, high)
    )
    beyond = np.maximum(np.log(value / high), np.log(low / value))
    return max(0.0, float(beyond.max())) / math.log(FACTOR)


def _range(block: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A statistic's training range: ``low``/``high`` (version 2), else ``min``/``max``."""
    low, high = ("low", "high") if "low" in block else ("min", "max")
    return np.asarray(block.get(low, []), dtype=np.float64), np.asarray(block.get(high, []))


def _judge(
    scan: ScanStatistics, entry: Mapping[str, Any], group_spacing: Sequence[float]
) -> tuple[float, list[str]]:
    """(score, problems) of ``scan`` against one group's ``entry`` (module docstring)."""
    scores, problems = [0.0], []
    measured = {**dataclasses.asdict(scan), "body_area_cm2": [scan.body_area_cm2]}
    for what, key in _MM.get(entry.get("version", 1), ()):
        low, high = _range(entry.get(key) or {})
        value = np.asarray(measured[key], dtype=np.float64)
        if low.size != value.size or high.size != value.size:
            continue
        score = _ratio_score(value, low, high)
        scores.append(score)
        if score > 1.0:
            unit = "cm²" if key == "body_area_cm2" else "mm"
            problems.append(
                f"{what} {_axes(value)} {unit} (training {_axes(low)} to {_axes(high)})"
            )
    low, high = _range(entry.get("spacing_mm") or {})
    if low.size == 3 and high.size == 3:  # the resolution the model sees: never finer than its grid
        grid = np.asarray(group_spacing, dtype=np.float64)
        seen = np.maximum(scan.spacing_mm, grid)
        low, high = np.maximum(low, grid), np.maximum(high, grid)
        score = _ratio_score(seen, low, high)
        scores.append(score)
        if score > 1.0:
            problems.append(
                f"resolution {_axes(seen, 2)} mm after resampling (training {_axes(low, 2)} to "
                f"{_axes(high, 2)} mm)"
            )
    intensity = entry.get("intensity") or {}
    low, high = _range(intensity)
    if (
        intensity.get("units") == scan.units
        and intensity.get("region") == "body"
        and low.size == len(scan.intensity) == high.size
    ):
        margin = np.maximum(high - low, INTENSITY_MARGIN.get(scan.units, 0.0))
        value = np.asarray(scan.intensity)
        beyond = np.maximum(low - value, value - high) / margin
        scores.append(float(beyond.max()))
        for n in np.flatnonzero(beyond > 1.0):
            problems.append(
                f"p{intensity['percentiles'][n]:g} inside the body {value[n]:.1f} {scan.units} "
                f"(training {low[n]:.1f} to {high[n]:.1f})"
            )
    return max(scores), problems


def assess(
    array: np.ndarray,
    meta: ImageMeta,
    modality: str,
    metadata: Mapping[str, Any],
    task_ids: Sequence[str],
) -> list[Verdict]:
    """One :class:`Verdict` per task group of ``task_ids`` whose training statistics the
    checkpoint records (``metadata``, i.e. ``model.metadata``), in the order of its groups."""
    from hermes_model.pipeline.group_spacing import spacing_for_group

    statistics = metadata.get(KEY) or {}
    if not statistics:
        return []
    groups = metadata.get("task_groups") or {}
    wanted = set(task_ids)
    names = [g for g, members in groups.items() if wanted & set(members) and g in statistics]
    if not names:
        return []
    mr_percentiles = (metadata.get("preprocess") or {}).get("mr_percentiles", (2, 98))
    scan = scan_statistics(array, meta, modality, mr_percentiles)
    verdicts = []
    for name in names:
        entry = statistics[name]
        score, problems = _judge(scan, entry, spacing_for_group(metadata, name))
        members = tuple(t for t in groups[name] if t in wanted)
        verdicts.append(Verdict(name, members, score, tuple(problems), entry.get("cases", "?")))
    return verdicts


def check_scan(
    array: np.ndarray,
    meta: ImageMeta,
    modality: str,
    metadata: Mapping[str, Any],
    task_ids: Sequence[str],
) -> list[str]:
    """One warning line per task group of ``task_ids`` that the scan lies far outside of
    (:func:`assess`); none for a checkpoint without training statistics."""
    verdicts = assess(array, meta, modality, metadata, task_ids)
    return [v.line(meta.source, withheld=False) for v in verdicts if v.far_outside]


def withhold(
    verdicts: Sequence[Verdict], task_ids: Sequence[str], source: str, force: bool = False
) -> tuple[list[str], list[str], list[str]]:
    """``(tasks kept, tasks withheld, lines)``: a task is withheld when a group it is judged in
    is far outside and none is not (never with ``force``); one line per group far outside."""
    far = [v for v in verdicts if v.far_outside]
    fine = {t for v in verdicts if not v.far_outside for t in v.tasks}
    withheld = (
        [] if force else [t for t in task_ids if t not in fine and any(t in v.tasks for v in far)]
    )
    lines = [v.line(source, withheld=bool(set(v.tasks) & set(withheld))) for v in far]
    return [t for t in task_ids if t not in withheld], withheld, lines
