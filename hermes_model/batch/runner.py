"""Batch segmentation: many scans, one model loaded once; what ``hermes segment`` runs.

Pipeline: while case ``i`` runs on the device, case ``i + 1`` is read in a background thread and
case ``i - 1``'s outputs are written in another (writing .nii.gz is often slower than the
network). Each case's failure is isolated: a recognised error (``HermesError``, out of memory)
becomes one line in the report and the batch goes on. What each case writes: ``outputs``.

Sharding (``shard=(i, n)``): the sorted case list, every n-th case starting at ``i``; ``i`` is
0-based like torchrun's RANK and SLURM's default array indices (``--shard $RANK/$WORLD_SIZE``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hermes_model import tasks as registry
from hermes_model.batch.outcome import (
    BatchObserver,
    BatchOptions,
    BatchReport,
    CaseReport,
    NullObserver,
)
from hermes_model.batch.outputs import (
    StatsWriter,
    check_output_dir,
    finished_legend,
    skipped_report,
    write_case,
)
from hermes_model.errors import ConfigError, HermesError, OptionError
from hermes_model.io import ImageMeta, case_name, find_images, is_dicom_case, read_image

__all__ = ["check_values", "parse_shard", "shard_cases", "segment_files"]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with 0 <= i < n; ConfigError otherwise."""
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if n < 1 or not 0 <= i < n:
        raise OptionError(
            f"bad shard {text!r}: use i/n with 0 <= i < n, 0-based (e.g. 0/4 ... 3/4, or "
            "$RANK/$WORLD_SIZE)"
        )
    return i, n


def shard_cases(cases: Sequence[Path], index: int, count: int) -> list[Path]:
    """Every ``count``-th case of the sorted list, starting at 0-based ``index``."""
    return sorted(cases, key=str)[index::count]


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


def check_values(options: BatchOptions) -> None:
    """OptionError for option values that are wrong whatever the input (cheap; before any work).

    ``tasks`` that name no task (``""``, ``",,"``) are refused: leave them out (None) for every
    task of the weights.
    """
    if options.tasks is not None and not any(
        name.strip() for item in options.tasks for name in item.split(",")
    ):
        raise OptionError(
            f"--tasks {', '.join(map(repr, options.tasks)) or '[]'} names no task; give task ids "
            "or aliases, comma-separated (hermes tasks lists them), or leave --tasks out for "
            "every task of the weights"
        )
    if options.batch_size is not None and options.batch_size < 1:
        raise OptionError(
            f"--batch-size must be at least 1 (windows per forward pass), got "
            f"{options.batch_size}; leave it out for the device's default"
        )
    if not 0.0 <= options.overlap < 1.0:
        raise OptionError(
            f"--overlap must be in [0, 1), got {options.overlap:g}; 0.5 is the default"
        )


def _plan(inputs: Sequence[str | Path], options: BatchOptions) -> list[Path]:
    """The cases of this shard; InputError/ConfigError/OutputError before any work."""
    check_values(options)
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
    observer = observer or NullObserver()
    cases = _plan(inputs, options)
    reports: list[CaseReport] = []
    todo: list[Path] = []
    redo: dict[str, str] = {}  # case -> why its earlier outputs are not kept (--skip-existing)
    for path in cases:
        legend, why = (
            finished_legend(options, case_name(path)) if options.skip_existing else (None, "")
        )
        if legend is None:
            todo.append(path)
            if why:
                redo[case_name(path)] = f"{case_name(path)}: redone, because {why}"
        else:
            reports.append(skipped_report(case_name(path), path, legend))
    if segmenter is None:
        segmenter = _segmenter(options)
    if options.tasks is not None:
        segmenter.select_tasks(options.tasks, None)  # unknown names fail before any case runs
    observer.started(len(todo), len(reports))
    for report in reports:
        observer.case_finished(report)
    stats = StatsWriter(options.stats, [row for r in reports for row in r.rows])
    try:
        with (
            ThreadPoolExecutor(1, "hermes-read") as reader,
            ThreadPoolExecutor(1, "hermes-write") as writer,
        ):
            _Pipeline(segmenter, options, observer, reader, writer, stats, reports, redo).run(todo)
    finally:
        stats.close()
    batch = BatchReport(
        reports, dict(getattr(segmenter, "weights", {})), dict(getattr(segmenter, "runtime", {}))
    )
    if options.report is not None:
        from hermes_model.batch.report import write_report

        write_report(batch, options.report)
    return batch


@dataclass
class _Pipeline:
    """Read ahead, compute, write behind: at most one case in each stage."""

    segmenter: Any
    options: BatchOptions
    observer: BatchObserver
    reader: ThreadPoolExecutor
    writer: ThreadPoolExecutor
    stats: StatsWriter
    reports: list[CaseReport]
    redo: dict[str, str]

    def run(self, todo: list[Path]) -> None:
        reads = [self.reader.submit(_timed_read, todo[0])] if todo else []
        waiting: list[Future[CaseReport]] = []  # write jobs not yet counted, oldest first
        try:
            for i, path in enumerate(todo):
                if i + 1 < len(todo):
                    reads.append(self.reader.submit(_timed_read, todo[i + 1]))
                waiting.append(self._compute(path, reads[i]))
                reads[i] = Future()  # drop this case's array from the list once it is used
                while len(waiting) > 1:
                    self._collect_oldest(waiting)
        except BaseException:  # Ctrl-C, SIGTERM: the cases being written are finished, counted
            while waiting:
                self._collect_oldest(waiting)
            raise
        while waiting:
            self._collect_oldest(waiting)

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
        unlike = list(result.out_of_distribution)  # also among its warnings (pipeline.ood)
        result = result.to("cpu")  # frees the device for the next case; the writer is CPU-only
        compute = time.perf_counter() - start

        def write() -> CaseReport:
            from hermes_model.pipeline.postprocess import stats_rows

            begin = time.perf_counter()
            outputs = write_case(case, str(path), result, array, self.options)
            result.timings["write"] = time.perf_counter() - begin
            return CaseReport(
                case, str(path), "done", seconds=compute + result.timings["write"],
                outputs=outputs, volumes_ml=dict(result.volumes_ml),
                warnings=list(result.warnings), rows=stats_rows(case, result, str(path)),
                timings=dict(result.timings), out_of_distribution=list(unlike),
            )  # fmt: skip

        return self.writer.submit(_guard(write, lambda e: _failure(case, path, e, compute)))

    def _collect_oldest(self, waiting: list[Future[CaseReport]]) -> None:
        """Once the oldest job's files are in place (or it failed): its stats rows, its report.
        The job leaves ``waiting`` only when done, so an interrupted wait can be resumed."""
        report = waiting[0].result()
        del waiting[0]
        if report.case in self.redo:
            report.warnings.insert(0, self.redo[report.case])
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


def _segmenter(options: BatchOptions) -> Any:
    """What segments the batch: the weights named by ``--weights`` (default: the registry's
    default entry), or, for ``--tasks`` without ``--weights``, whichever registered weights have
    each task (``pipeline.routed``; each weights file loaded once for the whole batch)."""
    from hermes_model.pipeline.routed import RoutedSegmenter
    from hermes_model.pipeline.segmenter import Segmenter

    settings: dict[str, Any] = {
        "device": options.device, "overlap": options.overlap, "batch_size": options.batch_size,
        "tta": options.tta, "precision": options.precision, "engine": options.engine,
        "norm_region": options.norm_region, "largest_component": options.largest_component,
        "force": options.force,
    }  # fmt: skip
    if options.weights is None and options.tasks:
        return RoutedSegmenter(options.tasks, **settings)
    return Segmenter(options.weights, **settings)
