"""Benchmark (not a test): the accuracy guard of a reduced precision on real val scans.

The guard for ``--precision auto`` choosing a reduced precision on a CPU, against torch fp32,
with trained weights (default: the bundled model): bf16 (issue 11) must change <= 0.5% of the
foreground voxels and drop the mean Dice by <= 0.002; int8 (issue 26) must change <= 0.5% of the
foreground voxels and no task's mean Dice may drop by more than 0.005. This runs each variant
on the val cases of the hippocampus (MR) and OpenKBP (CT) and prints, per dataset and per task,
the share of torch fp32's foreground voxels that changed, and mean Dice against the ground truth
(over the cases that contour each task) of fp32 and of the variant.

    python bench/precision_guard.py                          # both val splits, both bf16 engines
    python bench/precision_guard.py --variants openvino-int8 --out guard.jsonl
    python bench/precision_guard.py --variants openvino-int8 --shard 0/2 --out a.jsonl  # and 1/2
    python bench/precision_guard.py --table a.jsonl b.jsonl   # the table of finished runs

``--out`` appends one JSON line per case and variant as it goes (a long run that is stopped
keeps what it did, and run again with the same ``--out`` skips the cases it holds); ``--table``
prints the tables from such files without running anything.
Val splits only: the test splits are for final figures.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
CARDS = {name: REPO / "train" / "datasets" / f"{name}.toml" for name in ("hippocampus", "openkbp")}
MAX_CHANGED, MAX_DROP = 0.5, 0.005  # % of foreground; Dice per task (int8's guard)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (case, variant): per task, fp32 and variant foreground, changed voxels, Dice."""
    from hermes_model.datasets.annotation import is_annotated
    from hermes_model.datasets.cards import load_card
    from hermes_model.evaluation.metrics import dice
    from hermes_model.io import read_image
    from hermes_model.pipeline.segmenter import Segmenter

    reference = Segmenter(args.weights, device="cpu", engine="torch", precision="fp32")
    others = {
        v: Segmenter(args.weights, device="cpu", engine=v.split("-")[0], precision=v.split("-")[1])
        for v in args.variants
    }
    index, count = (int(p) for p in args.shard.split("/"))
    rows = []
    done: set[tuple[str, str, str]] = set()
    if args.out and Path(args.out).is_file():  # a stopped run continues where it was
        rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line]
        done = {(r["dataset"], r["case"], r["variant"]) for r in rows}
    for name in args.datasets:
        card = load_card(CARDS[name])
        values = {task: value for value, task in card.labels.items()}
        tasks = list(card.tasks)
        cases = card.cases("val")[: args.max_cases][index::count]
        for case in cases:
            if all((name, case.case_id, v) in done for v in others):
                continue
            image = read_image(case.image)
            truth, _ = read_image(case.label)
            ref = reference.segment(image, tasks, card.modality, probabilities=False)
            for variant, segmenter in others.items():
                if (name, case.case_id, variant) in done:
                    continue
                out = segmenter.segment(image, tasks, card.modality, probabilities=False)
                row: dict[str, Any] = {"dataset": name, "case": case.case_id, "variant": variant}
                row["network_s"] = [ref.timings["network"], out.timings["network"]]
                for t in tasks:
                    a, b = ref.mask(t), out.mask(t)
                    row[t] = {
                        "foreground": int(a.sum()),
                        "changed": int((a != b).sum()),
                        "annotated": bool(is_annotated(case.annotated, t)),
                        "dice_fp32": float(dice(a, truth == values[t])),
                        "dice_variant": float(dice(b, truth == values[t])),
                    }
                rows.append(row)
                if args.out:
                    with open(args.out, "a") as stream:
                        stream.write(json.dumps(row) + "\n")
    return rows


def tables(rows: list[dict[str, Any]]) -> None:
    """Per dataset and variant: one line per task and one for all tasks, with the verdict."""
    console = Console(width=max(Console().width, 140))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["dataset"], row["variant"]].append(row)
    for (dataset, variant), cases in groups.items():
        guard = f"guard: <= {MAX_CHANGED}% of foreground changed, Dice drop <= {MAX_DROP}"
        title = f"{dataset} val, {variant} against torch fp32 ({len(cases)} cases; {guard})"
        table = Table(title=title)
        for column in ("task", "cases", "foreground changed", "Dice fp32", "Dice variant",
                       "Dice change", "passes"):  # fmt: skip
            table.add_column(column, justify="right")
        tasks = [k for k in cases[0] if isinstance(cases[0][k], dict)]
        total_fg = total_changed = 0
        ok_all = True
        for t in tasks:
            fg = sum(c[t]["foreground"] for c in cases)
            changed = sum(c[t]["changed"] for c in cases)
            total_fg, total_changed = total_fg + fg, total_changed + changed
            scored = [c[t] for c in cases if c[t]["annotated"]]
            a = float(np.mean([s["dice_fp32"] for s in scored])) if scored else float("nan")
            b = float(np.mean([s["dice_variant"] for s in scored])) if scored else float("nan")
            ok = (a - b) <= MAX_DROP if scored else True
            ok_all &= ok
            table.add_row(t, str(len(scored)), f"{100 * changed / max(fg, 1):.3f}%", f"{a:.4f}",
                          f"{b:.4f}", f"{b - a:+.4f}", "yes" if ok else "NO")  # fmt: skip
        share = 100 * total_changed / max(total_fg, 1)
        verdict = "PASS" if ok_all and share <= MAX_CHANGED else "FAIL"
        table.add_row("all tasks", "", f"{share:.3f}%", "", "", "", verdict)
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", default=None, help="default: the bundled model")
    parser.add_argument("--datasets", nargs="+", default=list(CARDS), choices=list(CARDS))
    parser.add_argument("--variants", nargs="+", default=["torch-bf16", "openvino-bf16"])
    parser.add_argument("--max-cases", type=int, default=None, help="first N val cases of each")
    parser.add_argument("--shard", default="0/1", help="i/n: every n-th case from the i-th")
    parser.add_argument("--out", default=None, help="append one JSON line per case and variant")
    parser.add_argument("--table", nargs="+", default=None, help="print tables of --out files")
    args = parser.parse_args()
    if args.table:
        rows = [json.loads(line) for f in args.table for line in Path(f).read_text().splitlines()]
    else:
        rows = run(args)
    tables(rows)


if __name__ == "__main__":
    main()
