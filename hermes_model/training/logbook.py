"""What a training run reports: ``log.jsonl``, ``log.csv``, ``curves.png`` and a live view.

``log.jsonl`` holds one JSON object per line, ``kind`` ``train`` (averages over the last
``log_every`` iterations) or ``val`` (validation Dice, per task and mean). ``log.csv`` holds the
same rows with the scalar columns of :data:`CSV_FIELDS` (per-task Dice only in the JSON). On
resume, rows after the resumed iteration (written after the last saved state) are dropped, so
the log reads as one uninterrupted run.

The live view (rich, on stderr, main process only) shows iteration, loss, learning rate,
iterations per second, the estimated time left and the last validation Dice.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hermes_model.io.atomic import replace_file, write_bytes_atomically

__all__ = ["CSV_FIELDS", "RunLog", "LiveView", "plot_curves", "utc_now"]

log = logging.getLogger(__name__)

CSV_FIELDS = (
    "kind",
    "iteration",
    "epoch",
    "loss",
    "bce",
    "dice_loss",
    "lr",
    "patches_per_s",
    "data_wait",
    "val_dice",
    "elapsed_s",
)


def utc_now() -> str:
    """The time column of a log row: UTC, to the second, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunLog:
    """Appends rows to ``folder/log.jsonl`` and ``folder/log.csv``.

    Args:
        folder: the run folder.
        keep_until: keep existing rows up to this iteration (resume); None starts empty.
    """

    def __init__(self, folder: Path, keep_until: int | None = None) -> None:
        self.jsonl = folder / "log.jsonl"
        self.csv = folder / "log.csv"
        rows = self.read(self.jsonl) if keep_until is not None else []
        self.rows = [r for r in rows if int(r.get("iteration", 0)) <= (keep_until or 0)]
        self._rewrite()

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """Rows of a ``log.jsonl`` (a torn last line, from a crash, is skipped)."""
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping an unreadable line (torn write?)", path)
        return rows

    def _rewrite(self) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows)
        _write_atomic(self.jsonl, text)
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, CSV_FIELDS, extrasaction="ignore", restval="", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(self.rows)
        _write_atomic(self.csv, buffer.getvalue())

    def add(self, row: dict[str, Any]) -> None:
        """Append one row to both files (flushed, so a crash loses at most this row)."""
        self.rows.append(row)
        with open(self.jsonl, "a") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
        with open(self.csv, "a", newline="") as handle:
            csv.DictWriter(
                handle, CSV_FIELDS, extrasaction="ignore", restval="", lineterminator="\n"
            ).writerow(row)

    def series(self, kind: str, key: str) -> tuple[list[int], list[float]]:
        """(iterations, values) of ``key`` in the rows of ``kind``."""
        pairs = [(int(r["iteration"]), float(r[key])) for r in self.rows if r["kind"] == kind]
        return [p[0] for p in pairs], [p[1] for p in pairs]


def _write_atomic(path: Path, text: str) -> None:
    write_bytes_atomically(path, text.encode())


def plot_curves(runlog: RunLog, path: Path, title: str) -> Path | None:
    """Loss (log scale) and validation Dice against iterations, as a PNG; None (and a log
    warning) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: %s not drawn (pip install matplotlib)", path)
        return None
    # One iteration axis for both panels: a run with one validation so far still shows where it is.
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    x, loss = runlog.series("train", "loss")
    left.plot(x, loss, label="total")
    for key, label in (("bce", "BCE"), ("dice_loss", "Dice loss")):
        left.plot(*runlog.series("train", key), label=label, alpha=0.6)
    if loss and min(loss) > 0:
        left.set_yscale("log")
    left.set(xlabel="iteration", ylabel="training loss", title="loss")
    left.legend()
    vx, dice = runlog.series("val", "val_dice")
    right.plot(vx, dice, marker="o")
    right.set(xlabel="iteration", ylabel="mean Dice", title="validation Dice", ylim=(0, 1))
    figure.suptitle(title)
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    replace_file(tmp, path)
    return path


class LiveView:
    """A one-line rich progress display on stderr; inert when ``enabled`` is False."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[rate]} it/s"),
            TextColumn("val Dice {task.fields[val]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = self.progress.add_task(
            "train", total=total, completed=start, loss="-", lr="-", rate="-", val="-"
        )
        self.progress.start()

    def update(self, iteration: int, **fields: float) -> None:
        if not self.enabled:
            return
        shown: dict[str, Any] = {k: _fmt(k, v) for k, v in fields.items()}
        self.progress.update(self.task, completed=iteration, **shown)

    def stop(self) -> None:
        if self.enabled:
            self.progress.stop()


def _fmt(key: str, value: float) -> str:
    if not math.isfinite(value):
        return "-"
    if key == "lr":
        return f"{value:.2e}"
    if key == "rate":
        return f"{value:.2f}"
    return f"{value:.4f}"


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")
