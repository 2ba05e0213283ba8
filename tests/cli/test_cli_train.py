"""``hermes train / finetune / incremental / evaluate`` through Typer's CliRunner: the smoke
recipe on the real hippocampus data, incremental learning and evaluation on synthetic data,
and bad data failing early with the case named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from training.toy_data import MR_TASKS, train_losses, write_dataset, write_recipe
from typer.testing import CliRunner, Result

from hermes_cli.main import app
from hermes_model import create_model, save_checkpoint

# Two cores shared with other jobs: one torch thread per test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "train" / "recipes" / "hippocampus_smoke.toml"
CARD = REPO / "train" / "datasets" / "hippocampus.toml"
HIPPOCAMPUS = REPO.parent / "shared" / "data" / "hippocampus"
needs_data = pytest.mark.skipif(
    not HIPPOCAMPUS.is_dir(), reason=f"real data absent: {HIPPOCAMPUS} (../shared/data)"
)
runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _train(*args: str) -> Result:
    return runner.invoke(app, ["train", "--no-progress", *args])


@needs_data
def test_smoke_recipe_trains_writes_checkpoints_and_evaluates(cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = _train("--config", str(SMOKE), "--output", str(run), "--iterations", "4",
                    "--set", f"train.cache_dir={json.dumps(str(cache))}")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "training finished" in result.output and "best mean Dice" in result.output
    for name in ("last.safetensors", "best.safetensors", "state.json", "log.csv", "curves.png"):
        assert (run / name).is_file(), name
    assert sorted(train_losses(run)) == [4]  # smoke logs every 5 iterations, and at the end

    report = tmp_path / "eval.json"
    result = runner.invoke(app, [
        "evaluate", "--weights", str(run / "last.safetensors"), "--dataset", str(CARD),
        "--split", "val", "--max-cases", "2", "--device", "cpu", "--json", str(report),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "hippocampus/anterior" in result.output and "mean Dice" in result.output
    doc = json.loads(report.read_text())
    assert [t["task"] for t in doc["tasks"]] == ["hippocampus/anterior", "hippocampus/posterior"]
    assert all(0.0 <= t["dice_mean"] <= 1.0 and t["cases"] == 2 for t in doc["tasks"])
    assert doc["source"]["split"] == "val" and len(doc["cases"]) == 4


@needs_data
@pytest.mark.slow
def test_full_smoke_recipe_loss_falls(cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = _train("--config", str(SMOKE), "--output", str(run),
                    "--set", f"train.cache_dir={json.dumps(str(cache))}")  # fmt: skip
    assert result.exit_code == 0, result.output
    losses = list(train_losses(run).values())
    assert len(losses) >= 4 and losses[-1] < 0.8 * losses[0], losses


def test_bad_data_fails_before_training_and_names_the_case(tmp_path: Path) -> None:
    card = write_dataset(tmp_path, "toymr", MR_TASKS, cases=3)
    (tmp_path / "toymr" / "labelsTr" / "toymr_001.nii.gz").unlink()
    recipe = write_recipe(tmp_path, [card], tmp_path / "cache")
    result = _train("--config", str(recipe), "--output", str(tmp_path / "run"))
    assert result.exit_code == 7, result.output
    assert "case toymr_001" in result.output and "label file" in result.output
    assert not (tmp_path / "run" / "last.safetensors").exists()

    # A label value the card does not map: found from the cache, named with its case.
    other = write_dataset(tmp_path, "toyodd", {1: MR_TASKS[1]}, cases=2, values=[1, 2])
    result = _train("--config", str(write_recipe(tmp_path, [other], tmp_path / "cache")),
                    "--output", str(tmp_path / "run2"))  # fmt: skip
    assert result.exit_code == 7, result.output
    assert "toyodd_000" in result.output and "not in the card's labels" in result.output


def test_incremental_command_and_evaluate_predictions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    start = create_model("tiny", tasks=list(MR_TASKS.values()))
    weights = save_checkpoint(
        start, tmp_path / "start.safetensors", task_groups={"toymr": list(MR_TASKS.values())}
    )
    card = write_dataset(tmp_path, "toyct", {1: "toyct/organ"}, cases=3, modality="ct")
    recipe = write_recipe(tmp_path, [card], tmp_path / "cache", train={"iterations": 2})
    result = runner.invoke(app, [
        "incremental", "--weights", str(weights), "--config", str(recipe), "--output",
        str(tmp_path / "run"), "--no-progress", "--set", "train.log_every=2",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "training finished" in result.output

    # Predictions = the ground truth for one case, an empty map for the other.
    gt, pred = tmp_path / "toyct" / "labelsTr", tmp_path / "pred"
    pred.mkdir()
    shutil.copy(gt / "toyct_000.nii.gz", pred / "toyct_000.nii.gz")
    import nibabel as nib
    import numpy as np

    empty = nib.load(gt / "toyct_001.nii.gz")
    assert isinstance(empty, nib.Nifti1Image)
    nib.save(
        nib.Nifti1Image(np.zeros(empty.shape, np.uint8), empty.affine), pred / "toyct_001.nii.gz"
    )
    result = runner.invoke(app, ["evaluate", "--pred", str(pred), "--gt", str(gt), "--dataset",
                                 str(card), "--csv", str(tmp_path / "e.csv")])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "e.csv").read_text().splitlines()
    assert rows[0] == "case,task,dice,hd95,surface_dice,pred_ml,gt_ml,status"
    assert rows[1].startswith("toyct_000,toyct/organ,1.0,0.0,1.0,")
    assert rows[2].startswith("toyct_001,toyct/organ,0.0,inf,0.0,0.0,") and rows[2].endswith(
        "missed"
    )
    assert "toyct_002" in result.output  # the case without a prediction is reported


def test_evaluate_predictions_reads_the_legend_and_counts_empty_cases(tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    from hermes_model.evaluation.evaluate import evaluate_predictions

    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    truth = np.zeros((20, 20, 10), np.uint8)
    truth[5:12, 6:14, 3:7] = 2  # the dataset's value 2 is the organ
    predicted = np.where(truth == 2, 1, 0).astype(np.uint8)  # hermes segment numbers from 1
    for folder, a, b in (
        (gt_dir, truth, np.zeros_like(truth)),
        (pred_dir, predicted, np.zeros_like(truth)),
    ):
        nib.save(nib.Nifti1Image(a, affine), folder / "c1.nii.gz")
        nib.save(nib.Nifti1Image(b, affine), folder / "c2.nii.gz")
    legend = {"labels": [{"value": 1, "task": "toyct/organ"}]}
    for case in ("c1", "c2"):
        (pred_dir / f"{case}.json").write_text(json.dumps(legend))
    report = evaluate_predictions(pred_dir, gt_dir, {2: "toyct/organ"})
    assert [(r.case, r.dice, r.hd95, r.status) for r in report.rows] == [
        ("c1", 1.0, 0.0, "both_present"),
        ("c2", 1.0, 0.0, "both_empty"),
    ]
    (summary,) = report.summary()
    assert (summary.cases, summary.both_empty, summary.missed) == (2, 1, 0)
    doc = report.to_dict()
    assert doc["mean_dice"] == 1.0 and doc["tasks"][0]["both_empty"] == 1
