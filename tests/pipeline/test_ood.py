"""hermes_model.pipeline.ood:
training statistics in the checkpoint, one warning for a scan unlike the
training data (nibabel's whole-brain ``anatomical.nii`` for the hippocampus crops, an abdominal
CT at 0.7 mm for the head-and-neck CT), and none on the held-out test splits of either."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hermes_cli.main import app
from hermes_model import create_model, save_checkpoint
from hermes_model.datasets.cards import load_card
from hermes_model.io import ImageMeta, read_image
from hermes_model.pipeline import ood
from hermes_model.weights import hub
from hermes_model.weights.checkpoint import read_metadata, replace_metadata

ROOT = Path(__file__).resolve().parents[2]
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
TASKS = ["hippocampus/anterior", "hippocampus/posterior"]
CT_TASKS = ["openkbp/parotid_left", "openkbp/mandible"]


@pytest.fixture(scope="module")
def bundled() -> dict:
    return read_metadata(hub.resolve_weights(None).path)


def test_bundled_model_records_its_training_statistics(bundled):
    entry = bundled[ood.KEY]["hippocampus"]
    assert entry["cases"] == 188 and entry["split"] == "train" and entry["modality"] == "mr"
    assert entry["spacing_mm"]["min"] == [1.0, 1.0, 1.0]
    assert np.all(np.less_equal(entry["fov_mm"]["min"], entry["fov_mm"]["max"]))
    assert entry["intensity"]["units"] == "z" and entry["intensity"]["percentiles"] == [1, 50, 99]


def test_statistics_follow_world_axes_not_array_axes():
    array = np.random.default_rng(0).normal(size=(20, 30, 40)).astype(np.float32)
    meta = ImageMeta.from_affine(np.diag([1.0, 2.0, 3.0, 1.0]), array.shape)
    swapped = np.eye(4)
    # The same voxels stored with axes (k, i, j), the first one flipped.
    swapped[:3, :3] = [[0, 1.0, 0], [0, 0, 2.0], [-3.0, 0, 0]]
    permuted = array.transpose(2, 0, 1)
    other = ImageMeta.from_affine(swapped, permuted.shape)
    a = ood.scan_statistics(array, meta, "mr")
    b = ood.scan_statistics(permuted, other, "mr")
    assert a.fov_mm == (20.0, 60.0, 120.0) and a.spacing_mm == (1.0, 2.0, 3.0)
    assert (b.fov_mm, b.spacing_mm) == (a.fov_mm, a.spacing_mm)
    np.testing.assert_allclose(a.intensity, b.intensity)


def test_whole_brain_scan_is_unlike_the_hippocampus_training_data(bundled):
    if not ANATOMICAL.is_file():
        pytest.skip(f"nibabel's test file {ANATOMICAL} is not installed")
    array, meta = read_image(ANATOMICAL)
    (line,) = ood.check_scan(array, meta, "mr", bundled, TASKS)
    assert "spacing 2.00x2.00x2.00 mm" in line and "field of view 66x82x50 mm" in line


@pytest.mark.slow  # the bundled model on the CPU: about a minute on a busy 2-core machine
def test_whole_brain_scan_on_the_hippocampus_model_warns_once(tmp_path: Path):
    if not ANATOMICAL.is_file():
        pytest.skip(f"nibabel's test file {ANATOMICAL} is not installed")
    result = CliRunner().invoke(app, ["segment", str(ANATOMICAL), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    legend = json.loads((tmp_path / "anatomical.json").read_text())
    (line,) = legend["out_of_distribution"]
    assert line in legend["warnings"]
    assert "unlike the 188 training scans of 'hippocampus'" in line
    assert "spacing 2.00x2.00x2.00 mm" in line and "field of view 66x82x50 mm" in line
    assert "\n" not in line
    summary = " ".join(result.stdout.split())  # the table may wrap the line
    assert "warning: unlike the 188 training scans" in summary


@pytest.mark.parametrize(
    ("card", "modality", "tasks", "count"),
    [("hippocampus", "mr", TASKS, 52), ("openkbp", "ct", CT_TASKS, 81)],
)
def test_no_false_alarms_on_the_held_out_test_splits(
    bundled, data_dir: Path, card: str, modality: str, tasks: list[str], count: int
):
    cases = load_card(ROOT / "train" / "datasets" / f"{card}.toml").cases("test")
    assert len(cases) == count
    alarms = []
    for case in cases:
        array, meta = read_image(case.image)
        alarms += ood.check_scan(array, meta, modality, bundled, tasks)
    assert alarms == []  # false-alarm rate 0 of count


def test_bundled_model_records_its_ct_training_statistics(bundled):
    entry = bundled[ood.KEY]["openkbp"]
    assert entry["cases"] == 166 and entry["split"] == "train" and entry["modality"] == "ct"
    assert entry["intensity"]["units"] == "HU"
    low, high = entry["spacing_mm"]["min"], entry["spacing_mm"]["max"]
    assert min(low[:2]) >= 2.7 and max(high[:2]) <= 5.5  # in-plane 2.73-5.42 mm
    assert low[2] >= 1.5 and high[2] <= 3.3  # slices 1.5-3.3 mm


def test_abdominal_ct_is_unlike_the_head_and_neck_training_data(bundled, data_dir: Path):
    array, meta = read_image(data_dir / "chaos_ct_liver" / "chaos_ct_sample_0000.nii.gz")
    (line,) = ood.check_scan(array, meta, "ct", bundled, CT_TASKS)
    assert "'openkbp'" in line and "spacing 0.73x0.73x2.00 mm" in line


def test_checkpoint_without_statistics_gives_no_warnings(tmp_path: Path):
    path = save_checkpoint(create_model("tiny", tasks=TASKS), tmp_path / "tiny.safetensors")
    array = np.zeros((200, 200, 200), np.int16)
    meta = ImageMeta.from_affine(np.diag([3.0, 3.0, 3.0, 1.0]), array.shape)
    assert ood.check_scan(array, meta, "mr", read_metadata(path), TASKS) == []


def test_replace_metadata_keeps_every_tensor_byte_for_byte(tmp_path: Path):
    from safetensors import safe_open

    torch.manual_seed(0)
    source = save_checkpoint(
        create_model("tiny", tasks=TASKS), tmp_path / "a.safetensors", half=True
    )
    doc = read_metadata(source)
    target = replace_metadata(source, tmp_path / "b.safetensors", {**doc, ood.KEY: {"x": {}}})
    assert read_metadata(target)[ood.KEY] == {"x": {}}
    with safe_open(str(source), "pt") as a, safe_open(str(target), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():  # noqa: SIM118
            x, y = a.get_tensor(key), b.get_tensor(key)
            assert x.dtype == y.dtype and x.shape == y.shape
            assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))
