"""``hermes evaluate``: Dice, HD95 and surface Dice per task, for weights on a dataset split or
for a folder of predictions against a folder of ground truth.

The work is ``hermes_model.evaluation.evaluate``; this module checks the option combination,
draws progress on stderr and prints a table on stdout. torch is imported only when it runs.
"""

from __future__ import annotations

import enum
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from hermes_cli._common import (
    DebugOption,
    LargestComponentOption,
    err,
    fail,
    handle_errors,
    out,
)
from hermes_model.evaluation.definitions import DEFINITIONS, HD95_METHODS, NSD_METHODS

if TYPE_CHECKING:
    from hermes_model.evaluation.evaluate import EvalReport

Weights = Annotated[
    str | None,
    typer.Option(
        help="Weights to evaluate (with --dataset): registry name, .safetensors file or "
        "hf://org/repo@commit/file. Default: the registry's default weights.",
    ),
]
Dataset = Annotated[
    Path | None,
    typer.Option(
        help="Dataset card (TOML). With --weights: the cases to segment and score. With "
        "--pred/--gt: only its label values name the tasks. Default: none.",
    ),
]
Split = Annotated[
    str,
    typer.Option(help="The card's split to evaluate (val, test, all...). Default val; "
                 "keep test for final figures."),
]  # fmt: skip
Pred = Annotated[
    Path | None,
    typer.Option(help="Folder of predicted label maps (e.g. hermes segment output), matched to "
                 "--gt by case name; a <case>.json legend names the values. Default: none."),
]  # fmt: skip
Gt = Annotated[
    Path | None,
    typer.Option(help="Folder of ground-truth label maps on the same grids as --pred. "
                 "Default: none."),
]  # fmt: skip
JsonOut = Annotated[
    Path | None,
    typer.Option("--json", help="Also write the full report (every case) as JSON. Default: none."),
]
CsvOut = Annotated[
    Path | None,
    typer.Option("--csv", help="Also write one row per case and task as CSV. Default: none."),
]
Device = Annotated[
    str,
    typer.Option(help="auto, cpu, cuda, cuda:N or mps (with --weights). Default auto: CUDA, else "
                 "MPS, else CPU (10-100x slower)."),
]  # fmt: skip
Overlap = Annotated[
    float,
    typer.Option(help="Sliding-window overlap in [0, 1) (with --weights). Default 0.5; lower is "
                 "faster, higher slightly smoother."),
]  # fmt: skip
MaxCases = Annotated[
    int,
    typer.Option(help="Score only the first N cases of the split (0 = all, the default); a quick "
                 "check, not a result."),
]  # fmt: skip

# Choices come from the metric definitions; mypy cannot see the members.
Hd95Choice = enum.Enum("Hd95Choice", {m: m for m in HD95_METHODS}, type=str)  # type: ignore[misc]
NsdChoice = enum.Enum("NsdChoice", {m: m for m in NSD_METHODS}, type=str)  # type: ignore[misc]
_HD95, _NSD = Hd95Choice(HD95_METHODS[0]), NsdChoice(NSD_METHODS[0])  # the defaults
Hd95 = Annotated[
    Hd95Choice,
    typer.Option(
        "--hd95",
        help="HD95 definition. Default pooled = " + DEFINITIONS["hd95:pooled"] + "; max = "
        + DEFINITIONS["hd95:max"] + ".",
    ),
]  # fmt: skip
Nsd = Annotated[
    NsdChoice,
    typer.Option(
        "--nsd",
        help="Surface Dice definition. Default area = " + DEFINITIONS["surface_dice:area"]
        + "; voxel = " + DEFINITIONS["surface_dice:voxel"] + ".",
    ),
]  # fmt: skip
Tolerance = Annotated[
    float,
    typer.Option(help="Surface Dice tolerance in mm. Default 1.0; larger forgives more."),
]


def _table(report: EvalReport) -> Table:
    table = Table(
        title=f"{len(report.cases)} case(s): mean Dice {report.mean_dice:.4f}",
        caption=f"HD95 ({report.hd95_method}): mean over cases where it is finite (+n inf: a "
        "structure missed or hallucinated). surf. Dice: "
        f"{report.nsd_method}-weighted at {report.tolerance_mm:g} mm. cases: those that annotate "
        "the task. empty: both empty / false positive (truth empty) / missed (prediction empty).",
        caption_justify="left",
    )
    table.add_column("task", no_wrap=True)
    for column in ("cases", "Dice", "surf. Dice", "HD95 mm", "empty"):
        table.add_column(column, justify="right", no_wrap=True)
    for s in report.summary():
        hd95 = "-" if math.isnan(s.hd95_mean_finite) else f"{s.hd95_mean_finite:.2f}"
        if s.hd95_infinite:
            hd95 += f" +{s.hd95_infinite} inf"
        empty = f"{s.both_empty}/{s.false_positive}/{s.missed}"
        table.add_row(
            s.task, str(s.cases), f"{s.dice_mean:.4f}", f"{s.surface_dice_mean:.4f}", hd95, empty
        )
    return table


def evaluate_command(
    weights: Weights = None, dataset: Dataset = None, split: Split = "val", pred: Pred = None,
    gt: Gt = None, json_out: JsonOut = None, csv_out: CsvOut = None, device: Device = "auto",
    overlap: Overlap = 0.5, max_cases: MaxCases = 0, hd95: Hd95 = _HD95,
    nsd: Nsd = _NSD, tolerance_mm: Tolerance = 1.0,
    largest_component: LargestComponentOption = "auto", debug: DebugOption = False,
) -> None:  # fmt: skip
    """Dice, HD95 and surface Dice per task: weights on a dataset split, or predictions vs truth.

    Definitions (named in the JSON report's "metrics"):
    - Dice on voxels;
    - HD95 pooled over both directions (medpy, nnU-Net v1), or --hd95 max (MONAI);
    - surface Dice area-weighted (DeepMind surface-distance, MSD), or --nsd voxel (MONAI).
    A card's \\[annotated] table limits each task to the cases that annotate it.
    """
    if (pred is None) != (gt is None) or (pred is None and dataset is None):
        fail("give --weights/--dataset [--split], or --pred DIR --gt DIR", 2)
    with handle_errors(debug):
        from hermes_model.datasets.annotation import annotated_tasks
        from hermes_model.datasets.cards import load_card
        from hermes_model.evaluation.evaluate import evaluate_predictions, evaluate_weights

        bar = Progress(TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), console=err,
                       transient=True)  # fmt: skip
        task = bar.add_task("cases", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        with bar:
            metric = {"tolerance_mm": tolerance_mm, "hd95_method": hd95.value,
                      "nsd_method": nsd.value}  # fmt: skip
            if pred is not None and gt is not None:
                card = load_card(dataset) if dataset is not None else None
                labels = dict(card.labels) if card is not None else None
                annotated = annotated_tasks(card) if card is not None else None
                report = evaluate_predictions(pred, gt, labels, annotated=annotated,
                                              progress=advance, **metric)  # fmt: skip
            elif dataset is not None:
                report = evaluate_weights(weights, dataset, split, device=device, overlap=overlap,
                                          max_cases=max_cases, progress=advance,
                                          largest_component=largest_component,
                                          **metric)  # fmt: skip
        out.print(_table(report))
        if report.missing:
            err.print(f"[yellow]warning:[/] {len(report.missing)} case(s) without a prediction: "
                      f"{', '.join(report.missing[:10])}")  # fmt: skip
        for path, write in ((json_out, report.write_json), (csv_out, report.write_csv)):
            if path is not None:
                err.print(f"wrote {write(path)}")
        for message in report.failed.values():
            err.print(f"[red]error:[/] {message} (not scored)", highlight=False, soft_wrap=True)
        if report.failed:
            err.print(f"{len(report.failed)} case(s) could not be segmented; the others were "
                      "scored", highlight=False)  # fmt: skip
            raise typer.Exit(1)
