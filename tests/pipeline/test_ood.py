"""hermes_model.pipeline.ood: training statistics in the checkpoint (version 2: what the model
sees), a scan far outside them flagged (nibabel's whole-brain ``anatomical.nii`` for the
hippocampus crops, an abdominal CT for the head-and-neck CT), none of the validation scans
(also resampled to 1 mm in-plane) nor the held-out test splits. Withholding masks:
test_ood_withhold.py."""

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


def resample_in_plane(array: np.ndarray, meta: ImageMeta) -> tuple[np.ndarray, ImageMeta]:
    """``array`` resampled (linearly) to 1 mm along its in-plane (R and A) axes, on the same
    physical grid origin: what a clinical 512 x 512 head-and-neck CT looks like."""
    from scipy import ndimage

    world = np.argmax(np.abs(np.asarray(meta.direction)), axis=0)
    step = np.where(world == 2, 1.0, 1.0 / np.asarray(meta.spacing))  # input voxels per voxel
    shape = [int((n - 1) / s) + 1 for n, s in zip(array.shape, step, strict=True)]
    fine = ndimage.affine_transform(
        array.astype(np.float32), step, output_shape=shape, order=1, mode="nearest"
    )
    affine = np.asarray(meta.affine) @ np.diag([*step, 1.0])
    return np.round(fine).astype(array.dtype), ImageMeta.from_affine(affine, fine.shape)


ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
TASKS = ["hippocampus/anterior", "hippocampus/posterior"]
CT_TASKS = ["openkbp/parotid_left", "openkbp/mandible"]


@pytest.fixture(scope="module")
def bundled() -> dict:
    return read_metadata(hub.resolve_weights(None).path)


def test_bundled_model_records_its_training_statistics(bundled):
    entry = bundled[ood.KEY]["hippocampus"]
    assert entry["cases"] == 188 and entry["split"] == "train" and entry["modality"] == "mr"
    assert entry["version"] == ood.VERSION and entry["range_percentiles"] == [2, 98]
    assert entry["spacing_mm"]["min"] == entry["spacing_mm"]["max"] == [1.0, 1.0, 1.0]
    for key in ("fov_mm", "body_mm", "body_area_cm2"):
        block = entry[key]
        assert np.all(np.less_equal(block["min"], block["low"]))
        assert np.all(np.less(block["low"], block["high"]))
        assert np.all(np.less_equal(block["high"], block["max"]))
    intensity = entry["intensity"]
    assert intensity["units"] == "z" and intensity["region"] == "body"
    assert intensity["percentiles"] == [25, 50, 95]


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
    assert a.body_mm == (20.0, 60.0, 120.0)  # noise above 10% of its window: all "body"
    assert (b.fov_mm, b.spacing_mm, b.body_mm) == (a.fov_mm, a.spacing_mm, a.body_mm)
    assert b.body_area_cm2 == a.body_area_cm2 == pytest.approx(20 * 60 * 0.9 / 100, rel=0.1)
    np.testing.assert_allclose(a.intensity, b.intensity, atol=0.05)


def test_statistics_do_not_depend_on_the_voxel_grid(data_dir: Path):
    """An OpenKBP CT at ~3.9 mm and the same CT resampled to 1 mm in-plane: the same body
    extent, cross-section and intensities inside the body (the field of view is the same)."""
    case = load_card(ROOT / "train" / "datasets" / "openkbp.toml").cases("val")[0]
    array, meta = read_image(case.image)
    fine, fine_meta = resample_in_plane(array, meta)
    a = ood.scan_statistics(array, meta, "ct")
    b = ood.scan_statistics(fine, fine_meta, "ct")
    assert b.spacing_mm[:2] == (1.0, 1.0) and a.spacing_mm[:2] != (1.0, 1.0)
    np.testing.assert_allclose(b.body_mm, a.body_mm, rtol=0.03)
    assert b.body_area_cm2 == pytest.approx(a.body_area_cm2, rel=0.05)
    np.testing.assert_allclose(b.intensity[:2], a.intensity[:2], atol=30)  # p25, p50 in HU
    assert abs(b.intensity[2] - a.intensity[2]) < 150  # p95 (bone), blurred by interpolation


def test_whole_brain_scan_is_unlike_the_hippocampus_training_data(bundled):
    if not ANATOMICAL.is_file():
        pytest.skip(f"nibabel's test file {ANATOMICAL} is not installed")
    array, meta = read_image(ANATOMICAL)
    (line,) = ood.check_scan(array, meta, "mr", bundled, TASKS)
    assert "far outside the 188 training scans of 'hippocampus'" in line
    assert "resolution 2.00x2.00x2.00 mm after resampling" in line  # the model's grid is 1 mm
    assert "body cross-section" in line and "\n" not in line


@pytest.mark.slow  # the bundled model on the CPU: about a minute on a busy 2-core machine
def test_whole_brain_scan_on_the_hippocampus_model_is_withheld_unless_forced(tmp_path: Path):
    if not ANATOMICAL.is_file():
        pytest.skip(f"nibabel's test file {ANATOMICAL} is not installed")
    refused = CliRunner().invoke(app, ["segment", str(ANATOMICAL), "-o", str(tmp_path)])
    assert refused.exit_code == 3, refused.output
    assert "far outside the 188 training scans of 'hippocampus'" in " ".join(refused.output.split())
    assert not (tmp_path / "anatomical.json").exists()
    result = CliRunner().invoke(app, ["segment", str(ANATOMICAL), "-o", str(tmp_path), "--force"])
    assert result.exit_code == 0, result.output
    legend = json.loads((tmp_path / "anatomical.json").read_text())
    (line,) = legend["out_of_distribution"]
    assert line in legend["warnings"] and legend["withheld"] == []
    assert "'hippocampus'" in line and "may be unreliable" in line and "\n" not in line
    summary = " ".join(result.stdout.replace("│", " ").split())  # a wrapped cell, joined
    assert "warning: far outside the 188 training scans" in summary


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


@pytest.mark.parametrize(
    ("card", "modality", "tasks", "count"),
    [("hippocampus", "mr", TASKS, 20), ("openkbp", "ct", CT_TASKS, 32)],
)
def test_validation_scans_stay_silent(
    bundled, data_dir: Path, card: str, modality: str, tasks: list[str], count: int
):
    cases = load_card(ROOT / "train" / "datasets" / f"{card}.toml").cases("val")
    assert len(cases) == count
    scores = []
    for case in cases:
        array, meta = read_image(case.image)
        (verdict,) = ood.assess(array, meta, modality, bundled, tasks)
        scores.append(verdict.score)
    assert max(scores) < 0.5  # docs/ood.md: 0.21 (OpenKBP), 0.15 (hippocampus)


def test_validation_ct_resampled_to_1_mm_in_plane_is_not_flagged(bundled, data_dir: Path):
    """What a clinical head-and-neck CT looks like (512 x 512 at ~1 mm): judged on what the
    model sees, like its native 3.9 mm copy."""
    for case in load_card(ROOT / "train" / "datasets" / "openkbp.toml").cases("val")[:3]:
        array, meta = resample_in_plane(*read_image(case.image))
        assert meta.spacing[:2] == (1.0, 1.0)
        (verdict,) = ood.assess(array, meta, "ct", bundled, CT_TASKS)
        assert not verdict.far_outside and verdict.score < 0.9, (case.case_id, verdict)


def test_bundled_model_records_its_ct_training_statistics(bundled):
    entry = bundled[ood.KEY]["openkbp"]
    assert entry["cases"] == 166 and entry["split"] == "train" and entry["modality"] == "ct"
    assert entry["intensity"]["units"] == "HU"
    low, high = entry["spacing_mm"]["min"], entry["spacing_mm"]["max"]
    assert min(low[:2]) >= 2.7 and max(high[:2]) <= 5.5  # in-plane 2.73-5.42 mm
    assert low[2] >= 1.5 and high[2] <= 3.3  # slices 1.5-3.3 mm


def test_abdominal_ct_is_unlike_the_head_and_neck_training_data(bundled, data_dir: Path):
    array, meta = read_image(data_dir / "chaos_ct_liver" / "chaos_ct_sample_0000.nii.gz")
    (verdict,) = ood.assess(array, meta, "ct", bundled, CT_TASKS)
    assert verdict.far_outside and verdict.group == "openkbp" and verdict.score > 1.3
    (problem,) = verdict.problems  # an abdomen is twice as wide as a neck
    assert problem.startswith("body cross-section 563 cm²"), problem
    (line,) = ood.check_scan(array, meta, "ct", bundled, CT_TASKS)
    assert "'openkbp'" in line and "resolution" not in line  # 0.73 mm is resampled to 4 mm


def test_checkpoint_without_statistics_gives_no_warnings(tmp_path: Path):
    path = save_checkpoint(create_model("tiny", tasks=TASKS), tmp_path / "tiny.safetensors")
    array = np.zeros((200, 200, 200), np.int16)
    meta = ImageMeta.from_affine(np.diag([3.0, 3.0, 3.0, 1.0]), array.shape)
    assert ood.check_scan(array, meta, "mr", read_metadata(path), TASKS) == []
    assert ood.assess(array, meta, "mr", read_metadata(path), TASKS) == []


def test_version_1_statistics_are_judged_on_field_of_view_and_resolution_only():
    entry = {
        "cases": 3, "modality": "mr",
        "spacing_mm": {"min": [1.0] * 3, "max": [1.0] * 3},
        "fov_mm": {"min": [30.0] * 3, "max": [50.0] * 3},
        "intensity": {"percentiles": [1, 50, 99], "units": "z", "min": [9] * 3, "max": [9] * 3},
    }  # fmt: skip
    grid = {"spacing": [1.0, 1.0, 1.0]}  # the model's grid
    metadata = {ood.KEY: {"g": entry}, "task_groups": {"g": TASKS}, "preprocess": grid}
    array = np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32)
    inside = ImageMeta.from_affine(np.eye(4), array.shape)
    assert ood.assess(array, inside, "mr", metadata, TASKS)[0].score == 0.0  # intensity: not v2
    coarse = ImageMeta.from_affine(np.diag([2.0, 2.0, 2.0, 1.0]), array.shape)
    (verdict,) = ood.assess(array, coarse, "mr", metadata, TASKS)
    assert verdict.far_outside and len(verdict.problems) == 2  # field of view, resolution


def test_withhold_keeps_groups_inside_and_everything_when_forced():
    far = ood.Verdict("a", ("a/x", "a/y"), 2.0, ("body cross-section 600 cm²",), 10)
    near = ood.Verdict("b", ("b/z",), 0.2)
    kept, withheld, lines = ood.withhold([far, near], ["a/x", "b/z", "a/y"], "scan.nii")
    assert (kept, withheld) == (["b/z"], ["a/x", "a/y"])
    (line,) = lines
    assert line.startswith("scan.nii: far outside the 10 training scans of 'a' (score 2.0)")
    assert line.endswith("masks withheld (--force to keep them)")
    kept, withheld, lines = ood.withhold([far, near], ["a/x", "b/z"], "scan.nii", force=True)
    assert (kept, withheld) == (["a/x", "b/z"], []) and "may be unreliable" in lines[0]


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
