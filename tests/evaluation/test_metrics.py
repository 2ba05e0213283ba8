"""Metrics against hand-computed values, the documented empty cases, and a real CHAOS case."""

from __future__ import annotations

import functools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hermes_model.evaluation import metrics

CHAOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "chaos_ct_liver"


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


def test_shifted_cubes_voxel_surface_dice_by_hand() -> None:
    # n=4, k=1, spacing (2, 1, 1). Each cube has 4**3 - 2**3 = 56 surface voxels. Per cube:
    # 16 on the leading face are 2 mm from the other surface; 4 in the middle of the trailing
    # face (inside the other cube) are 1 mm from its side faces; the other 36 lie on it (0 mm).
    a, b = _cubes(4, 1)
    spacing = (2.0, 1.0, 1.0)
    nsd = functools.partial(metrics.surface_dice, a, b, spacing, method="voxel")
    assert nsd(tolerance_mm=0.5) == pytest.approx(72 / 112)
    assert nsd(tolerance_mm=1.0) == pytest.approx(80 / 112)
    assert nsd(tolerance_mm=2.0) == pytest.approx(1.0)
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
    nsd = functools.partial(metrics.surface_dice, a, b, spacing, method="voxel")
    assert nsd(tolerance_mm=expected) == 1.0
    assert nsd(tolerance_mm=expected - 0.01) == 0.0
    # Area-weighted: elements sit at the 8 corners of each voxel; the nearest pair of corners
    # is one voxel closer along every axis than the centres are.
    near = math.sqrt((1 * 0.5) ** 2 + (2 * 2.0) ** 2 + (0 * 3.0) ** 2)
    assert metrics.surface_dice(a, b, spacing, tolerance_mm=near - 0.01) == 0.0
    assert 0.0 < metrics.surface_dice(a, b, spacing, tolerance_mm=near) < 1.0


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
        pred, gt, {"lits/liver": 1, "lits/liver_tumor": 2, "x/absent": 3}, (2.0, 1.0, 1.0),
        nsd_method="voxel",
    )  # fmt: skip
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
    # The published conventions (issue 10): MSD/DeepMind area-weighted NSD and the pooled HD95
    # of medpy / nnU-Net v1; the other two are MONAI's defaults.
    assert result["surface_dice"] == pytest.approx(0.843507, abs=1e-6)
    assert result["hd95"] == pytest.approx(2.472159, abs=1e-6)
    assert metrics.surface_dice(pred, gt, spacing, method="voxel") == pytest.approx(
        0.773155, abs=1e-6
    )
    assert metrics.hd95(pred, gt, spacing, method="max") == pytest.approx(3.632812, abs=1e-6)
    assert result["surface_dice"] < metrics.surface_dice(pred, gt, spacing, tolerance_mm=3.0)


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys, hermes_model.evaluation.metrics; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _box_area(n: int, spacing: tuple[float, float, float]) -> float:
    """Area of the marching-cubes surface of an n^3 voxel box: flat faces, chamfered edges
    (a strip half a voxel wide across each edge) and a triangle at each corner."""
    s0, s1, s2 = spacing
    faces = 2 * (n - 1) ** 2 * (s1 * s2 + s0 * s2 + s0 * s1)
    edges = (
        4
        * (n - 1)
        * sum(s * math.hypot(u, v) / 2 for s, u, v in ((s0, s1, s2), (s1, s0, s2), (s2, s0, s1)))
    )
    corners = math.sqrt((s1 * s2) ** 2 + (s0 * s2) ** 2 + (s0 * s1) ** 2)
    return faces + edges + corners


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 1.2)])
def test_area_weighted_surface_of_a_box_is_its_marching_cubes_area(
    spacing: tuple[float, float, float],
) -> None:
    a, _ = _cubes(5, 0)
    to_other, areas, back, other_areas = metrics.surfel_distances(a, a, spacing)
    assert areas.sum() == pytest.approx(_box_area(5, spacing))
    assert np.all(to_other == 0) and np.all(back == 0) and other_areas.sum() == areas.sum()
    assert metrics.surface_dice(a, a, spacing, tolerance_mm=0.0) == 1.0


def test_pooled_and_max_hd95_follow_their_definitions() -> None:
    gt, _ = _cubes(10, 0)
    pred = gt.copy()
    gt[0:3, 0:3, 0:3] = True  # a corner blob only the ground truth has
    spacing = (1.0, 1.2, 0.9)
    to_gt, to_pred = metrics.surface_distances(pred, gt, spacing)
    pooled = metrics.hd95(pred, gt, spacing)
    largest = metrics.hd95(pred, gt, spacing, method="max")
    assert pooled == pytest.approx(float(np.percentile(np.concatenate([to_gt, to_pred]), 95)))
    assert largest == pytest.approx(max(np.percentile(to_gt, 95), np.percentile(to_pred, 95)))
    assert pooled <= largest
    with pytest.raises(ValueError, match="unknown hd95 method 'mean'"):
        metrics.hd95(pred, gt, spacing, method="mean")
    with pytest.raises(ValueError, match="3-D masks"):
        metrics.surface_dice(np.ones((3, 3), bool), np.ones((3, 3), bool), (1.0, 1.0))


def _blobs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    smooth = [ndimage.gaussian_filter(rng.normal(size=(30, 26, 20)), 3) for _ in range(2)]
    return smooth[0] > 0.02, smooth[1] > 0.02


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_area_nsd_equals_deepmind_surface_distance(seed: int) -> None:
    sd = pytest.importorskip("surface_distance", reason="DeepMind surface-distance not installed")
    pred, gt = _blobs(seed)
    spacing = (0.9, 1.3, 2.5)
    reference = sd.compute_surface_distances(gt, pred, spacing)
    for tolerance in (0.5, 1.0, 3.0):
        expected = sd.compute_surface_dice_at_tolerance(reference, tolerance)
        got = metrics.surface_dice(pred, gt, spacing, tolerance_mm=tolerance)
        assert got == pytest.approx(expected, abs=1e-12)


def test_area_table_equals_deepmind_lookup_table() -> None:
    pytest.importorskip("surface_distance", reason="DeepMind surface-distance not installed")
    from surface_distance import lookup_tables

    for spacing in ((1.0, 1.0, 1.0), (0.73, 0.73, 2.0), (4.0, 3.0, 2.5)):
        expected = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
        np.testing.assert_allclose(metrics._surfel_areas(spacing), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_pooled_hd95_equals_medpy(seed: int) -> None:
    binary = pytest.importorskip("medpy.metric.binary", reason="medpy not installed")
    pred, gt = _blobs(seed)
    spacing = (0.9, 1.3, 2.5)
    assert metrics.hd95(pred, gt, spacing) == pytest.approx(
        binary.hd95(pred, gt, voxelspacing=spacing), abs=1e-12
    )
