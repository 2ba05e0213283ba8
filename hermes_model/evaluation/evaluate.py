"""Evaluation: Dice, HD95 and surface Dice per task and case, on the original image grid.

Two entry points:
- :func:`evaluate_predictions`: a folder of predicted label maps (e.g. ``hermes segment``
  output) against a folder of ground-truth label maps, matched by case name;
- :func:`evaluate_weights`: segment a dataset split with weights (the ``Segmenter`` of
  ``hermes segment``: same preprocessing, sliding window, task groups and restoration to the
  input grid) and score each task's mask against the card's labels.

Partial annotation (a card's ``[annotated]``): a task is scored only on the cases that annotate
it; the per-task ``cases`` count says on how many.

Empty masks are counted, not hidden: per task the report gives how many cases had both masks
empty (Dice 1, HD95 0, surface Dice 1, by ``metrics``' convention), a prediction where the
ground truth is empty (``false_positive``: Dice 0, HD95 inf) and an empty prediction where the
ground truth is not (``missed``: Dice 0, HD95 inf).

Definitions (``metrics``): HD95 ``pooled`` (default, medpy / nnU-Net v1) or ``max`` (MONAI);
surface Dice ``area`` (default, DeepMind surface-distance / MSD) or ``voxel`` (MONAI). The
report names the ones used (``to_dict()["metrics"]``). The mean Dice is over all cases; the mean
HD95 is over the cases where it is finite, next to the number of infinite ones.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hermes_model.datasets.annotation import is_annotated
from hermes_model.errors import InputError, OptionError, TaskError
from hermes_model.evaluation.metrics import definitions, evaluate_case

__all__ = [
    "CaseResult",
    "TaskSummary",
    "EvalReport",
    "MetricOptions",
    "evaluate_predictions",
    "evaluate_weights",
    "CSV_FIELDS",
]

Progress = Callable[[int, int], None]
CSV_FIELDS = ("case", "task", "dice", "hd95", "surface_dice", "pred_ml", "gt_ml", "status")


@dataclass(frozen=True)
class CaseResult:
    """One task on one case. ``hd95`` is in mm (``inf`` when exactly one mask is empty)."""

    case: str
    task: str
    dice: float
    hd95: float
    surface_dice: float
    pred_ml: float
    gt_ml: float

    @property
    def status(self) -> str:
        """``both_empty``, ``false_positive`` (ground truth empty), ``missed`` (prediction
        empty) or ``both_present``."""
        if self.gt_ml == 0:
            return "both_empty" if self.pred_ml == 0 else "false_positive"
        return "missed" if self.pred_ml == 0 else "both_present"


@dataclass(frozen=True)
class TaskSummary:
    """Aggregates of one task over the cases."""

    task: str
    cases: int
    dice_mean: float
    surface_dice_mean: float
    hd95_mean_finite: float
    hd95_infinite: int
    both_empty: int
    false_positive: int
    missed: int


@dataclass
class EvalReport:
    """Per task and case metrics, with what was evaluated.

    Attributes:
        rows: one :class:`CaseResult` per (case, task).
        source: what was compared (folders, or weights + card + split), as JSON-ready data.
        missing: ground-truth cases without a prediction (not scored).
        failed: case id -> the one-line error that kept it from being segmented (not scored;
            the other cases are).
        tolerance_mm: surface Dice tolerance.
        hd95_method / nsd_method: the metric definitions used (``metrics.DEFINITIONS``).
    """

    rows: list[CaseResult]
    source: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    tolerance_mm: float = 1.0
    hd95_method: str = "pooled"
    nsd_method: str = "area"
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r.task for r in self.rows))

    @property
    def cases(self) -> list[str]:
        return list(dict.fromkeys(r.case for r in self.rows))

    def summary(self) -> list[TaskSummary]:
        out = []
        for task in self.tasks:
            rows = [r for r in self.rows if r.task == task]
            finite = [r.hd95 for r in rows if math.isfinite(r.hd95)]
            statuses = [r.status for r in rows]
            out.append(
                TaskSummary(
                    task,
                    len(rows),
                    float(np.mean([r.dice for r in rows])),
                    float(np.mean([r.surface_dice for r in rows])),
                    float(np.mean(finite)) if finite else math.nan,
                    len(rows) - len(finite),
                    statuses.count("both_empty"),
                    statuses.count("false_positive"),
                    statuses.count("missed"),
                )  # fmt: skip
            )
        return out

    @property
    def mean_dice(self) -> float:
        """Mean over tasks of each task's mean Dice (every task counts once)."""
        summary = self.summary()
        return float(np.mean([s.dice_mean for s in summary])) if summary else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: infinite HD95 becomes null (the status says why), NaN too."""
        return {
            "source": self.source,
            "tolerance_mm": self.tolerance_mm,
            "metrics": {
                "hd95": self.hd95_method,
                "surface_dice": self.nsd_method,
                "definitions": definitions(self.hd95_method, self.nsd_method),
            },
            "mean_dice": _finite(self.mean_dice),
            "tasks": [{k: _finite(v) for k, v in asdict(s).items()} for s in self.summary()],
            "missing": self.missing,
            "failed": self.failed,
            "cases": [
                {**{k: _finite(v) for k, v in asdict(r).items()}, "status": r.status}
                for r in self.rows
            ],
        }

    def write_json(self, path: str | Path) -> Path:
        from hermes_model.io import write_bytes_atomically

        text = json.dumps(self.to_dict(), indent=1) + "\n"
        return write_bytes_atomically(path, text.encode())

    def write_csv(self, path: str | Path) -> Path:
        """One row per (case, task): :data:`CSV_FIELDS`; HD95 is written ``inf`` when infinite."""
        from hermes_model.io import write_bytes_atomically

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({**asdict(r), "status": r.status})
        return write_bytes_atomically(path, buffer.getvalue().encode())


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass(frozen=True)
class MetricOptions:
    """How distances are scored: surface Dice tolerance (mm) and the two definitions."""

    tolerance_mm: float = 1.0
    hd95_method: str = "pooled"
    nsd_method: str = "area"

    def __post_init__(self) -> None:
        definitions(self.hd95_method, self.nsd_method)  # ValueError naming the bad method
        if not (math.isfinite(self.tolerance_mm) and self.tolerance_mm > 0):
            raise OptionError(
                f"the surface Dice tolerance must be a finite number of mm > 0, got "
                f"{self.tolerance_mm:g}; 1.0 is the default"
            )


def _score(
    case: str, task: str, pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
    options: MetricOptions,
) -> CaseResult:  # fmt: skip
    values = evaluate_case(
        pred.astype(np.uint8), gt.astype(np.uint8), {task: 1}, spacing, options.tolerance_mm,
        hd95_method=options.hd95_method, nsd_method=options.nsd_method,
    )  # fmt: skip
    m = values[task]
    return CaseResult(case, task, m["dice"], m["hd95"], m["surface_dice"], m["pred_ml"], m["gt_ml"])


def _legend_values(path: Path) -> dict[str, int] | None:
    """Task id -> label value from a ``hermes segment`` legend next to a prediction."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        return {str(e["task"]): int(e["value"]) for e in doc["labels"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InputError(
            f"{path}: not a readable Hermes legend ({error}); delete it to evaluate by label value"
        ) from error


def _task_values(
    legend: dict[str, int] | None,
    label_values: Mapping[int, str] | None,
    present: set[int],
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """(task -> predicted label values, task -> ground-truth label values)."""
    if label_values is not None:
        gt: dict[str, list[int]] = {}
        for value, task in label_values.items():
            gt.setdefault(task, []).append(int(value))
        if legend is None:
            return gt, gt
        return {t: [v] for t, v in legend.items() if t in gt}, gt
    if legend is not None:
        same = {t: [v] for t, v in legend.items()}
        return same, same
    same = {f"label_{v}": [v] for v in sorted(present)}
    return same, same


def evaluate_predictions(
    pred_dir: str | Path,
    gt_dir: str | Path,
    label_values: Mapping[int, str] | None = None,
    *,
    tolerance_mm: float = 1.0,
    annotated: Mapping[str, frozenset[str]] | None = None,
    progress: Progress | None = None,
    hd95_method: str = "pooled",
    nsd_method: str = "area",
) -> EvalReport:
    """Score predicted label maps against ground-truth label maps, matched by case name.

    Args:
        pred_dir: predictions (any format ``io`` reads); a ``<case>.json`` legend beside one
            (``hermes segment``) says which value is which task.
        gt_dir: ground truth on the same grids.
        label_values: ground-truth label value -> task id (a card's ``labels``). Without it the
            ground truth is taken to use the legend's values; without a legend either, every
            label value present is its own task (``label_<v>``).
        tolerance_mm: surface Dice tolerance.
        hd95_method / nsd_method: ``metrics.HD95_METHODS`` / ``metrics.NSD_METHODS``.
        annotated: case name -> the tasks it annotates (``annotation.annotated_tasks`` of a
            card); a task is scored only on the cases that annotate it. Cases not in it: all.
        progress: called with (cases done, cases total).

    Raises InputError when no case matches or a pair is not on the same grid.
    """
    from hermes_model.io import case_name, find_images, read_image

    options = MetricOptions(tolerance_mm, hd95_method, nsd_method)
    preds = {case_name(p): p for p in find_images([pred_dir])}
    gts = {case_name(p): p for p in find_images([gt_dir])}
    matched = sorted(set(preds) & set(gts))
    if not matched:
        raise InputError(
            f"no case of {gt_dir} has a prediction in {pred_dir} (files are matched by name, "
            f"e.g. {next(iter(sorted(gts)), '?')}.nii.gz); check the folders"
        )
    rows: list[CaseResult] = []
    for i, case in enumerate(matched):
        pred, pred_meta = read_image(preds[case])
        gt, gt_meta = read_image(gts[case])
        if pred.shape != gt.shape or not np.allclose(pred_meta.affine, gt_meta.affine, atol=1e-2):
            raise InputError(
                f"case {case}: prediction {preds[case]} ({pred.shape}) and ground truth "
                f"{gts[case]} ({gt.shape}) are not on the same grid; resample the prediction "
                "onto the ground truth's grid"
            )
        legend = _legend_values(Path(preds[case]).parent / f"{case}.json")
        present = {int(v) for v in np.unique(gt)} | {int(v) for v in np.unique(pred)}
        pred_values, gt_values = _task_values(legend, label_values, present - {0})
        for task, values in gt_values.items():
            if annotated is not None and not is_annotated(annotated.get(case), task):
                continue
            mine = pred_values.get(task, [])
            rows.append(
                _score(case, task, np.isin(pred, mine), np.isin(gt, values), gt_meta.spacing,
                       options)
            )  # fmt: skip
        if progress is not None:
            progress(i + 1, len(matched))
    source = {"predictions": str(pred_dir), "ground_truth": str(gt_dir)}
    missing = sorted(set(gts) - set(preds))
    return EvalReport(rows, source, missing, tolerance_mm, hd95_method, nsd_method)


def evaluate_weights(
    weights: str | Path | None,
    card: str | Path | Any,
    split: str = "val",
    *,
    device: str = "auto",
    overlap: float = 0.5,
    max_cases: int = 0,
    tolerance_mm: float = 1.0,
    progress: Progress | None = None,
    hd95_method: str = "pooled",
    nsd_method: str = "area",
    largest_component: str = "auto",
) -> EvalReport:
    """Segment ``split`` of a dataset card with ``weights`` and score every task of the card
    that the weights know, on each image's own grid.

    Args:
        weights: registry name, ``.safetensors`` path, ``hf://`` URI or None (the default).
        card: a dataset card path or a loaded ``DatasetCard``.
        split: the card's split to segment (``val``, ``test``, ``all``...).
        device / overlap: as ``hermes segment``.
        max_cases: score only the first N cases of the split (0 = all).
        tolerance_mm: surface Dice tolerance.
        progress: called with (cases done, cases total).
        hd95_method / nsd_method: ``metrics.HD95_METHODS`` / ``metrics.NSD_METHODS``.
        largest_component: as ``Segmenter``; the tasks it applied to are in the report's source.

    Raises ConfigError (bad card or split, missing files, naming the case), TaskError (the
    weights know none of the card's tasks), WeightsError, InputError.
    """
    from hermes_model.datasets.cards import load_card, validate
    from hermes_model.io import read_image
    from hermes_model.pipeline.segmenter import Segmenter

    options = MetricOptions(tolerance_mm, hd95_method, nsd_method)
    if max_cases < 0:
        raise OptionError(f"--max-cases must be >= 0 (0 = every case), got {max_cases}")
    card = load_card(card) if isinstance(card, str | Path) else card
    cases = validate(card, split, scan=False, known_tasks=card.tasks)
    cases = cases[:max_cases] if max_cases else cases
    segmenter = Segmenter(weights, device=device, overlap=overlap,
                          largest_component=largest_component)  # fmt: skip
    tasks = [t for t in card.tasks if t in segmenter.task_ids]
    if not tasks:
        raise TaskError(
            f"the weights segment {', '.join(segmenter.task_ids)}; none of {card.name}'s tasks "
            f"({', '.join(card.tasks)}); evaluate weights trained on this dataset"
        )
    values = card.task_values()
    rows: list[CaseResult] = []
    failed: dict[str, str] = {}
    for i, case in enumerate(cases):
        try:
            result = segmenter.segment(case.image, tasks, card.modality, probabilities=False)
        except InputError as error:  # one unusable scan must not lose the others' scores
            failed[case.case_id] = str(error)
        else:
            gt, meta = read_image(case.label)
            for task in tasks:
                if not is_annotated(case.annotated, task):
                    continue  # the case does not annotate it: not scored (see the card)
                gt_mask = np.isin(gt, values[task])
                rows.append(
                    _score(case.case_id, task, result.mask(task), gt_mask, meta.spacing, options)
                )
        if progress is not None:
            progress(i + 1, len(cases))
    source = {
        "weights": dict(segmenter.weights),
        "card": str(card.source),
        "dataset": card.name,
        "split": split,
        "overlap": overlap,
        "skipped_tasks": [t for t in card.tasks if t not in tasks],
        "largest_component": [t for t in tasks if t in segmenter.keep_largest],
    }
    return EvalReport(rows, source, [], tolerance_mm, hd95_method, nsd_method, failed)
