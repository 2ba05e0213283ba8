"""Benchmark (not a test): the accuracy guard of a reduced precision on real val scans.

Issue 11's guard for ``--precision auto`` choosing bf16 on a CPU: against torch fp32, with
trained weights (default: the bundled model), the masks must differ on <= 0.5% of the
foreground voxels and the mean Dice against the ground truth must drop by <= 0.002. This runs
each variant on the val cases of the hippocampus (MR) and OpenKBP (CT) and prints, per dataset,
the share of torch fp32's foreground voxels that changed, the share of all voxels that are equal,
and mean Dice (over the cases that contour each task) of fp32 and of the variant.

    python bench/precision_guard.py                          # both val splits, both bf16 engines
    python bench/precision_guard.py --max-cases 8 --variants openvino-bf16

Val splits only: the test splits are for final figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from hermes_model.datasets.annotation import is_annotated
from hermes_model.datasets.cards import load_card
from hermes_model.evaluation.metrics import dice
from hermes_model.io import read_image
from hermes_model.pipeline.segmenter import Segmenter

REPO = Path(__file__).resolve().parents[1]
CARDS = {name: REPO / "train" / "datasets" / f"{name}.toml" for name in ("hippocampus", "openkbp")}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", default=None, help="default: the bundled model")
    parser.add_argument("--datasets", nargs="+", default=list(CARDS), choices=list(CARDS))
    parser.add_argument("--variants", nargs="+", default=["torch-bf16", "openvino-bf16"])
    parser.add_argument("--max-cases", type=int, default=None, help="first N val cases of each")
    args = parser.parse_args()
    reference = Segmenter(args.weights, device="cpu", engine="torch", precision="fp32")
    others = {
        v: Segmenter(args.weights, device="cpu", engine=v.split("-")[0], precision=v.split("-")[1])
        for v in args.variants
    }
    table = Table(title="against torch fp32, val cases (guard: <= 0.5% changed, drop <= 0.002)")
    for column in ("dataset", "variant", "cases", "foreground changed", "voxels equal",
                   "Dice fp32", "Dice variant", "drop"):  # fmt: skip
        table.add_column(column, justify="right")
    for name in args.datasets:
        card = load_card(CARDS[name])
        values = {task: value for value, task in card.labels.items()}
        tasks = list(card.tasks)
        cases = card.cases("val")[: args.max_cases]
        counts = {v: {"changed": 0, "equal": 0, "total": 0} for v in others}
        dices: dict[str, list[float]] = {v: [] for v in others}
        ref_dice: list[float] = []
        foreground = 0
        for case in cases:
            image = read_image(case.image)
            truth, _ = read_image(case.label)
            wanted = [t for t in tasks if is_annotated(case.annotated, t)]
            ref = reference.segment(image, tasks, card.modality, probabilities=False)
            foreground += int(ref.masks.sum())
            ref_dice += [dice(ref.mask(t), truth == values[t]) for t in wanted]
            for variant, segmenter in others.items():
                out = segmenter.segment(image, tasks, card.modality, probabilities=False)
                c = counts[variant]
                c["changed"] += int((ref.masks != out.masks).sum())
                c["equal"] += int((ref.labels() == out.labels()).sum())
                c["total"] += int(np.prod(ref.labels().shape))
                dices[variant] += [dice(out.mask(t), truth == values[t]) for t in wanted]
        for variant, c in counts.items():
            a, b = float(np.mean(ref_dice)), float(np.mean(dices[variant]))
            table.add_row(name, variant, str(len(cases)),
                          f"{100 * c['changed'] / max(foreground, 1):.3f}%",
                          f"{100 * c['equal'] / c['total']:.4f}%", f"{a:.4f}", f"{b:.4f}",
                          f"{a - b:+.4f}")  # fmt: skip
    Console(width=max(Console().width, 140)).print(table)


if __name__ == "__main__":
    main()
