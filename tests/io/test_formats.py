"""hermes_model.io.formats and the formats it adds to io: FreeSurfer MGH/MGZ, Analyze and NIfTI
pairs, MINC1/2 (nibabel's own test files and files written from a real scan), the guard against
absurd claimed sizes, and one DICOM file standing for its series."""

from __future__ import annotations

import gzip
import json
import shutil
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from hermes_cli.main import app
from hermes_model.errors import InputError
from hermes_model.io import case_name, find_images, read_image

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
HIPPOCAMPUS = "hippocampus_001"


def corners(shape: tuple[int, ...]) -> np.ndarray:
    """(4, 8) homogeneous voxel indices of the 8 corner voxels."""
    grid = np.array(np.meshgrid(*[(0, n - 1) for n in shape[:3]], indexing="ij")).reshape(3, -1)
    return np.vstack([grid, np.ones((1, grid.shape[1]))])


def nibabel_test_file(name: str) -> Path:
    path = NIBABEL_DATA / name
    if not path.is_file():
        pytest.skip(f"nibabel's test file {name} is not installed ({NIBABEL_DATA})")
    return path


def assert_same_as_nibabel(path: Path) -> None:
    """Our array and world coordinates equal nibabel's own reading of ``path``."""
    array, meta = read_image(path)
    img = nib.load(path)
    expected = np.asarray(img.dataobj)
    np.testing.assert_allclose(array, expected.reshape(array.shape), rtol=1e-6)
    index = corners(meta.shape)
    np.testing.assert_allclose(meta.affine @ index, img.affine @ index, atol=1e-6)
    assert meta.shape == tuple(int(n) for n in img.shape[:3])


@pytest.mark.parametrize(
    "name", ["tiny.mnc", "minc1_1_scale.mnc", "small.mnc", "minc2_1_scale.mnc"]
)
def test_nibabel_minc_test_files_read_with_nibabel_geometry(name):
    path = nibabel_test_file(name)
    if name.startswith(("small", "minc2")):
        pytest.importorskip("h5py", reason="MINC2 (HDF5) needs h5py (hermes-seg[minc])")
    assert_same_as_nibabel(path)
    assert read_image(path)[1].format == "minc"


def test_nibabel_test_mgz_is_4d_and_refused_in_one_line():
    path = nibabel_test_file("test.mgz")
    with pytest.raises(InputError, match=r"4D image of shape \(3, 4, 5, 2\)") as caught:
        read_image(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["analyze.hdr", "nifti1.hdr"])
def test_header_without_its_img_file_names_the_missing_file(name):
    path = nibabel_test_file(name)  # nibabel ships these headers without their data files
    with pytest.raises(InputError, match=r"lacks its \.img file") as caught:
        read_image(path)
    assert caught.value.exit_code == 3 and "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def real_scan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real hippocampus MR written as MGZ, MGH, Analyze, NIfTI pair and MINC2 (by ITK)."""
    source = Path(__file__).resolve().parents[2] / "examples" / f"{HIPPOCAMPUS}.nii.gz"
    if not source.is_file():
        pytest.skip(f"example scan {source} is absent")
    folder = tmp_path_factory.mktemp("formats")
    img = nib.load(source)
    data = np.asarray(img.dataobj)
    # An oblique, flipped affine so that every format must carry a full rotation.
    angle = np.deg2rad(20.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.0, 1.2, 0.9])
    affine[:3, 3] = [30.0, -12.0, 7.5]
    files = {"nifti": folder / "scan.nii.gz"}
    nib.save(nib.Nifti1Image(data, affine), files["nifti"])
    files["mgz"] = folder / "scan_mgz.mgz"
    nib.save(nib.MGHImage(data.astype(np.float32), affine), files["mgz"])
    files["mgh"] = folder / "scan_mgh.mgh"
    nib.save(nib.MGHImage(data.astype(np.float32), affine), files["mgh"])
    files["pair"] = folder / "scan_pair.hdr"
    nib.save(nib.Nifti1Pair(data, affine), files["pair"])
    # Analyze stores only spacing and an origin: give it an axis-aligned grid (nibabel's LAS).
    files["analyze"] = folder / "scan_analyze.hdr"
    analyze = nib.AnalyzeImage(data.astype(np.int16), np.diag([-1.0, 1.2, 0.9, 1.0]))
    nib.save(analyze, files["analyze"])
    files["minc"] = folder / "scan_minc.mnc"
    sitk.WriteImage(sitk.ReadImage(str(files["nifti"])), str(files["minc"]))
    return files


@pytest.mark.parametrize("kind", ["mgz", "mgh", "pair", "analyze", "minc"])
def test_real_scan_in_each_format_has_nibabel_geometry(real_scan, kind):
    if kind == "minc":
        pytest.importorskip("h5py", reason="MINC2 (HDF5) needs h5py (hermes-seg[minc])")
    assert_same_as_nibabel(real_scan[kind])
    array, meta = read_image(real_scan[kind])
    original, original_meta = read_image(real_scan["nifti"])
    if kind == "minc":
        # ITK stores MINC dimensions slowest first (zspace, yspace, xspace) and nibabel keeps
        # that order. ITK also writes its LPS coordinates where nibabel reads MINC world
        # coordinates as RAS, so the two disagree on x and y: Hermes follows nibabel.
        np.testing.assert_array_equal(array, original.transpose(2, 1, 0).astype(array.dtype))
        return
    np.testing.assert_array_equal(array.astype(np.float32), original.astype(np.float32))
    if kind != "analyze":  # Analyze keeps only spacing and origin; the others the full affine
        np.testing.assert_allclose(meta.affine, original_meta.affine, atol=1e-4)


def test_folder_listing_counts_an_analyze_pair_once(real_scan):
    found = find_images([real_scan["nifti"].parent])
    names = sorted(case_name(p) for p in found)
    assert names == ["scan", "scan_analyze", "scan_mgh", "scan_mgz", "scan_minc", "scan_pair"]
    img_file = real_scan["pair"].with_suffix(".img")
    assert find_images([img_file, real_scan["pair"]]) == [real_scan["pair"]]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model with 2 mm windows: the geometry, not the masks' quality, is tested."""
    import torch

    from hermes_model import create_model, save_checkpoint
    from hermes_model.config import PreprocessConfig

    torch.manual_seed(0)
    return save_checkpoint(
        create_model("tiny", tasks=["hippocampus/anterior", "hippocampus/posterior"]),
        tmp_path_factory.mktemp("weights") / "tiny.safetensors",
        preprocess=PreprocessConfig(spacing=(2.0, 2.0, 2.0), patch_size=(32, 32, 32)),
    )


@pytest.mark.parametrize("kind", ["mgz", "analyze", "minc"])
def test_segmenting_each_format_writes_masks_on_nibabels_grid(
    real_scan, tiny_weights, kind, tmp_path
):
    """MGZ/Analyze/MINC files segment into label maps on the input's voxels (nibabel's affine),
    equal to the label map of the same scan given as NIfTI."""
    if kind == "minc":
        pytest.importorskip("h5py", reason="MINC2 (HDF5) needs h5py (hermes-seg[minc])")
    reference = real_scan["nifti"] if kind == "mgz" else None  # same voxels, same grid
    inputs = [str(real_scan[kind])] + ([str(reference)] if reference else [])
    result = CliRunner().invoke(
        app, ["segment", *inputs, "-o", str(tmp_path), "--weights", str(tiny_weights)]
    )
    assert result.exit_code == 0, result.output
    name = case_name(real_scan[kind])
    labels = nib.load(tmp_path / f"{name}.nii.gz")
    source = nib.load(real_scan[kind])
    index = corners(labels.shape)
    np.testing.assert_allclose(labels.affine @ index, source.affine @ index, atol=1e-4)
    assert labels.shape == source.shape[:3]
    assert json.loads((tmp_path / f"{name}.json").read_text())["labels"]
    if reference is not None:
        expected = np.asarray(nib.load(tmp_path / "scan.nii.gz").dataobj)
        np.testing.assert_array_equal(np.asarray(labels.dataobj), expected)


# Absurd claimed sizes.


def _huge_nifti(path: Path) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    payload = header.binaryblock + b"\0" * 4 + b"\0" * 1024
    path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)
    return path


def _huge_mha(path: Path) -> Path:
    path.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 30000 30000 30000\nElementSpacing = 1 1 1\n"
        "ElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    with open(path, "ab") as handle:
        handle.write(b"\0" * 1024)
    return path


def _huge_mgh(path: Path) -> Path:
    header = nib.freesurfer.mghformat.MGHHeader()
    header["dims"] = [30000, 30000, 30000, 1]
    path.write_bytes(header.binaryblock + b"\0" * 1024)
    return path


@pytest.mark.parametrize(
    ("name", "make"),
    [("huge.nii", _huge_nifti), ("huge.nii.gz", _huge_nifti), ("huge.mha", _huge_mha),
     ("huge.mgh", _huge_mgh)],
)  # fmt: skip
def test_absurd_claimed_size_is_refused_before_any_allocation(tmp_path, name, make):
    path = make(tmp_path / name)
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as caught:
            read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert "30000x30000x30000" in message and str(path) in message and "\n" not in message
    assert peak < 50e6  # numpy allocations are traced: nothing near the claimed 54 TB


def test_absurd_size_through_the_cli_is_one_line_and_writes_nothing(tmp_path):
    path = _huge_nifti(tmp_path / "huge.nii")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["segment", str(path), "-o", str(out)])
    assert result.exit_code == 3
    assert "30000x30000x30000" in result.output and "MemoryError" not in result.output
    assert not list(out.glob("*huge*"))


# One DICOM file stands for its series.


def test_one_dicom_file_names_its_series_not_the_folder():
    path = nibabel_test_file("0.dcm")
    assert case_name(path) == "CBU_DTI_64D_1A_s12"
    assert find_images([path, nibabel_test_file("1.dcm")]) == [path]  # one series, one case


def test_one_dicom_file_reads_its_whole_series(data_dir, tmp_path):
    folder = data_dir / "totalsegmentator" / "example_ct_dicom"
    files = sorted(folder.iterdir())
    copy = tmp_path / "exports"
    shutil.copytree(folder, copy)
    array, meta = read_image(copy / files[5].name)
    whole, whole_meta = read_image(folder)
    np.testing.assert_array_equal(array, whole)
    np.testing.assert_allclose(meta.affine, whole_meta.affine)
    name = case_name(copy / files[5].name)
    assert name != "exports" and name
    assert find_images([copy / files[0].name, copy / files[7].name]) == [copy / files[0].name]
