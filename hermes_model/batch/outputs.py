"""The files of one case, and the run-wide files (output folder, stats table).

Outputs per case, one unit (``io.atomic.OutputUnit``): every file is written under a temporary
name first and all are renamed together at the end, the JSON legend last, so that its presence
means the case is complete; a failure leaves none of them. The legend records the size and
sha256 of each file (``"written"``): ``--skip-existing`` skips a case only when they all match.

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
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from hermes_model.batch.outcome import BatchOptions, CaseReport
from hermes_model.errors import OutputError
from hermes_model.io import ImageMeta, write_bytes_atomically
from hermes_model.io.atomic import OutputUnit, open_output_stream
from hermes_model.io.nifti import nifti_bytes

__all__ = ["check_output_dir", "finished_legend", "skipped_report", "write_case", "StatsWriter"]


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


def finished_legend(options: BatchOptions, case: str) -> tuple[dict[str, Any] | None, str]:
    """``(legend, "")`` when the case was finished earlier and its files are intact, else
    ``(None, why it is redone)``; the reason is empty when the case has no legend at all."""
    path = options.output_dir / f"{case}.json"
    if not path.exists():
        return None, ""
    try:
        legend: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, f"{path.name} is unreadable"
    if not isinstance(legend, dict) or "labels" not in legend:
        return None, f"{path.name} is not a Hermes legend"
    written = legend.get("written")
    if not isinstance(written, dict) or not written:
        return None, f"{path.name} records no sizes and checksums (an older Hermes wrote it)"
    for name, record in written.items():
        problem = _mismatch(options.output_dir / name, record)
        if problem:
            return None, f"{name} {problem}"
    return legend, ""


def _mismatch(path: Path, record: Any) -> str:
    """Why ``path`` is not the file its legend recorded (``{"bytes", "sha256"}``); "" if it is."""
    if not isinstance(record, dict):
        return "has no record in the legend"
    try:
        payload = path.read_bytes()
    except OSError:
        return "is missing"
    if len(payload) != record.get("bytes"):
        return f"has {len(payload)} bytes, not the {record.get('bytes')} recorded (truncated?)"
    if hashlib.sha256(payload).hexdigest() != record.get("sha256"):
        return "does not match its recorded sha256 (changed since)"
    return ""


def skipped_report(case: str, path: Path, legend: dict[str, Any]) -> CaseReport:
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
) -> list[Path]:
    """Write one case's outputs (module docstring), the JSON legend last. Returns the paths.

    ``result`` is a :class:`hermes_model.pipeline.result.SegmentationResult`; ``image`` the input
    array (for the preview). The legend keeps the result's out-of-distribution lines (also
    among its warnings) and withheld tasks apart (``postprocess.legend``).
    """
    from hermes_model.io.dicom_out import case_outputs
    from hermes_model.pipeline import postprocess
    from hermes_model.pipeline.preview import preview_png

    folder = options.output_dir
    meta: ImageMeta = result.meta
    dicom = case_outputs(case, result, folder, options.formats)  # built first: may fail
    labels = result.labels()
    stems = postprocess.task_file_stems(result.task_ids)
    files: dict[str, str] = {}
    images: dict[Path, Callable[[], bytes]] = {}  # in the order the unit gets them
    label_map = folder / f"{case}.nii.gz" if "nifti" in options.formats else None
    if label_map is not None:
        images[label_map] = functools.partial(nifti_bytes, labels, meta, label_map)
    for task in result.task_ids:
        if options.split:
            path = folder / case / f"{stems[task]}.nii.gz"
            images[path] = functools.partial(_mask_bytes, result, task, meta, path)
            files[task] = str(path.relative_to(folder))
        if options.probabilities:
            path = folder / case / f"{stems[task]}_probability.nii.gz"
            images[path] = functools.partial(_probability_bytes, result, task, meta, path)
    with OutputUnit() as unit, _pool(len(images)) as pool:
        # Each file is encoded and compressed in its own thread (numpy and gzip release the
        # GIL): one case's 16 files take about the time of the slowest few, not their sum.
        encoded = {path: pool.submit(job) for path, job in images.items()}
        if label_map is not None:  # the label map first, then DICOM, then per-task files
            unit.add(label_map, encoded.pop(label_map).result())
        for path, payload in dicom:
            unit.add(path, payload)
        for path, job in encoded.items():
            unit.add(path, job.result())
        if options.preview:
            png = preview_png(image, meta.affine, labels, result)
            unit.add(folder / f"{case}.png", png)
        if options.report is not None:
            from hermes_model.batch.report import images_dir, thumbnail_png

            thumbnail = images_dir(options.report) / f"{case}.png"
            unit.add(thumbnail, thumbnail_png(image, labels, result))
        inside = {p: d for p, d in unit.digests.items() if p.is_relative_to(folder)}
        legend = postprocess.legend(result, input_file, files)
        legend["outputs"] = [str(p.relative_to(folder)) for p in inside]
        legend["written"] = {str(p.relative_to(folder)): d for p, d in inside.items()}
        text = json.dumps(legend, indent=2) + "\n"
        unit.add(folder / f"{case}.json", text.encode())
        return unit.commit()


@contextlib.contextmanager
def _pool(jobs: int) -> Iterator[ThreadPoolExecutor]:
    """Threads for ``jobs`` files, one per CPU core at most; on an error the files not yet
    started are dropped."""
    pool = ThreadPoolExecutor(max(1, min(jobs, os.cpu_count() or 1)), "hermes-encode")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _mask_bytes(result: Any, task: str, meta: ImageMeta, path: Path) -> bytes:
    return nifti_bytes(result.mask(task), meta, path)


def _probability_bytes(result: Any, task: str, meta: ImageMeta, path: Path) -> bytes:
    return nifti_bytes(result.probability(task), meta, path, dtype=np.float32)


class StatsWriter:
    """The stats CSV: a file is rewritten (atomically) after every finished case, so progress is
    kept; standard output, a device or a FIFO gets the header once and then each case's rows."""

    def __init__(self, path: Path | None, rows: list[dict[str, Any]]) -> None:
        self.path, self.rows = path, rows
        self.stream = open_output_stream(path) if path is not None else None
        if self.stream is not None:
            self._send(rows, header=True)
        else:
            self.write()

    def add(self, rows: list[dict[str, Any]]) -> None:
        if self.path is not None and rows:
            self.rows.extend(rows)
            if self.stream is not None:
                self._send(rows, header=False)
            else:
                self.write()

    def write(self) -> None:
        from hermes_model.pipeline.postprocess import stats_csv

        if self.path is not None:
            write_bytes_atomically(self.path, stats_csv(self.rows))

    def close(self) -> None:
        """Close a stream target (a file needs nothing)."""
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                stream.close()
            except OSError as error:
                raise self._error(error) from error

    def _send(self, rows: list[dict[str, Any]], header: bool) -> None:
        from hermes_model.pipeline.postprocess import stats_csv

        if self.stream is None:
            return
        text = stats_csv(rows)
        if not header:
            text = text.split(b"\n", 1)[1]
        try:
            self.stream.write(text)
            self.stream.flush()  # each case's rows as it finishes
        except OSError as error:
            raise self._error(error) from error

    def _error(self, error: OSError) -> OutputError:
        return OutputError(
            f"{self.path}: cannot write the output ({error.strerror or error}); give a writable "
            "file, or - for standard output"
        )
