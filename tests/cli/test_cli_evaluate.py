"""``hermes evaluate``: metric definitions named in the JSON, methods chosen on the command
line, and a card's [annotated] limiting each task to the cases that annotate it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from hermes_cli.main import app
from hermes_model.evaluation.definitions import DEFINITIONS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from toy_data import MR_TASKS, write_dataset  # noqa: E402

runner = CliRunner()


def _predictions(tmp_path: Path) -> tuple[Path, Path, Path]:
    card = write_dataset(tmp_path, "toy", cases=2, val=1)
    gt = tmp_path / "toy" / "labelsTr"
    pred = tmp_path / "pred"
    pred.mkdir()
    for image in sorted(gt.glob("*.nii.gz")):
        label = nib.load(image)
        assert isinstance(label, nib.Nifti1Image)
        array = np.roll(np.asarray(label.dataobj), 2, axis=0)  # boundaries 3 mm off
        nib.save(nib.Nifti1Image(array.astype(np.uint8), label.affine), pred / image.name)
    return card, pred, gt


def _run(args: list[str]) -> None:
    result = runner.invoke(app, ["evaluate", *args])
    assert result.exit_code == 0, result.output


def test_json_names_the_definitions_and_the_options_change_them(tmp_path: Path) -> None:
    card, pred, gt = _predictions(tmp_path)
    base = ["--pred", str(pred), "--gt", str(gt), "--dataset", str(card)]
    _run([*base, "--json", str(tmp_path / "a.json")])
    _run([*base, "--json", str(tmp_path / "b.json"), "--hd95", "max", "--nsd", "voxel",
          "--tolerance-mm", "2"])  # fmt: skip
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["metrics"]["hd95"] == "pooled" and a["metrics"]["surface_dice"] == "area"
    assert a["metrics"]["definitions"]["surface_dice"] == DEFINITIONS["surface_dice:area"]
    assert b["metrics"]["definitions"]["hd95"] == DEFINITIONS["hd95:max"]
    assert b["tolerance_mm"] == 2.0
    for before, after in zip(a["cases"], b["cases"], strict=True):
        assert after["hd95"] >= before["hd95"] > 0  # the larger directed percentile vs pooled


def test_card_annotation_limits_the_scored_cases(tmp_path: Path) -> None:
    card, pred, gt = _predictions(tmp_path)
    (tmp_path / "toy" / "parts.json").write_text(
        json.dumps({"toy_000": [1, 2], "toy_001": [MR_TASKS[1]]})
    )
    card.write_text(card.read_text() + '[annotated]\nfile = "parts.json"\n')
    _run(["--pred", str(pred), "--gt", str(gt), "--dataset", str(card), "--json",
          str(tmp_path / "r.json")])  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())
    assert {t["task"]: t["cases"] for t in report["tasks"]} == {MR_TASKS[1]: 2, MR_TASKS[2]: 1}


def test_one_unusable_scan_is_reported_and_the_others_are_scored(tmp_path: Path) -> None:
    import torch

    from hermes_model import create_model, save_checkpoint

    card = write_dataset(tmp_path, "toymr", cases=3, val=2)
    bad = tmp_path / "toymr" / "imagesTr" / "toymr_001.nii.gz"
    image = nib.load(bad)
    nib.save(nib.Nifti1Image(np.full(image.shape, 7.0, np.float32), image.affine), bad)  # blank
    torch.manual_seed(0)
    weights = save_checkpoint(create_model("tiny", tasks=list(MR_TASKS.values())),
                              tmp_path / "w.safetensors")  # fmt: skip
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["evaluate", "--weights", str(weights), "--dataset", str(card),
                                 "--split", "val", "--json", str(out)])  # fmt: skip
    assert result.exit_code == 1
    report = json.loads(out.read_text())
    assert list(report["failed"]) == ["toymr_001"]
    assert "toymr_001.nii.gz" in report["failed"]["toymr_001"]
    assert {c["case"] for c in report["cases"]} == {"toymr_002"}
    assert "could not be segmented; the others were scored" in result.output


def test_help_names_every_definition_and_the_annotated_table():
    result = runner.invoke(app, ["evaluate", "--help"], terminal_width=120)
    assert result.exit_code == 0, result.output
    for words in ("Dice on voxels", "HD95 pooled", "--hd95 max", "area-weighted", "--nsd voxel"):
        assert words in result.output
    assert "[annotated] table" in result.output  # rich markup must not swallow it
