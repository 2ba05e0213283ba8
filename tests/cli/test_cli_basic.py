"""CLI smoke tests: help, ``hermes tasks`` (table, filters, JSON, errors), ``hermes info``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hermes_cli.main import app
from hermes_model import tasks

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "tasks" in result.stdout
    assert "info" in result.stdout


def test_tasks_table() -> None:
    result = runner.invoke(app, ["tasks"])
    assert result.exit_code == 0, result.output
    assert "amos/liver" in result.stdout
    assert "lits/liver_tumor" in result.stdout
    assert "86 tasks" in result.stdout


def test_tasks_modality_filter() -> None:
    result = runner.invoke(app, ["tasks", "--modality", "mr"])
    assert result.exit_code == 0, result.output
    assert "chaos/liver" in result.stdout
    assert "amos/liver" in result.stdout
    assert "lits/liver_tumor" not in result.stdout
    assert "amos/bladder" not in result.stdout
    assert f"{len(tasks.task_ids(modality='mr'))} tasks" in result.stdout
    upper = runner.invoke(app, ["tasks", "-m", "MR"])
    assert upper.exit_code == 0
    assert "chaos/liver" in upper.stdout


def test_tasks_json_parses_and_matches_the_registry() -> None:
    result = runner.invoke(app, ["tasks", "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["id"] for r in records] == tasks.task_ids()
    liver = next(r for r in records if r["id"] == "amos/liver")
    assert liver["datasets"] == ["amos_ct", "amos_mr"]
    assert liver["modalities"] == ["ct", "mr"]
    assert "liver" in liver["aliases"]


def test_tasks_json_with_filters() -> None:
    result = runner.invoke(app, ["tasks", "--json", "--dataset", "amos_mr", "--modality", "mr"])
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in json.loads(result.stdout)] == list(tasks.get_dataset("amos_mr").tasks)


def test_tasks_aliases() -> None:
    result = runner.invoke(app, ["tasks", "--aliases", "--json", "--modality", "ct"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    assert table["liver_tumor"] == {"ct": "lits/liver_tumor"}
    assert "hippocampus_anterior" not in table
    shown = runner.invoke(app, ["tasks", "--aliases"])
    assert shown.exit_code == 0
    assert "kidney_left" in shown.stdout


def test_tasks_unknown_dataset_is_one_line_with_exit_code_4() -> None:
    result = runner.invoke(app, ["tasks", "--dataset", "amoz"])
    assert result.exit_code == 4
    assert "unknown dataset 'amoz'" in result.stderr
    assert "amos_ct" in result.stderr
    assert "Traceback" not in result.output


def test_tasks_bad_modality_is_a_usage_error() -> None:
    result = runner.invoke(app, ["tasks", "--modality", "ultrasound"])
    assert result.exit_code == 2


def test_info_shows_versions() -> None:
    torch = pytest.importorskip("torch")
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert torch.__version__ in result.stdout
    assert "Hugging Face cache" in result.stdout
    assert "CPU threads" in result.stdout


def test_cli_import_does_not_load_torch() -> None:
    code = "import sys, hermes_cli.main; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
