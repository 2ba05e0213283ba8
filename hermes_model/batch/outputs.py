"""The files of one case, and the run-wide files (output folder, stats table).

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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hermes_model.batch.outcome import BatchOptions, CaseReport
from hermes_model.errors import OutputError
from hermes_model.io import ImageMeta, write_bytes_atomically, write_image

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


def finished_legend(options: BatchOptions, case: str) -> dict[str, Any] | None:
    """The case's legend when it was finished earlier (readable JSON), else None."""
    path = options.output_dir / f"{case}.json"
    try:
        legend: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return legend if isinstance(legend, dict) and "labels" in legend else None


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
    out_of_distribution: Sequence[str] = (),
) -> list[Path]:
    """Write one case's outputs (module docstring), the JSON legend last. Returns the paths.

    ``result`` is a :class:`hermes_model.pipeline.result.SegmentationResult`; ``image`` the input
    array (for the preview); ``out_of_distribution`` the scan's :func:`ood.check_scan` lines
    (also among ``result.warnings``), kept apart in the legend.
    """
    from hermes_model.io.dicom_out import case_outputs
    from hermes_model.pipeline import postprocess
    from hermes_model.pipeline.preview import preview_png

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
        png = preview_png(image, meta.affine, labels, result)
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


class StatsWriter:
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
