"""Choose, on validation cases, the tasks whose masks should keep only their largest component.

    python scripts/choose_largest_component.py WEIGHTS.safetensors \
        --dataset train/datasets/openkbp.toml --dataset train/datasets/hippocampus.toml \
        [--split val] [--json decision.json] [--out WEIGHTS-new.safetensors]

Each case of the split is segmented once (no post-processing); every task the case annotates is
scored (Dice) as segmented and after ``hermes_model.pipeline.components.largest_component``. A task
is chosen when its mean Dice over those cases rose (``components.choose_tasks``). With ``--out``
the choice is stored in a copy of the weights under the metadata key ``largest_component``, so
that ``hermes segment`` applies it by default (``--largest-component auto``); every tensor stays
bit-identical (checked), the sha256 changes and is printed, for weights.toml.

Use a validation split, never the test split: the choice is a setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from hermes_model.datasets.annotation import is_annotated
from hermes_model.datasets.cards import load_card, validate
from hermes_model.evaluation.metrics import dice
from hermes_model.io import read_image
from hermes_model.pipeline import components
from hermes_model.pipeline.segmenter import Segmenter
from hermes_model.weights.checkpoint import (
    read_metadata,
    replace_metadata,
    sha256_file,
    tensor_digest,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("weights", type=Path)
    parser.add_argument("--dataset", action="append", required=True, type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--max-cases", type=int, default=0, help="per dataset; 0 = all")
    parser.add_argument("--json", type=Path, help="write the per-task figures and the choice")
    parser.add_argument("--out", type=Path, help="weights copy that records the choice")
    args = parser.parse_args()
    if args.split == "test":
        sys.exit("--split test: choose settings on a validation split, keep test for figures")
    segmenter = Segmenter(args.weights, device="cpu", overlap=args.overlap,
                          largest_component="none")  # fmt: skip
    raw: dict[str, list[float]] = defaultdict(list)
    filtered: dict[str, list[float]] = defaultdict(list)
    with Progress(console=Console(stderr=True), transient=True) as bar:
        for card_path in args.dataset:
            card = load_card(card_path)
            cases = validate(card, args.split, scan=False, known_tasks=card.tasks)
            cases = cases[: args.max_cases] if args.max_cases else cases
            tasks = [t for t in card.tasks if t in segmenter.task_ids]
            values = card.task_values()
            job = bar.add_task(card.name, total=len(cases))
            for case in cases:
                result = segmenter.segment(case.image, tasks, card.modality, probabilities=False)
                gt, _ = read_image(case.label)
                for task in tasks:
                    if not is_annotated(case.annotated, task):
                        continue
                    truth = np.isin(gt, values[task])
                    mask = result.mask(task)
                    raw[task].append(dice(mask, truth))
                    filtered[task].append(dice(components.largest_component(mask), truth))
                bar.advance(job)
    chosen = components.choose_tasks(raw, filtered)
    table = Table(title=f"largest component on {args.split}: Dice as segmented -> filtered")
    for column in ("task", "cases", "Dice", "filtered", "change", "chosen"):
        table.add_column(column, justify="left" if column == "task" else "right")
    rows = []
    for task in raw:
        before, after = float(np.mean(raw[task])), float(np.mean(filtered[task]))
        rows.append({"task": task, "cases": len(raw[task]), "dice": before,
                     "dice_filtered": after, "chosen": task in chosen})  # fmt: skip
        table.add_row(task, str(len(raw[task])), f"{before:.4f}", f"{after:.4f}",
                      f"{after - before:+.4f}", "yes" if task in chosen else "no")  # fmt: skip
    Console().print(table)
    if args.json:
        report = {
            "weights": str(args.weights),
            "split": args.split,
            "overlap": args.overlap,
            "datasets": [str(d) for d in args.dataset],
            "tasks": rows,
            "chosen": chosen,
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")  # fmt: skip
    if args.out:
        doc = read_metadata(args.weights)
        out = replace_metadata(args.weights, args.out, {**doc, components.METADATA_KEY: chosen})
        if tensor_digest(out) != tensor_digest(args.weights):
            sys.exit(f"{out}: tensors changed while rewriting the metadata; do not use this file")
        print(f"{out}  tensors bit-identical  sha256 {sha256_file(out)}")


if __name__ == "__main__":
    main()
