"""What a batch run is asked to do (``BatchOptions``) and what came of it (case and run reports,
and the observer that hears about each case as it finishes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["BatchOptions", "CaseReport", "BatchReport", "BatchObserver", "NullObserver"]


@dataclass(frozen=True)
class BatchOptions:
    """What to segment and what to write (``hermes_model.batch.outputs`` for the output layout).

    Attributes:
        output_dir: folder for all outputs (created if missing).
        tasks: task ids or aliases; None = every task of the weights for each scan's modality.
        modality: ``ct``/``mr`` for every scan, overriding detection.
        weights: registry name, ``.safetensors`` path, ``hf://`` URI, or None: the default
            weights, or with ``tasks`` the registered weights that have them (``pipeline.routed``).
        device, overlap, tta, precision, batch_size: as
            :class:`hermes_model.pipeline.segmenter.Segmenter`.
        split: one mask file per task.
        probabilities: one probability file per task.
        preview: a PNG per case.
        stats: CSV file of volumes per task per case.
        skip_existing: skip cases finished earlier: their JSON legend exists and every file it
            records has the recorded size and sha256 (otherwise the case is redone, with a
            warning that says why).
        shard: ``(index, count)``, 0-based index: process every count-th case from index.
        engine: what runs the network (``hermes_model.engines``): auto, torch, openvino, compile.
        norm_region: z-score region override (``volume``/``body``); None: the weights' own.
        largest_component: tasks keeping only their largest connected component (``auto``: as
            the weights record, ``all``, ``none`` or comma-separated task names).
        formats: label-map formats, any of ``dicom_out.FORMATS`` (DICOM ones need DICOM input).
        report: an HTML page for the batch (``hermes_model.batch.report``), thumbnails beside it.
        force: keep the masks of task groups the scan is far outside the training data of
            (``pipeline.ood``; withheld by default, and a case left with none fails, exit 3).
    """

    output_dir: Path
    tasks: Sequence[str] | None = None
    modality: str | None = None
    weights: str | None = None
    device: str = "auto"
    overlap: float = 0.5
    tta: bool = False
    precision: str = "auto"
    batch_size: int | None = None
    split: bool = False
    probabilities: bool = False
    preview: bool = False
    stats: Path | None = None
    skip_existing: bool = False
    shard: tuple[int, int] | None = None
    engine: str = "auto"
    norm_region: str | None = None
    largest_component: str = "auto"
    formats: tuple[str, ...] = ("nifti",)
    report: Path | None = None
    force: bool = False


@dataclass
class CaseReport:
    """What happened to one case: ``status`` is ``done``, ``skipped`` or ``failed`` (then
    ``message`` is the one-line reason and ``error`` the exception, for tracebacks)."""

    case: str
    input: str
    status: str
    message: str = ""
    exit_code: int = 0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = field(default=None, repr=False)
    #: Out-of-distribution lines (``pipeline.ood``; also in ``warnings``).
    out_of_distribution: list[str] = field(default_factory=list)


@dataclass
class BatchReport:
    """All cases of a run, in processing order (skipped ones first)."""

    cases: list[CaseReport]
    #: The weights used: name, sha256 and source (empty when every case was skipped early).
    weights: dict[str, str] = field(default_factory=dict)
    #: What computed the masks: engine, precision and device.
    runtime: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[CaseReport]:
        return [c for c in self.cases if c.status == "failed"]

    @property
    def exit_code(self) -> int:
        """0 if all went well; a single case's own error code; 1 if some cases of a batch failed."""
        failed = self.failed
        if not failed:
            return 0
        return failed[0].exit_code if len(self.cases) == 1 else 1


class BatchObserver(Protocol):
    """Progress hooks; the CLI draws progress bars with them (the library never prints)."""

    def started(self, total: int, skipped: int) -> None:
        """``total`` cases to run, ``skipped`` already finished."""

    def case_started(self, case: str) -> None:
        """A case's computation begins."""

    def windows(self, done: int, total: int) -> None:
        """Sliding-window progress within the current case."""

    def case_finished(self, report: CaseReport) -> None:
        """A case is written, skipped or failed."""


class NullObserver:
    """A :class:`BatchObserver` that ignores everything."""

    def started(self, total: int, skipped: int) -> None:
        pass

    def case_started(self, case: str) -> None:
        pass

    def windows(self, done: int, total: int) -> None:
        pass

    def case_finished(self, report: CaseReport) -> None:
        pass
