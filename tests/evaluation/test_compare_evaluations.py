"""scripts/compare_evaluations.py: the universal-minus-separate table of the docs."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "compare_evaluations.py"


def _module():
    spec = importlib.util.spec_from_file_location("compare_evaluations", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(name: str, rows: list[tuple[str, str, float, float]], split: str = "test") -> dict:
    return {
        "source": {"weights": {"name": name, "sha256": name * 4}, "dataset": "d", "split": split},
        "tolerance_mm": 1.0,
        "metrics": {"definitions": {"dice": "Dice"}},
        "cases": [
            {"case": c, "task": t, "dice": d, "surface_dice": d, "hd95": h} for c, t, d, h in rows
        ],
    }


def test_paired_differences_on_the_cases_both_scored() -> None:
    module = _module()
    # Task "b" is not annotated on case 3 in the second report: only cases 1-2 count.
    a = _report("u", [("1", "a", 0.9, 1.0), ("2", "a", 0.8, 2.0), ("1", "b", 0.5, math.inf),
                      ("2", "b", 0.7, 3.0), ("3", "b", 0.1, 9.0)])  # fmt: skip
    b = _report("s", [("1", "a", 0.7, 2.0), ("2", "a", 0.8, 4.0), ("1", "b", 0.6, 1.0),
                      ("2", "b", 0.6, 1.0)])  # fmt: skip
    rows = module.compare(a, b)
    by_task = {r["task"]: r for r in rows}
    assert by_task["a"]["cases"] == 2 and by_task["b"]["cases"] == 2
    assert by_task["a"]["delta"] == pytest.approx(0.1)
    assert by_task["a"]["ci"][0] == pytest.approx(0.0) and by_task["a"]["ci"][1] == pytest.approx(
        0.2
    )
    assert by_task["b"]["delta"] == pytest.approx(0.0)
    # HD95 only where both are finite: case 1 of task b has an empty prediction in A.
    assert by_task["b"]["hd95_a"] == 3.0 and by_task["b"]["hd95_left_out"] == 1
    assert by_task["mean over tasks"]["delta"] == pytest.approx(0.05)
    table = module.markdown(rows, "universal", "separate")
    assert (
        "Δ Dice (universal − separate)" in table and "| `a` | 2 | 0.850 | 0.750 | +0.100 |" in table
    )


def test_reports_of_different_splits_are_refused(tmp_path: Path) -> None:
    paths = []
    for name, split in (("u", "test"), ("s", "val")):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(_report(name, [("1", "a", 0.5, 1.0)], split)))
        paths.append(path)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--a", f"u={paths[0]}", "--b", f"s={paths[1]}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "different splits: test and val" in result.stderr
