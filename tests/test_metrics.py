"""Metrics against hand-computed values, the documented empty cases, and a real CHAOS case."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hermes_model import metrics

CHAOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "chaos_ct_liver"


def _cubes(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Two n-voxel cubes, the second shifted by k voxels along axis 0, in a zero margin."""
    a = np.zeros((n + k + 4, n + 4, n + 4), dtype=bool)
    b = np.zeros_like(a)
    a[2 : 2 + n, 2 : 2 + n, 2 : 2 + n] = True
    b[2 + k : 2 + n + k, 2 : 2 + n, 2 : 2 + n] = True
    return a, b


@pytest.mark.parametrize(("n", "k"), [(4, 1), (6, 2), (10, 3)])
def test_shifted_cubes_dice_and_hd95(n: int, k: int) -> None:
    a, b = _cubes(n, k)
    assert metrics.dice(a, b) == pytest.approx((n - k) / n)
    # Every surface voxel lies within k voxels along axis 0 of the other surface, and the
    # leading face (n*n voxels, far more than 5% of the surface) lies exactly k voxels away.
    spacing = (2.5, 0.8, 1.2)
    assert metrics.hd95(a, b, spacing) == pytest.approx(k * 2.5)
    assert metrics.hd95(b, a, spacing) == pytest.approx(k * 2.5)


def test_shifted_cubes_surface_dice_by_hand() -> None:
    # n=4, k=1, spacing (2, 1, 1). Each cube has 4**3 - 2**3 = 56 surface voxels. Per cube:
    # 16 on the leading face are 2 mm from the other surface; 4 in the middle of the trailing
    # face (inside the other cube) are 1 mm from its side faces; the other 36 lie on it (0 mm).
    a, b = _cubes(4, 1)
    spacing = (2.0, 1.0, 1.0)
    assert metrics.surface_dice(a, b, spacing, tolerance_mm=0.5) == pytest.approx(72 / 112)
    assert metrics.surface_dice(a, b, spacing, tolerance_mm=1.0) == pytest.approx(80 / 112)
    assert metrics.surface_dice(a, b, spacing, tolerance_mm=2.0) == pytest.approx(1.0)
    to_b, to_a = metrics.surface_distances(a, b, spacing)
    assert sorted(np.unique(to_b).tolist()) == [0.0, 1.0, 2.0]
    assert (np.count_nonzero(to_b == 2.0), np.count_nonzero(to_b == 1.0)) == (16, 4)
    assert to_a.size == 56


def test_single_voxels_give_the_anisotropic_euclidean_distance() -> None:
    a = np.zeros((5, 6, 7), dtype=bool)
    b = np.zeros_like(a)
    a[1, 1, 1] = True
    b[3, 4, 2] = True
    spacing = (0.5, 2.0, 3.0)
    expected = math.sqrt((2 * 0.5) ** 2 + (3 * 2.0) ** 2 + (1 * 3.0) ** 2)
    assert metrics.hd95(a, b, spacing) == pytest.approx(expected)
    assert metrics.dice(a, b) == 0.0
    assert metrics.surface_dice(a, b, spacing, tolerance_mm=expected) == 1.0
    assert metrics.surface_dice(a, b, spacing, tolerance_mm=expected - 0.01) == 0.0


def test_parallel_plates_in_2d() -> None:
    a = np.zeros((9, 12), dtype=bool)
    b = np.zeros_like(a)
    a[2, 1:11] = True
    b[6, 1:11] = True
    assert metrics.hd95(a, b, (1.5, 0.7)) == pytest.approx(4 * 1.5)


def test_identical_masks() -> None:
    a, _ = _cubes(5, 1)
    assert metrics.dice(a, a) == 1.0
    assert metrics.hd95(a, a, (1.0, 1.0, 1.0)) == 0.0
    assert metrics.surface_dice(a, a, (1.0, 1.0, 1.0), tolerance_mm=0.0) == 1.0


def test_empty_cases_are_explicit() -> None:
    empty = np.zeros((6, 6, 6), dtype=bool)
    full = empty.copy()
    full[2:4, 2:4, 2:4] = True
    spacing = (1.0, 1.0, 1.0)
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.hd95(empty, empty, spacing) == 0.0
    assert metrics.surface_dice(empty, empty, spacing) == 1.0
    for pred, gt in ((empty, full), (full, empty)):
        assert metrics.dice(pred, gt) == 0.0
        assert metrics.hd95(pred, gt, spacing) == math.inf
        assert metrics.surface_dice(pred, gt, spacing) == 0.0


def test_mask_on_the_array_border_has_a_surface_there() -> None:
    a = np.ones((4, 4, 4), dtype=bool)
    b = np.zeros_like(a)
    b[:, :, :3] = True
    # Every surface voxel of b also lies on a's surface; a's face z=3 is 1 voxel away.
    assert metrics.hd95(a, b, (1.0, 1.0, 2.0)) == pytest.approx(2.0)


def test_bad_inputs_raise_clear_errors() -> None:
    a = np.zeros((4, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match=r"differ in shape: \(4, 4, 4\) vs \(4, 4, 5\)"):
        metrics.dice(a, np.zeros((4, 4, 5), dtype=bool))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.hd95(a, np.zeros((4, 4)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="2 values for a 3-D mask"):
        metrics.hd95(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="positive and finite"):
        metrics.surface_dice(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="tolerance_mm"):
        metrics.surface_dice(a, a, (1.0, 1.0, 1.0), tolerance_mm=-1.0)
    with pytest.raises(ValueError, match="non-empty"):
        metrics.surface_distances(a, a, (1.0, 1.0, 1.0))


def test_evaluate_case_per_label() -> None:
    a, b = _cubes(4, 1)
    pred = np.where(a, 2, 0).astype(np.uint8)
    gt = np.where(b, 2, 0).astype(np.uint8)
    gt[0, 0, 0] = 1  # a structure the prediction misses
    result = metrics.evaluate_case(
        pred, gt, {"lits/liver": 1, "lits/liver_tumor": 2, "x/absent": 3}, (2.0, 1.0, 1.0)
    )
    assert result["lits/liver_tumor"]["dice"] == pytest.approx(0.75)
    assert result["lits/liver_tumor"]["hd95"] == pytest.approx(2.0)
    assert result["lits/liver_tumor"]["surface_dice"] == pytest.approx(80 / 112)
    assert result["lits/liver_tumor"]["pred_ml"] == pytest.approx(64 * 2.0 / 1000)
    assert result["lits/liver"] == {
        "dice": 0.0,
        "hd95": math.inf,
        "surface_dice": 0.0,
        "pred_ml": 0.0,
        "gt_ml": pytest.approx(0.002),
    }
    assert result["x/absent"]["dice"] == 1.0
    assert result["x/absent"]["hd95"] == 0.0


def test_chaos_entrant_against_manual_liver() -> None:
    if not CHAOS.is_dir():
        pytest.skip(f"real-data test: {CHAOS} is absent (shared data not mounted)")
    nib = pytest.importorskip("nibabel")
    gt_image = nib.load(CHAOS / "chaos_ct_sample_liver.nii.gz")
    pred_image = nib.load(CHAOS / "chaos_ct_sample_liver_PREDICTION_example.nii.gz")
    assert np.allclose(gt_image.affine, pred_image.affine)
    spacing = tuple(float(z) for z in gt_image.header.get_zooms()[:3])
    gt = np.asarray(gt_image.dataobj) == 1
    pred = np.asarray(pred_image.dataobj) == 1
    result = metrics.evaluate_case(pred, gt, {"liver": 1}, spacing)["liver"]
    assert result["dice"] == pytest.approx(0.978, abs=5e-4)  # README.txt: Dice 0.978
    assert result["gt_ml"] == pytest.approx(1417, abs=1)  # README.txt: 1417 ml
    # A good entrant: boundaries a few voxels apart at most (0.73 x 0.73 x 2 mm voxels).
    assert 0.5 < result["hd95"] < 10.0
    assert 0.5 < result["surface_dice"] < 1.0
    assert result["surface_dice"] < metrics.surface_dice(pred, gt, spacing, tolerance_mm=3.0)


def test_import_does_not_load_torch() -> None:
    code = "import sys, hermes_model.metrics; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
