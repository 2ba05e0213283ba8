"""The tests marked ``workers`` (DataLoader worker processes), run in a child pytest that loads
no OpenVINO: see ``conftest.pytest_collection_modifyitems`` for why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import WORKER_TESTS_ENV

ROOT = Path(__file__).resolve().parents[2]


def test_worker_process_tests_pass_in_a_fresh_process() -> None:
    env = {**os.environ, WORKER_TESTS_ENV: "1"}
    selection = "workers and not slow and not gpu"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-q",
               "-m", selection, str(ROOT / "tests" / "training")]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout, result.stdout[-2000:]
