"""Compare two models' ``hermes evaluate --json`` reports on the same split, task by task.

    python scripts/compare_evaluations.py \
        --a universal=docs/eval-universal-openkbp-test.json \
        --b separate=docs/eval-separate-openkbp-test.json [--markdown OUT.md]

For each task both reports scored: the cases both scored (a task counts only on the cases that
annotate it), mean Dice, surface Dice and HD95 of A and of B, and the paired difference A - B of
the per-case Dice with a 95% bootstrap confidence interval (10,000 resamples of the cases, seed
0). The last row is the mean over tasks. HD95 means are over the cases where both are finite
(an empty prediction has no surface); the number left out is shown. Both reports must name the
same dataset and split, and use the same metric definitions and tolerance.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

RESAMPLES = 10_000


def _load(spec: str) -> tuple[str, dict[str, Any]]:
    label, _, path = spec.partition("=")
    if not path:
        sys.exit(f"{spec!r}: use LABEL=REPORT.json")
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        sys.exit(f"{path}: cannot read the report ({error}); write it with hermes evaluate --json")
    return label, report


def _per_case(report: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """task -> case -> metrics."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for row in report["cases"]:
        table.setdefault(row["task"], {})[row["case"]] = row
    return table


def _bootstrap(differences: np.ndarray, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(differences), size=(RESAMPLES, len(differences)))
    means = differences[picks].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task both reports scored, then the mean over those tasks."""
    for key in ("dataset", "split"):
        if a["source"].get(key) != b["source"].get(key):
            sys.exit(f"the reports are of different {key}s: {a['source'].get(key)} and "
                     f"{b['source'].get(key)}")  # fmt: skip
    if a.get("metrics", {}).get("definitions") != b.get("metrics", {}).get("definitions") or (
        a.get("tolerance_mm") != b.get("tolerance_mm")
    ):
        sys.exit("the reports use different metric definitions or tolerances; re-evaluate both")
    cases_a, cases_b = _per_case(a), _per_case(b)
    rows = []
    differences = []  # per task: the per-case Dice differences, for the mean's interval
    for task in cases_a:
        if task not in cases_b:
            continue
        common = sorted(set(cases_a[task]) & set(cases_b[task]))
        dice_a = np.array([cases_a[task][c]["dice"] for c in common])
        dice_b = np.array([cases_b[task][c]["dice"] for c in common])
        nsd_a = np.array([cases_a[task][c]["surface_dice"] for c in common])
        nsd_b = np.array([cases_b[task][c]["surface_dice"] for c in common])
        hd_pairs = [
            (cases_a[task][c]["hd95"], cases_b[task][c]["hd95"])
            for c in common
            if _finite(cases_a[task][c]["hd95"]) and _finite(cases_b[task][c]["hd95"])
        ]
        differences.append(dice_a - dice_b)
        low, high = _bootstrap(differences[-1])
        rows.append({
            "task": task, "cases": len(common),
            "dice_a": dice_a.mean(), "dice_b": dice_b.mean(), "delta": (dice_a - dice_b).mean(),
            "ci": (low, high),
            "nsd_a": nsd_a.mean(), "nsd_b": nsd_b.mean(),
            "hd95_a": float(np.mean([p[0] for p in hd_pairs])) if hd_pairs else math.nan,
            "hd95_b": float(np.mean([p[1] for p in hd_pairs])) if hd_pairs else math.nan,
            "hd95_left_out": len(common) - len(hd_pairs),
        })  # fmt: skip
    if not rows:
        sys.exit("the reports have no task in common")
    mean = {
        key: float(np.mean([r[key] for r in rows]))
        for key in ("dice_a", "dice_b", "delta", "nsd_a", "nsd_b", "hd95_a", "hd95_b")
    }
    # The mean over tasks of per-case differences: bootstrap the cases of each task together.
    rng = np.random.default_rng(0)
    boot = np.zeros(RESAMPLES)
    for diff in differences:
        boot += diff[rng.integers(0, len(diff), size=(RESAMPLES, len(diff)))].mean(axis=1)
    boot /= len(rows)
    ci = (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))
    rows.append({"task": "mean over tasks", "cases": "", **mean, "ci": ci, "hd95_left_out": ""})
    return rows


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _mm(value: float) -> str:
    """HD95 in mm, or a dash where no case had a finite one on both sides."""
    return f"{value:.2f}" if math.isfinite(value) else "—"


def markdown(rows: list[dict[str, Any]], label_a: str, label_b: str) -> str:
    head = [
        "task", "cases", f"Dice {label_a}", f"Dice {label_b}", f"Δ Dice ({label_a} − {label_b})",
        "95% CI", f"NSD {label_a}", f"NSD {label_b}", f"HD95 {label_a} (mm)",
        f"HD95 {label_b} (mm)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        hd_note = f" ({r['hd95_left_out']} left out)" if r["hd95_left_out"] else ""
        lines.append("| " + " | ".join([
            f"`{r['task']}`" if r["cases"] != "" else f"**{r['task']}**", str(r["cases"]),
            f"{r['dice_a']:.3f}", f"{r['dice_b']:.3f}", f"{r['delta']:+.3f}",
            f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]", f"{r['nsd_a']:.3f}", f"{r['nsd_b']:.3f}",
            _mm(r["hd95_a"]), _mm(r["hd95_b"]) + hd_note,
        ]) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", required=True, metavar="LABEL=REPORT.json")
    parser.add_argument("--b", required=True, metavar="LABEL=REPORT.json")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    (label_a, a), (label_b, b) = _load(args.a), _load(args.b)
    table = markdown(compare(a, b), label_a, label_b)
    names = [r["source"]["weights"].get("name") or r["source"]["weights"]["sha256"] for r in (a, b)]
    print(f"{a['source']['dataset']} {a['source']['split']}: {label_a} = {names[0]}, "
          f"{label_b} = {names[1]}")  # fmt: skip
    print(table)
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
