"""scripts/lever_table.py: issue 27's lever table from the runs' logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "lever_table.py"


def _run(folder: Path, dice: dict[str, float], done: bool = True) -> None:
    folder.mkdir(parents=True)
    rows = [
        {"kind": "train", "iteration": 10, "patches_per_s": 1.5, "elapsed_s": 60.0},
        {"kind": "train", "iteration": 20, "patches_per_s": 2.5, "elapsed_s": 120.0},
        {"kind": "val", "iteration": 20, "val_dice": 0.0, "val_tasks": dice, "val_cases": 52},
    ]
    (folder / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    if done:
        (folder / ".done").touch()


def test_table_has_per_task_dice_means_and_differences_from_the_baseline(tmp_path: Path) -> None:
    _run(tmp_path / "baseline", {"openkbp/larynx": 0.5, "openkbp/mandible": 0.7,
                                 "hippocampus/anterior": 0.9})  # fmt: skip
    _run(tmp_path / "mirror", {"openkbp/larynx": 0.6, "openkbp/mandible": 0.8,
                               "hippocampus/anterior": 0.85}, done=False)  # fmt: skip
    (tmp_path / "empty").mkdir()  # a run that has not validated yet is left out
    out = tmp_path / "table.md"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--markdown", str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    assert lines[0].split(" | ")[4:6] == ["anterior", "larynx"]
    baseline, mirror = lines[2], lines[3]
    assert baseline.startswith("| baseline | 20 | 120 | 2.00 | 0.900 | 0.500 | 0.700 |")
    assert "| 0.900 | 0.600 | +0.000 | +0.000 |" in baseline  # means hippocampus, openkbp
    assert mirror.startswith("| mirror (running) |")
    assert mirror.endswith("| 0.850 | 0.700 | -0.050 | +0.100 |")
    assert out.read_text().strip() == done.stdout.strip()


def test_no_validated_run_is_an_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 1 and "no run folder with a validation" in done.stderr


def test_kept_logs_give_the_same_rows_as_their_run_folders(tmp_path: Path) -> None:
    """docs/levers keeps each finished run's log as <run>.jsonl: the table reads those too."""
    runs, kept = tmp_path / "runs", tmp_path / "kept"
    _run(runs / "baseline", {"openkbp/larynx": 0.5, "hippocampus/anterior": 0.9})
    _run(runs / "rare", {"openkbp/larynx": 0.6, "hippocampus/anterior": 0.9})
    kept.mkdir()
    for name in ("baseline", "rare"):
        (kept / f"{name}.jsonl").write_text((runs / name / "log.jsonl").read_text())
    (kept / "queue.log").write_text("not a run\n")  # other files beside the logs are ignored
    tables = [
        subprocess.run([sys.executable, str(SCRIPT), str(folder)], capture_output=True,
                       text=True, check=True).stdout
        for folder in (runs, kept)
    ]  # fmt: skip
    assert tables[0] == tables[1]
    assert "| rare | 20 |" in tables[1] and "(running)" not in tables[1]
