"""Batch segmentation: many scans, one model loaded once; what ``hermes segment`` runs.

Pipeline: while case ``i`` runs on the device, case ``i + 1`` is read in a background thread and
case ``i - 1``'s outputs are written in another (writing .nii.gz is often slower than the
network). Each case's failure is isolated: a recognised error (``HermesError``, out of memory)
becomes one line in the report and the batch goes on.

Outputs per case (every file written atomically; the JSON legend last, so that its presence
means the case is complete):

    DIR/<case>.nii.gz                       label map on the input's exact grid   (format nifti)
    DIR/<case>_seg.dcm                      DICOM SEG, one segment per task   (format dicom-seg)
    DIR/<case>_rtstruct.dcm                 RT Structure Set, one ROI per task (format rtstruct)
    DIR/<case>.json                         legend: value -> task, volumes, modality, weights
    DIR/<case>/<task>.nii.gz                one uint8 mask per task            (split)
    DIR/<case>/<task>_probability.nii.gz    float32 probability, float16 precision  (probabilities)
    DIR/<case>.png                          three orthogonal slices with overlays     (preview)
    STATS.csv                               volumes per task per case                 (stats)

Probabilities are stored as float32 holding float16-rounded values: NIfTI-1 has no float16
type; the dropped mantissa bits compress away.

Sharding (``shard=(i, n)``): the sorted case list, every n-th case starting at ``i``; ``i`` is
0-based like torchrun's RANK and SLURM's default array indices (``--shard $RANK/$WORLD_SIZE``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hermes_model import tasks as registry
from hermes_model.errors import ConfigError, HermesError, OutputError
from hermes_model.io import (
    ImageMeta,
    case_name,
    find_images,
    is_dicom_case,
    read_image,
    write_bytes_atomically,
    write_image,
)
from hermes_model.pipeline.ood import check_scan

__all__ = [
    "BatchOptions",
    "CaseReport",
    "BatchReport",
    "BatchObserver",
    "NullObserver",
    "parse_shard",
    "shard_cases",
    "check_output_dir",
    "write_case",
    "segment_files",
]


@dataclass(frozen=True)
class BatchOptions:
    """What to segment and what to write (see the module docstring for the output layout).

    Attributes:
        output_dir: folder for all outputs (created if missing).
        tasks: task ids or aliases; None = every task of the weights for each scan's modality.
        modality: ``ct``/``mr`` for every scan, overriding detection.
        weights: registry name, ``.safetensors`` path, ``hf://`` URI, or None for the default.
        device, overlap, tta, precision, batch_size: as
            :class:`hermes_model.pipeline.segmenter.Segmenter`.
        split: one mask file per task.
        probabilities: one probability file per task.
        preview: a PNG per case.
        stats: CSV file of volumes per task per case.
        skip_existing: skip cases whose JSON legend exists (finished earlier).
        shard: ``(index, count)``, 0-based index: process every count-th case from index.
        engine: what runs the network (``hermes_model.engines``): auto, torch, openvino, compile.
        norm_region: z-score region override (``volume``/``body``); None: the weights' own.
        largest_component: tasks keeping only their largest connected component (``auto``: as
            the weights record, ``all``, ``none`` or comma-separated task names).
        formats: label-map formats, any of ``dicom_out.FORMATS`` (DICOM ones need DICOM input).
        report: an HTML page for the batch (``hermes_model.batch.report``), thumbnails beside it.
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
    #: :func:`hermes_model.pipeline.ood.check_scan` lines (also in ``warnings``).
    out_of_distribution: list[str] = field(default_factory=list)


@dataclass
class BatchReport:
    """All cases of a run, in processing order (skipped ones first)."""

    cases: list[CaseReport]
    #: The weights used: name, sha256 and source (empty when every case was skipped early).
    weights: dict[str, str] = field(default_factory=dict)

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


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with 0 <= i < n; ConfigError otherwise."""
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if n < 1 or not 0 <= i < n:
        raise ConfigError(
            f"bad shard {text!r}: use i/n with 0 <= i < n, 0-based (e.g. 0/4 ... 3/4, or "
            "$RANK/$WORLD_SIZE)"
        )
    return i, n


def shard_cases(cases: Sequence[Path], index: int, count: int) -> list[Path]:
    """Every ``count``-th case of the sorted list, starting at 0-based ``index``."""
    return sorted(cases, key=str)[index::count]


def check_output_dir(folder: Path) -> None:
    """Create ``folder`` and prove it writable (a probe file, removed); OutputError otherwise."""

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"{folder}: cannot create the output folder ({error.strerror or error}); choose a "
            "writable folder with -o"
        ) from error
    probe = write_bytes_atomically(folder / ".hermes-write-test", b"")
    probe.unlink()


def _finished(options: BatchOptions, case: str) -> dict[str, Any] | None:
    """The case's legend when it was finished earlier (readable JSON), else None."""
    path = options.output_dir / f"{case}.json"
    try:
        legend: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return legend if isinstance(legend, dict) and "labels" in legend else None


def _skipped_report(case: str, path: Path, legend: dict[str, Any]) -> CaseReport:
    rows = [
        {
            "case": case,
            "input": str(path),
            "task": entry.get("task"),
            "name": entry.get("name"),
            "label": entry.get("value"),
            "voxels": entry.get("voxels"),
            "volume_ml": entry.get("volume_ml"),
            "modality": legend.get("modality"),
            "modality_confidence": legend.get("modality_confidence"),
        }
        for entry in legend.get("labels", [])
    ]
    volumes = {str(r["task"]): float(r["volume_ml"] or 0.0) for r in rows}
    return CaseReport(
        case, str(path), "skipped", "finished earlier", volumes_ml=volumes, rows=rows,
        warnings=[str(w) for w in legend.get("warnings", [])],
        out_of_distribution=[str(w) for w in legend.get("out_of_distribution", [])],
    )  # fmt: skip


def write_case(
    case: str,
    input_file: str,
    result: Any,
    image: np.ndarray,
    options: BatchOptions,
    out_of_distribution: Sequence[str] = (),
) -> list[Path]:
    """Write one case's outputs (module docstring), the JSON legend last. Returns the paths.

    ``result`` is a :class:`hermes_model.pipeline.result.SegmentationResult`; ``image`` the input
    array (for the preview); ``out_of_distribution`` the scan's :func:`ood.check_scan` lines
    (also among ``result.warnings``), kept apart in the legend.
    """
    from hermes_model.io.dicom_out import case_outputs
    from hermes_model.pipeline import postprocess

    folder = options.output_dir
    meta: ImageMeta = result.meta
    dicom = case_outputs(case, result, folder, options.formats)  # built first: may fail
    labels = result.labels()
    written = []
    if "nifti" in options.formats:
        written.append(write_image(labels, meta, folder / f"{case}.nii.gz"))
    written += [write_bytes_atomically(path, payload) for path, payload in dicom]
    stems = postprocess.task_file_stems(result.task_ids)
    files: dict[str, str] = {}
    for task in result.task_ids:
        if options.split:
            path = write_image(result.mask(task), meta, folder / case / f"{stems[task]}.nii.gz")
            files[task] = str(path.relative_to(folder))
            written.append(path)
        if options.probabilities:
            path = folder / case / f"{stems[task]}_probability.nii.gz"
            written.append(write_image(result.probability(task), meta, path, dtype=np.float32))
    if options.preview:
        png = postprocess.preview_png(image, meta.affine, labels, result)
        written.append(write_bytes_atomically(folder / f"{case}.png", png))
    if options.report is not None:
        from hermes_model.batch.report import images_dir, thumbnail_png

        thumbnail = images_dir(options.report) / f"{case}.png"
        written.append(write_bytes_atomically(thumbnail, thumbnail_png(image, labels, result)))
    legend = postprocess.legend(result, input_file, files)
    legend["outputs"] = [str(p.relative_to(folder)) for p in written if p.is_relative_to(folder)]
    legend["out_of_distribution"] = list(out_of_distribution)
    text = json.dumps(legend, indent=2) + "\n"
    written.append(write_bytes_atomically(folder / f"{case}.json", text.encode()))
    return written


def _recognised_errors() -> tuple[type[BaseException], ...]:
    import torch

    out_of_memory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch < 2.5
    return (HermesError, out_of_memory, MemoryError)


def _failure(case: str, path: Path, error: BaseException, seconds: float) -> CaseReport:
    if isinstance(error, HermesError):
        message, code = str(error), error.exit_code
    else:
        message = (
            f"{path}: out of memory ({type(error).__name__}); close other programs on the device, "
            "or use --device cpu"
        )
        code = 1
    return CaseReport(
        case, str(path), "failed", message, exit_code=code, seconds=seconds, error=error
    )


def _timed_read(path: Path) -> tuple[np.ndarray, ImageMeta, float]:
    start = time.perf_counter()
    array, meta = read_image(path)
    return array, meta, time.perf_counter() - start


def _plan(inputs: Sequence[str | Path], options: BatchOptions) -> list[Path]:
    """The cases of this shard; InputError/ConfigError/OutputError before any work."""
    if options.modality is not None:
        registry.normalize_modality(options.modality)
    cases = find_images(inputs)
    from hermes_model.io.dicom_out import check_dicom_input

    for path in cases:  # before any work: a DICOM format for a non-DICOM input is one line
        check_dicom_input(str(path), is_dicom_case(path), options.formats)
    names: dict[str, Path] = {}
    for path in cases:
        other = names.setdefault(case_name(path), path)
        if other != path:
            raise ConfigError(
                f"two inputs give the case name {case_name(path)!r} ({other} and {path}), so "
                "their outputs would overwrite each other; rename one, or segment them into "
                "different output folders"
            )
    if options.shard is not None:
        cases = shard_cases(cases, *options.shard)
    check_output_dir(options.output_dir)
    if options.report is not None:
        from hermes_model.batch.report import check_report_path

        check_report_path(options.report)
    return cases


def segment_files(
    inputs: Sequence[str | Path],
    options: BatchOptions,
    observer: BatchObserver | None = None,
    segmenter: Any = None,
) -> BatchReport:
    """Segment every scan that ``inputs`` name (files, DICOM folders, folders of scans).

    Cheap checks first (inputs exist, output folder writable, shard, task names), then the
    weights are loaded once (unless a ``Segmenter`` is passed) and the cases run in order.

    Raises HermesError for problems that concern the whole run (no inputs, unwritable output
    folder, unknown task, bad weights); per-case problems are in the report.
    """
    from hermes_model.pipeline.segmenter import Segmenter

    observer = observer or NullObserver()
    cases = _plan(inputs, options)
    reports: list[CaseReport] = []
    todo: list[Path] = []
    for path in cases:
        legend = _finished(options, case_name(path)) if options.skip_existing else None
        if legend is None:
            todo.append(path)
        else:
            reports.append(_skipped_report(case_name(path), path, legend))
    if segmenter is None:
        segmenter = Segmenter(
            options.weights, options.device, options.overlap, options.batch_size, options.tta,
            options.precision, engine=options.engine, norm_region=options.norm_region,
            largest_component=options.largest_component,
        )  # fmt: skip
    if options.tasks:
        segmenter.select_tasks(options.tasks, None)  # unknown names fail before any case runs
    observer.started(len(todo), len(reports))
    for report in reports:
        observer.case_finished(report)
    stats = _StatsWriter(options.stats, [row for r in reports for row in r.rows])
    with (
        ThreadPoolExecutor(1, "hermes-read") as reader,
        ThreadPoolExecutor(1, "hermes-write") as writer,
    ):
        _Pipeline(segmenter, options, observer, reader, writer, stats, reports).run(todo)
    batch = BatchReport(reports, dict(getattr(segmenter, "weights", {})))
    if options.report is not None:
        from hermes_model.batch.report import write_report

        write_report(batch, options.report)
    return batch


class _StatsWriter:
    """Rewrites the stats CSV (atomically) after every finished case, so progress is kept."""

    def __init__(self, path: Path | None, rows: list[dict[str, Any]]) -> None:
        self.path, self.rows = path, rows
        self.write()

    def add(self, rows: list[dict[str, Any]]) -> None:
        if self.path is not None and rows:
            self.rows.extend(rows)
            self.write()

    def write(self) -> None:
        from hermes_model.pipeline.postprocess import stats_csv

        if self.path is not None:
            write_bytes_atomically(self.path, stats_csv(self.rows))


@dataclass
class _Pipeline:
    """Read ahead, compute, write behind: at most one case in each stage."""

    segmenter: Any
    options: BatchOptions
    observer: BatchObserver
    reader: ThreadPoolExecutor
    writer: ThreadPoolExecutor
    stats: _StatsWriter
    reports: list[CaseReport]

    def run(self, todo: list[Path]) -> None:
        reads = [self.reader.submit(_timed_read, todo[0])] if todo else []
        pending: Future[CaseReport] | None = None
        for i, path in enumerate(todo):
            if i + 1 < len(todo):
                reads.append(self.reader.submit(_timed_read, todo[i + 1]))
            job = self._compute(path, reads[i])
            reads[i] = Future()  # drop this case's array from the list once it is used
            if pending is not None:
                self._collect(pending)
            pending = job
        if pending is not None:
            self._collect(pending)

    def _compute(
        self, path: Path, read: Future[tuple[np.ndarray, ImageMeta, float]]
    ) -> Future[CaseReport]:
        """Segment one case; returns its write job (or an already failed report)."""
        case = case_name(path)
        self.observer.case_started(case)
        start = time.perf_counter()
        try:
            array, meta, read_seconds = read.result()
            result = self.segmenter.segment(
                (array, meta), self.options.tasks, self.options.modality,
                probabilities=self.options.probabilities, progress=self.observer.windows,
            )  # fmt: skip
        except _recognised_errors() as error:
            failed: Future[CaseReport] = Future()
            failed.set_result(_failure(case, path, error, time.perf_counter() - start))
            return failed
        result.timings["read"] = read_seconds
        metadata = getattr(getattr(self.segmenter, "model", None), "metadata", None) or {}
        unlike = check_scan(array, meta, result.modality, metadata, result.task_ids)
        result.warnings.extend(unlike)
        result = result.to("cpu")  # frees the device for the next case; the writer is CPU-only
        compute = time.perf_counter() - start

        def write() -> CaseReport:
            from hermes_model.pipeline.postprocess import stats_rows

            begin = time.perf_counter()
            outputs = write_case(case, str(path), result, array, self.options, unlike)
            result.timings["write"] = time.perf_counter() - begin
            return CaseReport(
                case, str(path), "done", seconds=compute + result.timings["write"],
                outputs=outputs, volumes_ml=dict(result.volumes_ml),
                warnings=list(result.warnings), rows=stats_rows(case, result, str(path)),
                timings=dict(result.timings), out_of_distribution=list(unlike),
            )  # fmt: skip

        return self.writer.submit(_guard(write, lambda e: _failure(case, path, e, compute)))

    def _collect(self, future: Future[CaseReport]) -> None:
        report = future.result()
        self.reports.append(report)
        self.stats.add(report.rows)
        self.observer.case_finished(report)


def _guard(
    job: Callable[[], CaseReport], on_error: Callable[[BaseException], CaseReport]
) -> Callable[[], CaseReport]:
    """``job`` with recognised errors turned into a failed report (in the writer thread)."""

    def run() -> CaseReport:
        try:
            return job()
        except _recognised_errors() as error:
            return on_error(error)

    return run
