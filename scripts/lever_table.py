"""The lever table of issue 27: each run's last whole-val validation, task by task.

    python scripts/lever_table.py /work/runs/levers [--baseline baseline] [--markdown OUT.md]
    python scripts/lever_table.py docs/levers       # the kept logs: the table of recipe-levers.md

Reads ``<run>/log.jsonl`` of every run folder (``scripts/run_levers.sh``), or every
``<run>.jsonl`` beside them (finished runs' logs as kept in ``docs/levers/``): the last ``val``
row (Dice per task on the whole val split of every dataset, from the cached val cases, no
post-processing), its iteration, the run's training wall time and patches per second. Prints a
Markdown table with one row per run, the mean per dataset, and the difference of each run's
means from the baseline run's. A run still going shows its last validation, marked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _log(run: Path) -> Path:
    return run if run.suffix == ".jsonl" else run / "log.jsonl"


def _rows(run: Path) -> list[dict[str, Any]]:
    log = _log(run)
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _summary(run: Path) -> dict[str, Any] | None:
    rows = _rows(run)
    vals = [r for r in rows if r.get("kind") == "val" and r.get("val_tasks")]
    if not vals:
        return None
    train = [r for r in rows if r.get("kind") == "train"]
    rates = [r["patches_per_s"] for r in train if r.get("patches_per_s")]
    return {
        "run": run.stem if run.suffix == ".jsonl" else run.name,
        "iteration": vals[-1]["iteration"],
        "tasks": vals[-1]["val_tasks"],
        "cases": vals[-1].get("val_cases"),
        "elapsed_s": train[-1]["elapsed_s"] if train else 0.0,
        "patches_per_s": sum(rates) / len(rates) if rates else None,
        "finished": run.suffix == ".jsonl" or (run / ".done").is_file(),  # kept logs: finished
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def table(runs: list[dict[str, Any]], baseline: str) -> str:
    tasks = sorted({t for r in runs for t in r["tasks"]})
    datasets = sorted({t.split("/")[0] for t in tasks})
    means = {
        r["run"]: {d: _mean([v for t, v in r["tasks"].items() if t.startswith(d + "/")])
                   for d in datasets}
        for r in runs
    }  # fmt: skip
    base = means.get(baseline)
    head = ["run", "iter.", "train s", "patches/s", *(t.split("/")[1] for t in tasks)]
    head += [f"mean {d}" for d in datasets] + ([f"Δ {d}" for d in datasets] if base else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        m = means[r["run"]]
        rate = f"{r['patches_per_s']:.2f}" if r["patches_per_s"] else "—"
        cells = [r["run"] + ("" if r["finished"] else " (running)"), str(r["iteration"]),
                 f"{r['elapsed_s']:.0f}", rate]  # fmt: skip
        cells += [f"{r['tasks'][t]:.3f}" if t in r["tasks"] else "" for t in tasks]
        cells += [f"{m[d]:.3f}" for d in datasets]
        if base:
            cells += [f"{m[d] - base[d]:+.3f}" for d in datasets]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, help="folder of run folders or of kept <run>.jsonl logs")
    parser.add_argument("--baseline", default="baseline", help="run the differences are from")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    runs = [p for p in sorted(args.runs.iterdir()) if p.is_dir() or p.suffix == ".jsonl"]
    found = [s for p in runs if (s := _summary(p))]
    if not found:
        print(f"{args.runs}: no run folder with a validation yet", file=sys.stderr)
        return 1
    text = table(found, args.baseline)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
