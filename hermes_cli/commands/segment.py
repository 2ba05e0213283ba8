"""``hermes segment``: segment scans into label maps, masks, volumes and previews.

The work is ``hermes_model.batch.runner.segment_files``; this module parses options, draws
progress on stderr and prints the summary table on stdout. torch is imported only when the
command runs.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.traceback import Traceback

from hermes_cli._common import (
    DebugOption,
    LargestComponentOption,
    err,
    fail,
    handle_errors,
    out,
)
from hermes_model.options import ENGINES
from hermes_model.tasks import MODALITIES

if TYPE_CHECKING:
    from hermes_model.batch.outcome import BatchReport, CaseReport

Inputs = Annotated[
    list[Path],
    typer.Argument(
        help="Scans: NIfTI/NRRD/MHA/MGZ/Analyze (.hdr)/MINC files, DICOM series folders or "
        "files, or folders of scans."
    ),
]
Output = Annotated[
    Path, typer.Option("--output", "-o", help="Output folder (created if missing). Required.")
]
Tasks = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated task ids or aliases (hermes tasks). Without --weights, each task "
        "comes from the registered weights that have it (the default weights first, then your "
        "imported/personal ones, then packaged, then downloadable; several weights files run as "
        "one job). Default: every task of the default weights trained on the scan's modality; "
        "naming fewer is faster (fewer task groups)."
    ),
]
Weights = Annotated[
    str | None,
    typer.Option(
        help="Registry name, .safetensors file or hf://org/repo@commit/file: every task from "
        "these weights. Default: the registry's default weights (small, offline), or with "
        "--tasks the weights that have each task; larger weights are slower and better."
    ),
]
# Choices come from the registry (as in ``hermes tasks``); mypy cannot see the members.
ModalityChoice = enum.Enum("ModalityChoice", {m.upper(): m for m in MODALITIES}, type=str)  # type: ignore[misc]
Modality = Annotated[
    ModalityChoice | None,
    typer.Option(
        case_sensitive=False,
        help="Modality of every scan. Default: the DICOM tag, else detected from intensities "
        "(fast, usually right; force it for unusual scans).",
    ),
]
Device = Annotated[
    str,
    typer.Option(
        help="auto, cpu, cuda, cuda:N or mps. Default auto: CUDA, else MPS, else CPU (a CPU is "
        "10-100x slower)."
    ),
]
Overlap = Annotated[
    float,
    typer.Option(
        help="Window overlap in [0, 1). Default 0.5: smooth seams; 0 is ~8x fewer windows but "
        "shows seams, 0.75 is ~8x more windows for little gain."
    ),
]
Precision = Annotated[
    str,
    typer.Option(
        help="auto, fp32, fp16, bf16 or int8. Default auto: fp16 on CUDA (fastest); on a CPU "
        "with native bf16 (AMX/AVX512-BF16) bf16 where it measured faster for the engine and "
        "model size; int8 only for weights and CPUs where it passed the accuracy guard and "
        "measured faster (docs/int8.md); else fp32. int8: engine openvino + NNCF, calibrated "
        "once per machine on the weights' own training cases (minutes; cached). fp32 is slower "
        "and only marginally different; on CUDA it is IEEE fp32 (TF32 off), the reference for "
        "comparing machines."
    ),
]
EngineChoice = enum.Enum("EngineChoice", {e.upper(): e for e in ENGINES}, type=str)  # type: ignore[misc]
Engine = Annotated[
    EngineChoice,
    typer.Option(
        case_sensitive=False,
        help="What runs the network. Default auto: openvino on an Intel/AMD CPU when the extra "
        'is installed (pip install "hermes-seg\\[openvino]"; 2-4x faster than torch, first run '
        "of a model converts it, ~15 s to minutes, then cached), else torch. compile: "
        "torch.compile with CUDA graphs (GPU; first batch compiles for a minute).",
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        help="Windows per forward pass. Default: 4 on a GPU (faster than 1-2), 2 on the CPU "
        "(1 is up to 3x slower: torch's fallback convolution); larger needs more memory."
    ),
]
Split = Annotated[
    bool,
    typer.Option(
        "--split", help="Also write one uint8 mask per task in DIR/<case>/ (default off; slower)."
    ),
]
Probabilities = Annotated[
    bool,
    typer.Option(
        "--probabilities",
        help="Also write one probability map per task in DIR/<case>/ (default off; large and slow "
        "to write).",
    ),
]
Stats = Annotated[
    Path | None,
    typer.Option(
        help="Write volumes (mL) per task per case to this CSV (default: none; cheap). - or "
        "/dev/stdout: the CSV on stdout (the summary table then goes to stderr); a device or "
        "FIFO is written into, never replaced."
    ),
]
Preview = Annotated[
    bool,
    typer.Option(
        "--preview",
        help="Also write DIR/<case>.png with three overlay slices (default off; cheap).",
    ),
]
SkipExisting = Annotated[
    bool,
    typer.Option(
        "--skip-existing",
        help="Skip cases finished earlier: DIR/<case>.json exists and every file it records "
        "has the recorded size and sha256 (a case that fails the check is redone, with a "
        "warning). Default off: recompute and overwrite.",
    ),
]
Shard = Annotated[
    str | None,
    typer.Option(
        help="i/n: only every n-th case of the sorted list, from 0-based i (e.g. $RANK/$WORLD_SIZE"
        "). Default: all cases. For many GPUs or nodes without coordination."
    ),
]
Formats = Annotated[
    list[str] | None,
    typer.Option(
        "--format",
        help="Label-map format: nifti (DIR/<case>.nii.gz), dicom-seg (DIR/<case>_seg.dcm) or "
        "rtstruct (DIR/<case>_rtstruct.dcm, for RT planning); repeat or comma-separate for "
        "several. Default nifti. The DICOM ones need DICOM-series input and hermes-seg[dicom]; "
        "each adds about a second per case.",
    ),
]
Report = Annotated[
    Path | None,
    typer.Option(
        "--report",
        help="Write one HTML page for the batch (FILE.html; thumbnails in FILE_files/ beside "
        "it): a sortable row per case with volumes, modality, warnings, seconds, failures. "
        "Default: none; costs a small preview per case.",
    ),
]
Tta = Annotated[
    bool,
    typer.Option(
        "--tta",
        help="Test-time augmentation: average over mirror images, left-right (left and right "
        "structures swapped) and along the axes the weights trained mirrored (default off; 2x "
        "slower with the bundled model, up to 8x; smoother masks).",
    ),
]

NormRegion = Annotated[
    str | None,
    typer.Option(
        help="Where the z-score statistics come from: volume or body (CT above -500 HU, MR/PET "
        "above 10% of the clip window). Default: what the weights were trained with (volume). "
        "body suits whole scans on weights trained on label-cropped volumes, such as the "
        "authors' imported Hermes-R."
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Keep the masks of a task group even for a scan far outside its training data "
        "(body region, size, resolution or intensities unlike every training scan; docs/ood.md)"
        ". Default off: those masks are withheld, with a warning in the summary and legend; a "
        "scan left with none fails (exit 3).",
    ),
]


class _Bars:
    """Rich progress bars on stderr (cases and windows) fed by the batch observer hooks."""

    def __init__(self, debug: bool = False) -> None:
        self.debug = debug
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=err, transient=True,
        )  # fmt: skip
        self.cases = self.progress.add_task("cases", total=None)
        self.window_bar = self.progress.add_task("windows", total=None, visible=False)

    def started(self, total: int, skipped: int) -> None:
        self.progress.update(self.cases, total=total + skipped)

    def case_started(self, case: str) -> None:
        self.progress.update(self.window_bar, description=case, completed=0, visible=True)

    def windows(self, done: int, total: int) -> None:
        self.progress.update(self.window_bar, completed=done, total=total)

    def case_finished(self, report: CaseReport) -> None:
        self.progress.advance(self.cases)
        for line in report.warnings:
            self.progress.console.print(f"[yellow]warning:[/] {line}", highlight=False)
        if self.debug and report.error is not None:
            error = report.error
            trace = Traceback.from_exception(type(error), error, error.__traceback__)
            self.progress.console.print(trace)


def _summary(report: BatchReport) -> Table:
    used, runtime = report.weights, report.runtime
    caption = None
    if used:  # several weights files (routed --tasks) are joined with " + "
        names, hashes = used["name"].split(" + "), used["sha256"].split(" + ")
        caption = "weights: " + ", ".join(
            f"{n} (sha256 {h[:12]}…)" for n, h in zip(names, hashes, strict=False)
        )
        if runtime:
            caption += f"; {runtime['engine']} {runtime['precision']} on {runtime['device']}"
    table = Table(title=f"hermes segment: {len(report.cases)} case(s)", caption=caption)
    for column in ("case", "status", "seconds", "volumes (mL) / problem"):
        table.add_column(column, overflow="fold")
    for case in report.cases:
        detail = (
            case.message
            if case.status == "failed"
            else ", ".join(
                f"{task.split('/')[-1]} {ml:.1f}" for task, ml in case.volumes_ml.items()
            )
        )
        for line in case.out_of_distribution:  # far outside a group's training data
            detail += f"\n[yellow]warning: {line.split(': ', 1)[-1]}[/]"
        style = {"failed": "red", "skipped": "dim"}.get(case.status, "green")
        table.add_row(case.case, f"[{style}]{case.status}[/]", f"{case.seconds:.1f}", detail)
    return table


def segment_command(
    inputs: Inputs, output: Output, tasks: Tasks = None, weights: Weights = None,
    modality: Modality = None, device: Device = "auto", overlap: Overlap = 0.5,
    precision: Precision = "auto", batch_size: BatchSize = None, split: Split = False,
    probabilities: Probabilities = False, stats: Stats = None, preview: Preview = False,
    skip_existing: SkipExisting = False, shard: Shard = None, tta: Tta = False,
    engine: Engine = EngineChoice.AUTO,  # type: ignore[attr-defined]
    norm_region: NormRegion = None, formats: Formats = None, report_page: Report = None,
    largest_component: LargestComponentOption = "auto", force: Force = False,
    debug: DebugOption = False,
) -> None:  # fmt: skip
    """Segment CT/MR scans: a label map + JSON legend per case, optional masks, stats, previews."""
    with handle_errors(debug):
        from hermes_model.batch.outcome import BatchOptions
        from hermes_model.batch.runner import parse_shard, segment_files
        from hermes_model.io.atomic import is_standard_output
        from hermes_model.io.dicom_out import parse_formats

        options = BatchOptions(
            output_dir=output, tasks=None if tasks is None else [tasks],
            modality=modality.value if modality else None,
            weights=weights, device=device, overlap=overlap, tta=tta, precision=precision,
            batch_size=batch_size, split=split, probabilities=probabilities, preview=preview,
            stats=stats, skip_existing=skip_existing,
            shard=parse_shard(shard) if shard else None, engine=engine.value,
            norm_region=norm_region, formats=parse_formats(formats), report=report_page,
            largest_component=largest_component, force=force,
        )  # fmt: skip
        bars = _Bars(debug)
        with bars.progress:
            report = segment_files(inputs, options, bars)
        if len(report.cases) == 1 and report.failed:
            fail(report.failed[0].message, report.exit_code)
        (err if stats is not None and is_standard_output(stats) else out).print(_summary(report))
        if report.failed:
            fail(f"{len(report.failed)} of {len(report.cases)} cases failed", report.exit_code)
