"""``hermes evaluate``: Dice, HD95 and surface Dice per task, for weights on a dataset split or
for a folder of predictions against a folder of ground truth.

The work is ``hermes_model.training.evaluate``; this module checks the option combination,
draws progress on stderr and prints a table on stdout. torch is imported only when it runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from hermes_cli._common import DebugOption, err, fail, handle_errors, out

if TYPE_CHECKING:
    from hermes_model.training.evaluate import EvalReport

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


def _table(report: EvalReport) -> Table:
    table = Table(
        title=f"{len(report.cases)} case(s): mean Dice {report.mean_dice:.4f}",
        caption="HD95: mean over cases where it is finite (+n inf: a structure missed or "
        "hallucinated). empty: both empty / false positive (truth empty) / missed (prediction "
        "empty).",
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
    overlap: Overlap = 0.5, max_cases: MaxCases = 0, debug: DebugOption = False,
) -> None:  # fmt: skip
    """Dice, HD95 and surface Dice per task: weights on a dataset split, or predictions vs truth."""
    if (pred is None) != (gt is None) or (pred is None and dataset is None):
        fail("give --weights/--dataset [--split], or --pred DIR --gt DIR", 2)
    with handle_errors(debug):
        from hermes_model.training.cards import load_card
        from hermes_model.training.evaluate import evaluate_predictions, evaluate_weights

        bar = Progress(TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), console=err,
                       transient=True)  # fmt: skip
        task = bar.add_task("cases", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        with bar:
            if pred is not None and gt is not None:
                labels = dict(load_card(dataset).labels) if dataset is not None else None
                report = evaluate_predictions(pred, gt, labels, progress=advance)
            elif dataset is not None:
                report = evaluate_weights(weights, dataset, split, device=device, overlap=overlap,
                                          max_cases=max_cases, progress=advance)  # fmt: skip
        out.print(_table(report))
        if report.missing:
            err.print(f"[yellow]warning:[/] {len(report.missing)} case(s) without a prediction: "
                      f"{', '.join(report.missing[:10])}")  # fmt: skip
        for path, write in ((json_out, report.write_json), (csv_out, report.write_csv)):
            if path is not None:
                err.print(f"wrote {write(path)}")
