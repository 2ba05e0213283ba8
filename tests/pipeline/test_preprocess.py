"""hermes_model.pipeline.preprocess:
exact reorientation, voxel-centre resampling both ways, intensities,
modality detection and pre-flight checks."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch

from hermes_model.config import PreprocessConfig
from hermes_model.errors import ConfigError, InputError, TaskError
from hermes_model.io import ImageMeta, read_image
from hermes_model.pipeline.checks import check_image, detect_modality
from hermes_model.pipeline.preprocess import (
    Prepared,
    normalise,
    percentiles,
    prepare,
    prepare_label,
    reorientation,
    resampled_shape,
    restore,
)

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]
# Non-integer ratios to every test spacing, so that no grid line coincides by accident.
CONFIG = PreprocessConfig(spacing=(1.3, 1.7, 1.1))


def world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(3, *shape) RAS mm of every voxel centre."""
    index = np.indices(shape).reshape(3, -1)
    return (affine[:3, :3] @ index + affine[:3, 3:]).reshape(3, *shape)


def input_coordinates(prepared: Prepared) -> np.ndarray:
    """(3, D, H, W) continuous input index (i, j, k) of every prepared voxel centre."""
    to_input = np.linalg.inv(prepared.meta.affine) @ prepared.affine
    return world(to_input, tuple(prepared.image.shape[1:]))


def centre_of_mass(weights: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World mm centre of mass of non-negative weights on a grid."""
    return (world(affine, weights.shape) * weights).reshape(3, -1).sum(1) / weights.sum()


def denormalised(prepared: Prepared, tensor: torch.Tensor) -> np.ndarray:
    return tensor.double().cpu().numpy() * prepared.intensity.std + prepared.intensity.mean


# Reorientation.


def test_reorientation_is_an_exact_reindexing(any_affine):
    shape = (16, 20, 18)
    orient = reorientation(any_affine, shape)
    assert "".join(nib.aff2axcodes(orient.affine)) == "RAS"
    values = torch.arange(np.prod(shape)).reshape(shape)
    canonical = orient.apply(values)
    assert tuple(canonical.shape) == orient.shape
    # Every canonical voxel sits at the world position of the input voxel whose value it holds.
    to_input = np.linalg.inv(any_affine) @ orient.affine
    index = np.rint(world(to_input, orient.shape)).astype(int)
    np.testing.assert_allclose(world(to_input, orient.shape), index, atol=1e-9)
    np.testing.assert_array_equal(canonical.numpy(), values.numpy()[index[0], index[1], index[2]])
    assert torch.equal(orient.invert(canonical), values)
    assert torch.equal(orient.invert(orient.apply(values[None])), values[None])  # leading dims


def test_oblique_affine_goes_to_the_closest_axes(oblique_affine):
    orient = reorientation(oblique_affine, (16, 16, 16))
    columns = orient.affine[:3, :3] / np.linalg.norm(orient.affine[:3, :3], axis=0)
    assert np.all(np.diag(columns) > np.cos(np.radians(25)))  # residual rotation 20 degrees


def test_resampled_shape_rounds_half_up():
    assert resampled_shape((512, 512, 78), (0.7265625, 0.7265625, 2.0), (1.5, 1.5, 1.5)) == (
        248,
        248,
        104,
    )
    assert resampled_shape((3, 10, 1), (1.0, 1.0, 1.0), (2.0, 4.0, 5.0)) == (2, 3, 1)


# prepare -> restore geometry.


@pytest.mark.parametrize("device", DEVICES)
def test_linear_world_ramp_is_reproduced_on_the_prepared_and_restored_grids(any_affine, device):
    shape = (20, 24, 18)
    gradient = np.array([3.0, -2.0, 1.5])  # HU per mm, stays inside the CT clip window
    ramp = np.tensordot(gradient, world(any_affine, shape), axes=1) - 200.0
    meta = ImageMeta.from_affine(any_affine, shape)
    prepared = prepare(ramp.astype(np.float32), meta, CONFIG, "ct", device)
    assert prepared.image.device.type == device and prepared.image.dtype == torch.float32
    assert "".join(nib.aff2axcodes(prepared.affine)) == "RAS"
    np.testing.assert_allclose(np.linalg.norm(prepared.affine[:3, :3], axis=0), prepared.spacing)
    values = denormalised(prepared, prepared.image[0])
    expected = np.tensordot(gradient, world(prepared.affine, values.shape), axes=1) - 200.0
    coords = input_coordinates(prepared)
    limit = np.array(shape).reshape(3, 1, 1, 1) - 1
    inside = np.all((coords >= 0) & (coords <= limit), axis=0)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(values[inside], expected[inside], atol=0.02)

    back = denormalised(prepared, restore(prepared.image, prepared)[0])
    assert back.shape == shape
    to_prepared = np.linalg.inv(prepared.affine) @ any_affine
    coords = world(to_prepared, shape)
    # Prepared edge voxels hold clamped values: use input voxels between prepared voxels 1..m-2.
    limit = np.array(prepared.image.shape[1:]).reshape(3, 1, 1, 1) - 2
    inside = np.all((coords >= 1) & (coords <= limit), axis=0)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(back[inside], ramp[inside], atol=0.02)


def test_smooth_image_survives_prepare_and_restore(any_affine, smooth_image):
    image = smooth_image((24, 28, 20), seed=5)
    meta = ImageMeta.from_affine(any_affine, image.shape)
    prepared = prepare(image, meta, PreprocessConfig(spacing=(1.5, 1.5, 1.5)), "ct")
    back = denormalised(prepared, restore(prepared.image, prepared)[0])
    error = np.abs(back - image)[2:-2, 2:-2, 2:-2]
    # Downsampling by about 1.5-2 and back smooths a little: about 1.5% of the contrast.
    assert error.mean() < 0.03 * image.std() and error.max() < 0.15 * image.std()


@pytest.mark.parametrize("device", DEVICES)
def test_bright_cube_centre_of_mass_is_kept_in_world_mm(any_affine, device):
    shape = (40, 40, 30)
    image = np.full(shape, -800.0, dtype=np.float32)
    image[6:18, 20:32, 14:24] = 300.0
    meta = ImageMeta.from_affine(any_affine, shape)
    target = centre_of_mass((image > 0).astype(float), any_affine)
    prepared = prepare(image, meta, CONFIG, "ct", device)
    # Trilinear downsampling of a sharp edge is not mass-preserving (as in MONAI and nnU-Net):
    # allow 0.15 of a prepared voxel (0.26 mm here); an axis flip or a half-voxel grid shift
    # would move the centre by millimetres or by 0.4 mm and more.
    tolerance = 0.15 * max(prepared.spacing)
    network = prepared.image[0].cpu().numpy()
    moved = centre_of_mass(network - network.min(), prepared.affine) - target
    assert np.linalg.norm(moved) < tolerance
    back = restore(prepared.image, prepared)[0].cpu().numpy()
    moved = centre_of_mass(back - back.min(), any_affine) - target
    assert np.linalg.norm(moved) < tolerance


@pytest.mark.parametrize("device", DEVICES)
def test_same_physical_image_stored_differently_gives_the_same_result(
    anisotropic_affine, smooth_image, device
):
    a = smooth_image((20, 24, 16), seed=2)
    n0, _, n2 = a.shape
    # b[u, v, w] = a[n0 - 1 - v, w, n2 - 1 - u]: flipped and permuted storage.
    b = np.ascontiguousarray(np.flip(a, (0, 2)).transpose(2, 0, 1))
    index_map = np.array([[0, -1, 0, n0 - 1], [0, 0, 1, 0], [-1, 0, 0, n2 - 1], [0, 0, 0, 1]])
    meta_a = ImageMeta.from_affine(anisotropic_affine, a.shape)
    meta_b = ImageMeta.from_affine(anisotropic_affine @ index_map, b.shape)
    assert meta_b.orientation == "ILA"
    config = PreprocessConfig(spacing=(1.5, 1.5, 1.5))
    pa = prepare(a, meta_a, config, "ct", device)
    pb = prepare(b, meta_b, config, "ct", device)
    np.testing.assert_allclose(pa.affine, pb.affine, atol=1e-9)
    torch.testing.assert_close(pa.image, pb.image, atol=1e-5, rtol=0)
    outputs = torch.cat([torch.sigmoid(pa.image), torch.sigmoid(-2 * pa.image)])
    ra = restore(outputs, pa).cpu().numpy()
    rb = restore(outputs, pb).cpu().numpy()
    assert rb.shape == (2, *b.shape)
    rb_as_a = np.flip(rb.transpose(0, 2, 3, 1), (1, 3))
    np.testing.assert_allclose(ra, rb_as_a, atol=1e-5)


def test_dtype_and_memory_order_do_not_change_the_result(flipped_affine):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 3000, size=(18, 20, 16))
    meta = ImageMeta.from_affine(flipped_affine, base.shape)
    results = [
        prepare(array, meta, CONFIG, "mr").image
        for array in (
            base.astype(np.int16),
            base.astype(np.uint16),
            base.astype(np.float64),
            np.asfortranarray(base.astype(np.int32)),
            base.astype(np.float32)[:, ::-1][:, ::-1],  # a non-contiguous view
        )
    ]
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], atol=1e-5, rtol=0)


def test_restore_rejects_a_wrong_grid(anisotropic_affine):
    meta = ImageMeta.from_affine(anisotropic_affine, (16, 16, 16))
    prepared = prepare(np.zeros((16, 16, 16), np.float32), meta, CONFIG, "ct")
    with pytest.raises(ValueError, match="expected"):
        restore(torch.zeros(1, 8, 8, 8), prepared)
    with pytest.raises(TaskError, match="xray"):
        prepare(np.zeros((16, 16, 16), np.float32), meta, CONFIG, "xray")


def test_prepare_label_is_nearest_on_the_same_grid(permuted_affine, oblique_affine):
    for affine in (permuted_affine, oblique_affine):
        shape = (22, 18, 20)
        label = np.zeros(shape, np.uint8)
        label[4:10, 5:12, 6:15] = 1
        label[14:19, 2:6, 3:8] = 2
        meta = ImageMeta.from_affine(affine, shape)
        prepared = prepare(label.astype(np.float32) * 100, meta, CONFIG, "ct")
        mapped = prepare_label(label, meta, prepared)
        assert mapped.dtype == torch.uint8 and tuple(mapped.shape) == prepared.image.shape[1:]
        # Independent reference: the input voxel nearest to each prepared voxel centre.
        nearest = np.rint(input_coordinates(prepared)).astype(int)
        for axis, n in enumerate(shape):
            nearest[axis] = nearest[axis].clip(0, n - 1)
        expected = label[nearest[0], nearest[1], nearest[2]]
        np.testing.assert_array_equal(mapped.numpy(), expected)
    shifted = oblique_affine.copy()
    shifted[:3, 3] += 0.5
    moved = ImageMeta.from_affine(shifted, shape)
    with pytest.raises(InputError, match="not on the grid"):
        prepare_label(label, moved, prepared)


# Intensities.


def test_ct_normalisation_clips_then_z_scores():
    values = torch.linspace(-2000, 3000, 40 * 40 * 40).reshape(40, 40, 40)
    out, intensity = normalise(values, "ct", PreprocessConfig())
    assert (intensity.low, intensity.high) == (-990.0, 500.0)
    clipped = values.clamp(-990, 500)
    torch.testing.assert_close(out, (clipped - clipped.mean()) / clipped.std(correction=0))
    assert abs(float(out.mean())) < 1e-5 and abs(float(out.std(correction=0)) - 1) < 1e-5


def test_mr_percentiles_match_numpy():
    rng = np.random.default_rng(1)
    values = rng.gamma(2.0, 150.0, size=(30, 31, 29)).astype(np.float32)
    tensor = torch.from_numpy(values)
    expected = np.percentile(values.astype(np.float64), [2, 98])
    np.testing.assert_allclose(percentiles(tensor, (2, 98)), expected, rtol=1e-6)
    # Large volumes: exact percentiles of a fixed odd-stride subsample.
    sub = values.reshape(-1)[:: (values.size // 1000 + 1) | 1]
    np.testing.assert_allclose(
        percentiles(tensor, (2, 50, 98), max_samples=1000),
        np.percentile(sub.astype(np.float64), [2, 50, 98]),
        rtol=1e-6,
    )
    out, intensity = normalise(tensor, "mr", PreprocessConfig())
    np.testing.assert_allclose((intensity.low, intensity.high), expected, rtol=1e-6)
    assert float(out.min()) == pytest.approx((intensity.low - intensity.mean) / intensity.std)


def test_constant_volume_normalises_to_zeros_not_nan():
    out, intensity = normalise(torch.full((16, 16, 16), -1500.0), "ct", PreprocessConfig())
    assert intensity.std == 1.0 and torch.all(out == 0)


# Modality detection.


def synthetic_ct(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(-1000, 10, size=(40, 40, 24))
    image[8:32, 6:34, :] = rng.normal(40, 20, size=(24, 28, 24))  # body
    image[12:18, 10:16, :] = rng.normal(-100, 10, size=(6, 6, 24))  # fat
    image[18:22, 20:24, :] = 700  # bone
    return image.astype(np.int16)


def synthetic_mr(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.abs(rng.normal(0, 5, size=(40, 40, 24)))
    image[8:32, 6:34, :] = rng.normal(400, 60, size=(24, 28, 24))
    return image.astype(np.float32)


def test_detect_modality_on_synthetic_intensities():
    meta = ImageMeta.from_affine(np.eye(4), (40, 40, 24))
    modality, confidence = detect_modality(synthetic_ct(), meta)
    assert modality == "ct" and confidence >= 0.9
    modality, confidence = detect_modality(synthetic_mr(), meta)
    assert modality == "mr" and confidence >= 0.8
    tagged = dataclasses.replace(meta, modality_tag="MR")
    assert detect_modality(synthetic_ct(), tagged) == ("mr", 1.0)  # the tag wins
    unrescaled = synthetic_ct().astype(np.int32) + 1024  # HU + 1024, as stored on disk
    assert detect_modality(unrescaled, meta) == ("ct", 0.6)


REAL_CT = [
    "chaos_ct_liver/chaos_ct_sample_0000.nii.gz",
    "totalsegmentator/example_ct_sm.nii.gz",
    "totalsegmentator/example_ct.nii.gz",
    "totalsegmentator/aorta_report_ct_cropped.nii.gz",
    "totalsegmentator/example_ct_dicom",
]
REAL_MR = [
    "totalsegmentator/example_mr_sm.nii.gz",
    "pyradiomics/brain1_0000.nii.gz",
    "pyradiomics/brain2_0000.nii.gz",
    "pyradiomics/breast1_0000.nii.gz",
    *(f"hippocampus/imagesTr/hippocampus_{n:03d}.nii.gz" for n in (1, 3, 136, 190, 250, 366)),
    *(
        f"brats2015/brats_2013_pat000{n}_1/{channel}_subtrMeanDivStd.nii.gz"
        for n in range(1, 7)
        for channel in ("Flair", "T1c")
    ),
]


@pytest.mark.parametrize(
    ("relative", "expected"), [(p, "ct") for p in REAL_CT] + [(p, "mr") for p in REAL_MR]
)
def test_detect_modality_on_real_scans(data_dir, relative, expected):
    array, meta = read_image(data_dir / relative)
    untagged = dataclasses.replace(meta, modality_tag=None)
    modality, confidence = detect_modality(array, untagged)
    assert modality == expected and confidence >= 0.6
    if meta.modality_tag:
        assert detect_modality(array, meta) == (expected, 1.0)
    check_image(array, meta, modality)  # no error on real scans of the right modality


def test_all_hippocampus_cases_are_mr(data_dir):
    paths = sorted((data_dir / "hippocampus" / "imagesTr").glob("*.nii.gz"))
    assert len(paths) == 260
    found = {detect_modality(*read_image(p))[0] for p in paths[::5]}
    assert found == {"mr"}


# Pre-flight checks.


def test_non_finite_voxels_are_counted_in_the_error():
    image = synthetic_mr().copy()
    image[0, 0, :3] = np.nan
    image[1, 1, 1] = np.inf
    meta = ImageMeta.from_affine(np.eye(4), image.shape, source="scan.nii.gz")
    with pytest.raises(InputError, match=r"scan\.nii\.gz: 4 of 38400 voxels are NaN or infinite"):
        check_image(image, meta, "mr")


def test_all_nan_image_is_refused_and_does_not_break_detection():
    image = np.full((16, 16, 16), np.nan, np.float32)
    meta = ImageMeta.from_affine(np.eye(4), image.shape, source="nan.nii.gz")
    assert detect_modality(image, meta)[0] in ("ct", "mr")
    with pytest.raises(InputError, match="4096 of 4096 voxels"):
        check_image(image, meta, "ct")


def test_constant_image_is_refused():
    meta = ImageMeta.from_affine(np.eye(4), (16, 16, 16), source="blank.nii.gz")
    with pytest.raises(InputError, match="blank.nii.gz: every voxel has the value 7"):
        check_image(np.full((16, 16, 16), 7, np.int16), meta, "ct")


def test_ct_not_in_hounsfield_units_is_refused(data_dir):
    array, meta = read_image(data_dir / "chaos_ct_liver" / "chaos_ct_sample_0000.nii.gz")
    assert check_image(array, meta, "ct") == []
    stored = array.astype(np.int32) + 1024  # no rescale intercept applied
    with pytest.raises(InputError, match="rescale.*intercept") as caught:
        check_image(stored, meta, "ct")
    assert meta.source in str(caught.value)
    zscored = ((array - array.mean()) / array.std()).astype(np.float32)
    with pytest.raises(InputError, match="already normalised"):
        check_image(zscored, meta, "ct")
    mr, mr_meta = read_image(data_dir / "pyradiomics" / "brain1_0000.nii.gz")
    with pytest.raises(InputError, match="not Hounsfield units.*--modality mr"):
        check_image(mr, mr_meta, "ct")


def test_ct_with_a_small_body_in_a_wide_field_is_hounsfield(data_dir):
    # A real OpenKBP CT: 93% air and under 5% soft tissue (a neck in a 500 mm field) was once
    # refused as "not Hounsfield units".
    array, meta = read_image(data_dir / "openkbp" / "imagesTr" / "openkbp_295.nii.gz")
    assert detect_modality(array, meta)[0] == "ct"
    assert check_image(array, meta, "ct") == []


def test_soft_problems_are_warnings(oblique_affine):
    ct = synthetic_ct()
    meta = ImageMeta.from_affine(np.diag([0.7, 0.7, 5.0, 1.0]), ct.shape, source="x.nii.gz")
    warnings = check_image(ct, meta, "mr")
    assert any("look like CT" in w for w in warnings)
    assert any("anisotropic voxels" in w for w in warnings)
    ultrasound = dataclasses.replace(meta, modality_tag="US")
    assert any("DICOM modality is US" in w for w in check_image(ct, ultrasound, "ct"))
    oblique = ImageMeta.from_affine(oblique_affine, ct.shape, qform_code=0, sform_code=0)
    warnings = check_image(ct, oblique, "ct")
    assert any("oblique scan" in w for w in warnings)
    assert any("without orientation" in w for w in warnings)
    assert all("\n" not in w for w in warnings)
    noted = dataclasses.replace(meta, notes=("x.nii.gz: the NIfTI qform and sform disagree",))
    assert noted.notes[0] in check_image(ct, noted, "ct")


def test_body_region_statistics_ignore_the_air_around_the_body() -> None:
    # A CT slab: a 'body' of soft tissue (40 +- 20 HU) in a field of air (-1000 HU).
    generator = torch.Generator().manual_seed(0)
    volume = torch.full((40, 40, 40), -1000.0)
    volume[10:30, 10:30, 10:30] = 40.0 + 20.0 * torch.randn(20, 20, 20, generator=generator)
    whole, whole_stats = normalise(volume.clone(), "ct", PreprocessConfig())
    body, body_stats = normalise(volume.clone(), "ct", PreprocessConfig(norm_region="body"))
    inside = volume > -500
    assert whole_stats.mean < -800  # the air dominates the whole-volume mean
    assert abs(body_stats.mean - 40.0) < 2.0 and abs(body_stats.std - 20.0) < 2.0
    assert abs(float(body[inside].mean())) < 1e-4 and abs(float(body[inside].std()) - 1) < 1e-2
    assert (whole_stats.low, whole_stats.high) == (body_stats.low, body_stats.high)
    with pytest.raises(ConfigError, match="norm_region"):
        PreprocessConfig(norm_region="lungs")
