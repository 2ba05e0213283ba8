"""``hermes segment --format dicom-seg/rtstruct`` end to end on the real CT series, with a tiny
random-weights checkpoint: valid DICOM next to (or instead of) the NIfTI label map, the same
masks in both, and one clear line for every input that cannot give DICOM outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import copy_ct_series_with_uids, write_nifti
from typer.testing import CliRunner

from hermes_cli.main import app
from hermes_model import create_model, save_checkpoint
from hermes_model.config import PreprocessConfig

pydicom = pytest.importorskip("pydicom", reason="DICOM outputs need pydicom (hermes-seg[dicom])")
hd = pytest.importorskip("highdicom", reason="DICOM SEG needs highdicom (hermes-seg[dicom])")
pytest.importorskip("rt_utils", reason="RTSTRUCT needs rt-utils (hermes-seg[dicom])")

runner = CliRunner()
TASKS = ["amos/liver", "amos/spleen", "lits/liver", "lits/liver_tumor"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny", tasks=TASKS)
    return save_checkpoint(
        model,
        tmp_path_factory.mktemp("weights") / "tiny.safetensors",
        preprocess=PreprocessConfig(spacing=(16.0, 16.0, 16.0), patch_size=(32, 32, 32)),
    )


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_ct_series_with_uids(tmp_path_factory.mktemp("ct") / "ct_series")


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_all_three_formats_hold_the_same_masks(series, weights, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "segment", str(series), "-o", str(out), "--weights", str(weights), "--tasks",
        "amos/liver,lits/liver_tumor", "--format", "nifti,dicom-seg", "--format", "rtstruct",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert files(out) == [
        "ct_series.json", "ct_series.nii.gz", "ct_series_rtstruct.dcm", "ct_series_seg.dcm",
    ]  # fmt: skip
    legend = json.loads((out / "ct_series.json").read_text())
    assert legend["outputs"] == ["ct_series.nii.gz", "ct_series_seg.dcm", "ct_series_rtstruct.dcm"]
    labels = np.asarray(nib.load(out / "ct_series.nii.gz").dataobj)
    seg = hd.seg.segread(out / "ct_series_seg.dcm")
    from hermes_model.io import read_image
    from hermes_model.io.dicom_out import load_source_series

    _, meta = read_image(series)
    uids = [ds.SOPInstanceUID for ds in load_source_series(meta)]
    pixels = seg.get_pixels_by_source_instance(uids, assert_missing_frames_are_empty=True)
    for number, entry in enumerate(legend["labels"], start=1):
        mask = pixels[..., number - 1].transpose(2, 1, 0).astype(bool)
        # The label map resolves overlaps; the SEG keeps each task's own mask (a superset).
        assert np.all(mask[labels == entry["value"]]), entry["task"]
        assert int(mask.sum()) == entry["voxels"]
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy is absent: apt-get install dicom3tools")
    for name in ("ct_series_seg.dcm", "ct_series_rtstruct.dcm"):
        run = subprocess.run([tool, str(out / name)], capture_output=True, text=True, timeout=120)
        lines = (run.stdout + run.stderr).splitlines()
        assert not [line for line in lines if line.startswith("Error")], lines


def test_dicom_only_writes_no_nifti_label_map(series, weights, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "segment", str(series / sorted(p.name for p in series.iterdir())[3]), "-o", str(out),
        "--weights", str(weights), "--tasks", "amos/spleen", "--format", "dicom-seg",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    (seg,) = [name for name in files(out) if name.endswith(".dcm")]
    assert seg.endswith("_seg.dcm") and not [n for n in files(out) if n.endswith(".nii.gz")]


def test_dicom_format_on_nifti_input_is_one_line_before_any_work(weights, tmp_path):
    scan = write_nifti(tmp_path / "scan.nii.gz", np.zeros((16, 16, 16), np.int16), np.eye(4))
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "segment", str(scan), "-o", str(out), "--weights", str(weights), "--format", "dicom-seg",
    ])  # fmt: skip
    assert result.exit_code == 7, result.output
    (line,) = errors(result)
    assert "scan.nii.gz: --format dicom-seg needs a DICOM series" in line
    assert files(out) == []


def test_series_without_frame_of_reference_is_one_line_and_writes_nothing(
    series, weights, tmp_path
):
    broken = tmp_path / "no_frame"
    broken.mkdir()
    for path in sorted(series.iterdir()):
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(broken / path.name)
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "segment", str(broken), "-o", str(out), "--weights", str(weights), "--tasks",
        "amos/liver", "--format", "nifti,rtstruct",
    ])  # fmt: skip
    assert result.exit_code == 3, result.output
    (line,) = errors(result)
    assert "no Frame of Reference UID" in line and "no_frame" in line
    assert files(out) == []  # not even the NIfTI label map


def test_unknown_format_is_one_line(weights, tmp_path):
    result = runner.invoke(app, ["segment", str(tmp_path), "-o", str(tmp_path / "o"),
                                 "--format", "png"])  # fmt: skip
    assert result.exit_code == 2
    assert "unknown output format 'png'" in errors(result)[0]
