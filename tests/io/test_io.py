"""hermes_model.io: exact geometry on read and write, DICOM series, errors that name the file."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from hermes_model.errors import InputError, OutputError
from hermes_model.io import ImageMeta, case_name, find_images, read_image, write_image

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
FORMATS = [".nii", ".nii.gz", ".nrrd", ".mha"]


def corners(shape: tuple[int, ...]) -> np.ndarray:
    """(4, 8) homogeneous voxel indices of the 8 corner voxels."""
    grid = np.array(np.meshgrid(*[(0, n - 1) for n in shape[:3]], indexing="ij")).reshape(3, -1)
    return np.vstack([grid, np.ones((1, grid.shape[1]))])


def itk_points(path: Path, index: np.ndarray) -> np.ndarray:
    """RAS world mm of voxel indices (3, N) by SimpleITK's own reading of ``path``."""
    image = sitk.ReadImage(str(path))
    lps = [image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, i))) for i in index[:3].T]
    return (LPS_TO_RAS @ np.array(lps).T).astype(np.float64)


def raw_nifti(path: Path, data: np.ndarray, header: nib.Nifti1Header) -> Path:
    """Write header and data bytes as they are (nibabel's writers would tidy the header)."""
    header = header.copy()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header["vox_offset"] = 352
    payload = header.binaryblock + b"\0" * 4 + np.asarray(data).tobytes(order="F")
    path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)
    return path


def header_with(affine: np.ndarray, qform_code: int = 1, sform_code: int = 1) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_qform(affine, code=qform_code)
    header.set_sform(affine, code=sform_code)
    return header


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_keeps_voxels_and_geometry(tmp_path, make_volume, any_affine, suffix):
    volume = make_volume(tmp_path, any_affine, (18, 22, 16), seed=3, suffix=suffix)
    array, meta = read_image(volume.path)
    np.testing.assert_array_equal(array, volume.array)
    assert array.dtype == np.int16 and meta.shape == (18, 22, 16)
    # The affine is the one written (NIfTI stores float32; NRRD/MHA text doubles).
    np.testing.assert_allclose(meta.affine, volume.affine, rtol=0, atol=2e-5)
    np.testing.assert_allclose(meta.spacing, np.linalg.norm(any_affine[:3, :3], axis=0), atol=1e-5)
    np.testing.assert_allclose(meta.direction @ np.diag(meta.spacing), meta.affine[:3, :3])
    assert meta.orientation == "".join(nib.aff2axcodes(any_affine))
    # Independent check: SimpleITK's world coordinates of the corners agree with our affine.
    index = corners(meta.shape)
    np.testing.assert_allclose((meta.affine @ index)[:3], itk_points(volume.path, index), atol=1e-4)

    out = write_image(array, meta, tmp_path / "out" / "mask.nii.gz")
    again, meta2 = read_image(out)
    np.testing.assert_array_equal(again, array)
    assert again.dtype == array.dtype
    if suffix.startswith(".nii"):
        np.testing.assert_array_equal(meta2.affine, meta.affine)  # raw header fields copied
    else:
        np.testing.assert_allclose(meta2.affine, meta.affine, rtol=0, atol=1e-4)  # float32 srow
    # The output lies on the same physical voxels for ITK-based readers too.
    np.testing.assert_allclose(itk_points(out, index), itk_points(volume.path, index), atol=1e-4)
    itk_out = sitk.GetArrayFromImage(sitk.ReadImage(str(out))).transpose(2, 1, 0)
    np.testing.assert_array_equal(itk_out, volume.array)


def test_itk_voxel_order_is_i_j_k(tmp_path, make_volume, oblique_affine):
    volume = make_volume(tmp_path, oblique_affine, (16, 20, 24), seed=1, suffix=".nrrd")
    array, _ = read_image(volume.path)
    image = sitk.ReadImage(str(volume.path))
    for i, j, k in [(0, 0, 0), (15, 0, 0), (0, 19, 0), (0, 0, 23), (7, 11, 13)]:
        assert array[i, j, k] == image.GetPixel(i, j, k)


def test_nifti_qform_and_sform_fields_are_copied_bit_for_bit(tmp_path, oblique_affine):
    shifted = oblique_affine.copy()
    shifted[:3, 3] += (1.25, -2.5, 0.75)
    header = header_with(oblique_affine)
    header.set_sform(shifted, code=4)
    path = raw_nifti(tmp_path / "two_transforms.nii.gz", np.zeros((16, 17, 18), np.uint8), header)
    array, meta = read_image(path)
    assert (meta.qform_code, meta.sform_code) == (1, 4)
    np.testing.assert_allclose(meta.affine, shifted, atol=1e-5)  # sform wins, as in nibabel
    out = write_image(array.astype(np.float32), meta, tmp_path / "prob.nii")
    written = nib.load(out).header
    for name in ("pixdim", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "srow_x", "srow_z"):
        np.testing.assert_array_equal(written[name], header[name])
    assert int(written["qform_code"]) == 1 and int(written["sform_code"]) == 4


def test_qform_sform_disagreement_is_noted(tmp_path, flipped_affine):
    shifted = flipped_affine.copy()
    shifted[:3, 3] += (0.0, 3.0, 0.0)
    header = header_with(flipped_affine)
    header.set_sform(shifted, code=2)
    path = raw_nifti(tmp_path / "moved.nii", np.zeros((16, 16, 16), np.int16), header)
    _, meta = read_image(path)
    assert len(meta.notes) == 1 and "disagree by up to 3.00 mm" in meta.notes[0]
    _, agreeing = read_image(
        raw_nifti(tmp_path / "ok.nii", np.zeros((16, 16, 16)), header_with(shifted))
    )
    assert agreeing.notes == ()


def test_big_endian_nifti_reads_in_native_byte_order(tmp_path, anisotropic_affine):
    data = np.arange(16 * 17 * 18, dtype=">i2").reshape(16, 17, 18)
    header = nib.Nifti1Header(endianness=">")
    header.set_qform(anisotropic_affine, code=1)
    header.set_sform(anisotropic_affine, code=1)
    array, meta = read_image(raw_nifti(tmp_path / "big.nii.gz", data, header))
    assert array.dtype == np.dtype("<i2") and array.dtype.isnative
    np.testing.assert_array_equal(array, data)
    np.testing.assert_allclose(meta.affine, anisotropic_affine, atol=1e-6)


def test_nifti_scaling_is_applied(tmp_path, anisotropic_affine):
    raw = np.arange(16 * 16 * 16, dtype=np.int16).reshape(16, 16, 16) % 3000
    header = header_with(anisotropic_affine)
    header.set_slope_inter(0.5, -1024.0)
    raw_nifti(tmp_path / "scaled.nii.gz", raw, header)
    array, _ = read_image(tmp_path / "scaled.nii.gz")
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, raw.astype(np.float32) * 0.5 - 1024.0)


def test_singleton_fourth_dimension_is_squeezed(tmp_path, flipped_affine):
    data = np.random.default_rng(0).integers(0, 9, (16, 18, 20, 1)).astype(np.uint8)
    nib.save(nib.Nifti1Image(data, flipped_affine), tmp_path / "t1.nii.gz")
    array, meta = read_image(tmp_path / "t1.nii.gz")
    assert meta.shape == (16, 18, 20)
    np.testing.assert_array_equal(array, data[..., 0])


def test_write_creates_folders_replaces_atomically_and_maps_bool(tmp_path, permuted_affine):
    meta = ImageMeta.from_affine(permuted_affine, (16, 17, 18))
    mask = np.zeros(meta.shape, dtype=bool)
    mask[3:9, 4:10, 5:11] = True
    target = tmp_path / "a" / "b" / "mask.nii.gz"
    write_image(np.zeros(meta.shape, np.uint8), meta, target)
    write_image(mask, meta, target)  # replaces the first file
    assert sorted(p.name for p in target.parent.iterdir()) == ["mask.nii.gz"]
    with gzip.open(target) as handle:  # a real gzip stream
        assert len(handle.read()) == 352 + mask.size
    array, written = read_image(target)
    assert array.dtype == np.uint8 and int(array.sum()) == 216
    np.testing.assert_allclose(written.affine, permuted_affine, atol=1e-6)


def test_unwritable_output_is_an_output_error_and_leaves_nothing(tmp_path):
    meta = ImageMeta.from_affine(np.eye(4), (16, 16, 16))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="file"):
        write_image(np.zeros(meta.shape, np.uint8), meta, blocker / "mask.nii.gz")
    folder_in_the_way = tmp_path / "mask.nii.gz"
    folder_in_the_way.mkdir()
    with pytest.raises(OutputError, match="mask.nii.gz"):
        write_image(np.zeros(meta.shape, np.uint8), meta, folder_in_the_way)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mask.nii.gz"]
    with pytest.raises(OutputError, match="mask.png"):
        write_image(np.zeros(meta.shape, np.uint8), meta, tmp_path / "mask.png")


def test_write_from_meta_with_changed_affine_uses_the_new_affine(tmp_path, make_volume):
    volume = make_volume(tmp_path, np.diag([1.0, 1.0, 1.0, 1.0]), (16, 16, 16))
    array, meta = read_image(volume.path)
    moved = meta.affine.copy()
    moved[:3, 3] = (10.0, 20.0, 30.0)
    other = dataclasses.replace(meta, affine=moved)  # stale raw NIfTI fields must be ignored
    _, written = read_image(write_image(array, other, tmp_path / "moved.nii.gz"))
    np.testing.assert_array_equal(written.affine, moved)


# Errors: each names the file.


def _nifti_with_affine(path: Path, affine: np.ndarray) -> Path:
    header = nib.Nifti1Header()
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
    header["sform_code"] = 1
    return raw_nifti(path, np.ones((16, 16, 16), np.int16), header)


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected words in the message)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    (tmp_path / "text.nii.gz").write_text("hello")
    (tmp_path / "text.nii").write_text("hello" * 100)
    noise = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    compressed = gzip.compress(nib.Nifti1Image(noise, np.eye(4)).to_bytes())
    (tmp_path / "truncated.nii.gz").write_bytes(compressed[: len(compressed) // 2])
    nib.save(nib.Nifti1Image(np.ones((16, 16), np.int16), np.eye(4)), tmp_path / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((16, 16, 1), np.int16), np.eye(4)), tmp_path / "one.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16, 3), np.int16), np.eye(4)), tmp_path / "4d.nii")
    zero, nan, singular = np.eye(4), np.eye(4), np.eye(4)
    zero[1, 1] = 0.0
    nan[2, 3] = np.nan
    singular[:3, 1] = singular[:3, 0]
    mha = tmp_path / "negative.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((16, 16, 16), np.int16)), str(mha))
    mha.write_bytes(mha.read_bytes().replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 -1 1"))
    return {
        "missing": (tmp_path / "nope.nii.gz", "no such file"),
        "empty folder": (tmp_path / "empty", "empty folder"),
        "no dicom": (tmp_path / "notes", "without DICOM"),
        "text as nii.gz": (tmp_path / "text.nii.gz", "not a readable NIfTI"),
        "text as nii": (tmp_path / "text.nii", "not a readable NIfTI"),
        "truncated gzip": (tmp_path / "truncated.nii.gz", "truncated or corrupt"),
        "2d": (tmp_path / "flat.nii.gz", "2D image"),
        "one slice": (tmp_path / "one.nii.gz", "2D image"),
        "4d": (tmp_path / "4d.nii", "4D image"),
        "zero spacing": (_nifti_with_affine(tmp_path / "zero.nii", zero), "zero voxel spacing"),
        "nan affine": (_nifti_with_affine(tmp_path / "nan.nii", nan), "non-finite"),
        "singular": (_nifti_with_affine(tmp_path / "sing.nii", singular), "singular"),
        "negative spacing": (mha, "negative voxel spacing"),
        "unsupported": (tmp_path / "notes" / "readme.txt", "unsupported file type"),
    }


BAD_INPUTS = [
    "missing",
    "empty folder",
    "no dicom",
    "text as nii.gz",
    "text as nii",
    "truncated gzip",
    "2d",
    "one slice",
    "4d",
    "zero spacing",
    "nan affine",
    "singular",
    "negative spacing",
    "unsupported",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_input_error_naming_the_file(tmp_path, case):
    path, words = _bad_inputs(tmp_path)[case]
    with pytest.raises(InputError) as caught:
        read_image(path)
    message = str(caught.value)
    assert str(path) in message and words in message
    assert "\n" not in message
    assert caught.value.exit_code == 3


def test_negative_pixdim_in_a_qform_only_header_is_an_input_error(tmp_path):
    header = header_with(np.eye(4), qform_code=1, sform_code=0)
    header["pixdim"][2] = -1.0
    path = raw_nifti(tmp_path / "negative.nii", np.ones((16, 16, 16), np.int16), header)
    with pytest.raises(InputError, match="negative.nii"):
        read_image(path)


# Finding cases.


def test_find_images_lists_supported_files_and_dicom_folders(tmp_path, make_volume):
    for name, suffix in [("b", ".nii.gz"), ("a", ".nrrd"), ("c", ".mha"), ("d", ".nii")]:
        make_volume(tmp_path, np.eye(4), (16, 16, 16), suffix=suffix, name=name)
    (tmp_path / "notes.txt").write_text("skip me")
    (tmp_path / ".hidden.nii.gz").write_text("skip me")
    series = tmp_path / "series1"
    series.mkdir()
    (series / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    (tmp_path / "other").mkdir()
    found = find_images([tmp_path])
    assert [p.name for p in found] == ["a.nrrd", "b.nii.gz", "c.mha", "d.nii", "series1"]
    assert find_images([series, series / "IM0001", tmp_path / "b.nii.gz"]) == [
        series,
        tmp_path / "b.nii.gz",
    ]
    with pytest.raises(InputError, match="other"):
        find_images([tmp_path / "other"])
    with pytest.raises(InputError, match="missing"):
        find_images([tmp_path / "missing"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("case_0000.nii.gz", "case_0000"),
        ("brain.nii", "brain"),
        ("CT.NRRD", "CT"),
        ("scan.v2.mha", "scan.v2"),
        ("scan.mhd", "scan"),
    ],
)
def test_case_name(name, expected):
    assert case_name(Path("/data") / name) == expected


def test_case_name_of_a_dicom_folder(tmp_path):
    assert case_name(tmp_path / "patient7_ct") == "patient7_ct"


# DICOM (real data).


def test_dicom_series_geometry_and_modality(data_dir):
    import pydicom

    folder = data_dir / "totalsegmentator" / "example_ct_dicom"
    array, meta = read_image(folder)
    assert meta.format == "dicom" and meta.modality_tag == "CT"
    assert array.shape == meta.shape == (512, 512, 20)
    assert array.dtype == np.int16 and array.min() == -1024  # rescaled to HU
    np.testing.assert_allclose(meta.spacing, (0.9765625, 0.9765625, 2.0))
    assert meta.orientation == "LPS"
    # Independent check with pydicom: voxel (0, 0, k) is at each file's ImagePositionPatient.
    slices = sorted(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir()),
        key=lambda d: float(d.ImagePositionPatient[2]),
    )
    for k, ds in enumerate(slices):
        lps = np.array([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose(meta.affine @ [0, 0, k, 1], [*(LPS_TO_RAS @ lps), 1])
    first = slices[0]
    row, column = np.array(first.ImageOrientationPatient[:3]), first.ImageOrientationPatient[3:]
    np.testing.assert_allclose(meta.direction[:, 0], LPS_TO_RAS @ row)  # i runs along a row
    np.testing.assert_allclose(meta.direction[:, 1], LPS_TO_RAS @ np.array(column))


def test_dicom_segmentation_lands_on_the_ct_by_world_coordinates(data_dir):
    ct, ct_meta = read_image(data_dir / "totalsegmentator" / "example_ct_dicom")
    seg, seg_meta = read_image(data_dir / "totalsegmentator" / "example_seg_dicom.nii.gz")
    assert seg_meta.orientation == "LAS" and ct_meta.orientation == "LPS"  # y flipped
    # Reindex the segmentation onto the CT grid through world mm: CT voxel -> world -> seg voxel.
    index = np.indices(ct.shape).reshape(3, -1)
    to_seg = np.linalg.inv(seg_meta.affine) @ ct_meta.affine
    position = to_seg[:3, :3] @ index + to_seg[:3, 3:]
    rounded = np.rint(position)
    assert np.abs(position - rounded).max() < 1e-3  # the same grid: integer positions
    i, j, k = rounded.astype(int)
    assert i.min() >= 0 and j.min() >= 0 and k.min() >= 0
    on_ct = seg[i, j, k].reshape(ct.shape)
    np.testing.assert_array_equal(on_ct, seg[:, ::-1, :])
    # Anatomy agrees: labelled voxels are soft tissue, liver and aorta have plausible HU.
    labelled = ct[on_ct > 0]
    assert np.mean((labelled > -200) & (labelled < 300)) > 0.9
    assert 40 < ct[on_ct == 5].mean() < 200  # liver
    assert ct[on_ct == 52].mean() > 100  # aorta (contrast)
    naive = ct[seg > 0]  # the same indices without the flip: wrong anatomy
    assert np.mean((naive > -200) & (naive < 300)) < 0.8


def _copy_series(data_dir: Path, target: Path, groups: list[tuple[str, slice]]) -> list[Path]:
    """Copy slices (sorted by z) of the example series, with the SeriesInstanceUIDs given."""
    import pydicom

    source = data_dir / "totalsegmentator" / "example_ct_dicom"
    target.mkdir()
    files = sorted(
        source.iterdir(),
        key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]),
    )
    for uid, part in groups:
        for path in files[part]:
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID = uid
            ds.save_as(target / path.name)
    return files


def test_dicom_folder_with_two_series(data_dir, tmp_path):
    folder = tmp_path / "two"
    files = _copy_series(
        data_dir, folder, [("1.2.826.0.1.3680043.9.1", slice(0, 15)), ("1.2.3.9", slice(15, 20))]
    )
    _, meta = read_image(folder)  # the larger series by default
    assert meta.shape == (512, 512, 15) and meta.series_uid == "1.2.826.0.1.3680043.9.1"
    _, small = read_image(folder, series_uid="1.2.3.9")
    assert small.shape == (512, 512, 5)
    np.testing.assert_allclose(small.origin[2], meta.origin[2] + 15 * 2.0)
    with pytest.raises(InputError, match=r"1\.2\.3\.9 \(5 files\)") as caught:
        read_image(folder, series_uid="9.9.9")
    assert str(folder) in str(caught.value)
    one_file = folder / files[17].name
    _, by_file = read_image(one_file)  # a single file reads its own series
    assert by_file.series_uid == "1.2.3.9"
    assert find_images([folder]) == [folder]


def test_dicom_series_with_a_missing_slice_is_refused(data_dir, tmp_path):
    folder = tmp_path / "gap"
    _copy_series(data_dir, folder, [("1.2.3.4", slice(0, 9)), ("1.2.3.4", slice(10, 20))])
    with pytest.raises(InputError, match="uneven slice spacing") as caught:
        read_image(folder)
    assert str(folder) in str(caught.value)


def test_dicom_with_gantry_tilt_is_refused(data_dir, tmp_path):
    import pydicom

    folder = tmp_path / "tilt"
    files = _copy_series(data_dir, folder, [("1.2.3.4", slice(0, 20))])
    for n, path in enumerate(files):
        ds = pydicom.dcmread(folder / path.name)
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1] + 0.5 * n, position[2]]
        ds.save_as(folder / path.name)
    with pytest.raises(InputError, match="gantry tilt"):
        read_image(folder)


def test_dicom_to_nifti_round_trip(data_dir, tmp_path):
    array, meta = read_image(data_dir / "totalsegmentator" / "example_ct_dicom")
    again, written = read_image(write_image(array, meta, tmp_path / "ct.nii.gz"))
    np.testing.assert_array_equal(again, array)
    np.testing.assert_allclose(written.affine, meta.affine, rtol=0, atol=1e-4)
    assert written.orientation == "LPS"
