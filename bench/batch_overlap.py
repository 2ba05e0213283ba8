"""Benchmark (not a test): how much of reading and writing a batch hides behind compute.

``hermes segment <folder>`` reads the next case in one thread and writes the previous one in
another while the current case is computed (``batch._Pipeline``). This times the same scans
with the same loaded model twice, interleaved by repeat: as one batch (the pipeline), and one
case at a time (read, compute, write in turn: no overlap), and prints, per mode, the seconds of
each stage summed over the cases (median over repeats) and the wall time, and what the pipeline
saved against one case at a time. The stages of the two modes differ a little (threads compete
for the cores while the pipeline overlaps them), so read the walls.

    python bench/batch_overlap.py                         # 8 OpenKBP val CTs, bundled model
    python bench/batch_overlap.py --scans a.nii.gz b.nii.gz --preview --repeats 3

Ratios are the figures to read on a shared CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hermes_model.batch.outcome import BatchOptions
from hermes_model.batch.runner import segment_files
from hermes_model.datasets.cards import load_card
from hermes_model.pipeline.segmenter import Segmenter

CARD = Path(__file__).resolve().parents[1] / "train" / "datasets" / "openkbp.toml"


def run(scans: list[Path], options: BatchOptions, segmenter: Segmenter, serial: bool) -> tuple:
    """(wall seconds, per-stage seconds summed over the cases) of one pass."""
    start = time.perf_counter()
    if serial:
        reports = [segment_files([s], options, segmenter=segmenter).cases[0] for s in scans]
    else:
        reports = segment_files(scans, options, segmenter=segmenter).cases
    wall = time.perf_counter() - start
    failed = [r.message for r in reports if r.status != "done"]
    if failed:
        raise SystemExit(f"a case failed: {failed[0]}")
    stages: dict[str, float] = {}
    for report in reports:
        for stage, seconds in report.timings.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    return wall, stages


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scans", nargs="+", type=Path, default=None, help="default: 8 OpenKBP val"
    )
    parser.add_argument("--weights", default=None, help="default: the bundled model")
    parser.add_argument("--preview", action="store_true", help="also write a PNG per case")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    scans = args.scans or [c.image for c in load_card(CARD).cases("val")[:8]]
    segmenter = Segmenter(args.weights, device="cpu")
    segmenter.segment(scans[0], probabilities=False)  # warm-up (OpenVINO compiles here)
    modes = ("pipelined", "serial")
    walls: dict[str, list[float]] = {m: [] for m in modes}
    stages: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    with tempfile.TemporaryDirectory(prefix="hermes-bench-") as tmp:
        for r in range(args.repeats):
            for mode in modes:
                out = Path(tmp) / f"{mode}-{r}"
                options = BatchOptions(output_dir=out, preview=args.preview, stats=out / "v.csv")
                wall, sums = run(scans, options, segmenter, serial=mode == "serial")
                walls[mode].append(wall)
                for stage, seconds in sums.items():
                    stages[mode].setdefault(stage, []).append(seconds)
    table = Table(title=f"{len(scans)} scans, engine {segmenter.engine.name} "
                        f"{segmenter.engine.precision}, median of {args.repeats}")  # fmt: skip
    table.add_column("seconds")
    for mode in modes:
        table.add_column(mode, justify="right")
    for stage in stages["serial"]:
        table.add_row(f"Σ {stage}", *(f"{statistics.median(stages[m][stage]):.2f}" for m in modes))
    median = {m: statistics.median(walls[m]) for m in modes}
    table.add_row("wall", *(f"{median[m]:.2f}" for m in modes))
    saved = median["serial"] - median["pipelined"]
    share = 100 * saved / median["serial"]
    table.add_row("saved by the pipeline", f"{saved:.2f} ({share:.0f}%)", "")
    Console(width=max(Console().width, 100)).print(table)


if __name__ == "__main__":
    main()
