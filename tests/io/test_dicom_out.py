"""hermes_model.io.dicom_out on the real TotalSegmentator CT series: DICOM SEG and RTSTRUCT that
David Clunie's dciodvfy accepts, that highdicom reads back to identical masks, and whose contours
plastimatch (an independent reader) turns back into masks with Dice >= 0.95.

The shared series' files have blank SOP/Study/Series Instance UIDs (the SOP UIDs survive in the
file meta header) and JPEG 2000 pixel data; the fixture copies it with those UIDs restored and the
pixels decompressed (plastimatch's reader lacks JPEG 2000). Geometry and voxels are untouched.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import DATA_DIR, copy_ct_series_with_uids
from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

from hermes_model.errors import ConfigError, InputError
from hermes_model.io import ImageMeta, read_image

pydicom = pytest.importorskip("pydicom", reason="DICOM outputs need pydicom (hermes-seg[dicom])")
hd = pytest.importorskip("highdicom", reason="DICOM SEG needs highdicom (hermes-seg[dicom])")
pytest.importorskip("rt_utils", reason="RTSTRUCT needs rt-utils (hermes-seg[dicom])")
from hermes_model.io import dicom_out  # noqa: E402

# TotalSegmentator label value -> Hermes task (present in the 20-slice series, and one absent).
STRUCTURES = {
    "bcv/liver": 5,
    "bcv/spleen": 1,
    "bcv/stomach": 6,
    "bcv/aorta": 52,
    "bcv/inferior_vena_cava": 63,
    "structseg/spinal_cord": 79,
    "bcv/kidney_left": 3,  # not in these slices: an empty segment must still be valid
}


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_ct_series_with_uids(tmp_path_factory.mktemp("ct") / "example_ct_dicom")


@pytest.fixture(scope="module")
def segments(series: Path) -> tuple[ImageMeta, list[dicom_out.Segment]]:
    """TotalSegmentator's masks on the series' own grid (their NIfTI has the y axis flipped)."""
    _, meta = read_image(series)
    labels = nib.load(DATA_DIR / "totalsegmentator" / "example_seg_dicom.nii.gz")
    transform = ornt_transform(io_orientation(labels.affine), io_orientation(meta.affine))
    array = apply_orientation(np.asarray(labels.dataobj), transform)
    np.testing.assert_allclose(
        labels.affine @ [511, 0, 0, 1], meta.affine @ [511, 511, 0, 1], atol=1e-3
    )  # the flip is along j: voxel (511, 0) there is (511, 511) here
    from hermes_model.tasks import get_task

    found = [
        dicom_out.Segment(task, get_task(task).name, array == value, get_task(task).kind)
        for task, value in STRUCTURES.items()
    ]
    return meta, found


@pytest.fixture(scope="module")
def written(segments, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    meta, found = segments
    sources = dicom_out.load_source_series(meta)
    folder = tmp_path_factory.mktemp("dicom_out")
    seg = folder / "seg.dcm"
    seg.write_bytes(dicom_out.seg_bytes(found, sources, meta))
    rtstruct = folder / "rtstruct.dcm"
    rtstruct.write_bytes(dicom_out.rtstruct_bytes(found, sources, meta))
    return {"seg": seg, "rtstruct": rtstruct}


def _dciodvfy(path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy is absent: apt-get install dicom3tools (David Clunie's validator)")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return (run.stdout + run.stderr).splitlines()


@pytest.mark.parametrize("kind", ["seg", "rtstruct"])
def test_dciodvfy_reports_no_errors(written, kind):
    lines = _dciodvfy(written[kind])
    assert lines, "dciodvfy printed nothing"
    iod = "Segmentation" if kind == "seg" else "RTStructureSet"
    assert iod in lines, lines  # it recognised the IOD and checked its modules
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, errors


def test_highdicom_reads_the_seg_back_to_identical_masks(written, segments):
    meta, found = segments
    seg = hd.seg.segread(written["seg"])
    sources = dicom_out.load_source_series(meta)
    uids = [ds.SOPInstanceUID for ds in sources]
    pixels = seg.get_pixels_by_source_instance(uids, assert_missing_frames_are_empty=True)
    for number, segment in enumerate(found, start=1):
        back = pixels[..., number - 1].transpose(2, 1, 0).astype(bool)
        np.testing.assert_array_equal(back, segment.mask, err_msg=segment.task_id)
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == set(uids)


def test_seg_segments_carry_the_task_codes(written, segments):
    from hermes_model.tasks.codes import task_code

    seg = hd.seg.segread(written["seg"])
    _, found = segments
    for item, segment in zip(seg.SegmentSequence, found, strict=True):
        code = task_code(segment.task_id)
        (kind,) = item.SegmentedPropertyTypeCodeSequence
        assert kind.CodeValue == code.type.value and kind.CodingSchemeDesignator == "SCT"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == code.category.value
        modifiers = kind.get("SegmentedPropertyTypeModifierCodeSequence", [])
        assert [m.CodeValue for m in modifiers] == (
            [code.laterality.value] if code.laterality else []
        )
        assert item.SegmentLabel == segment.name and item.TrackingID == segment.task_id


def test_plastimatch_turns_the_rtstruct_back_into_our_masks(written, segments, series, tmp_path):
    tool = shutil.which("plastimatch")
    if tool is None:
        pytest.skip("plastimatch is absent: pip install plastimatch (Linux x86-64 wheels)")
    meta, found = segments
    out = tmp_path / "plastimatch"
    subprocess.run(
        [tool, "convert", "--input", str(written["rtstruct"]), "--referenced-ct", str(series),
         "--output-prefix", str(out), "--prefix-format", "nii.gz"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    for segment in found:
        ours = segment.mask
        if not ours.any():
            continue  # an ROI without contours: plastimatch writes no file for it
        image = nib.load(out / f"{segment.name}.nii.gz")
        transform = ornt_transform(io_orientation(image.affine), io_orientation(meta.affine))
        theirs = apply_orientation(np.asarray(image.dataobj) > 0, transform)
        # Same grid: plastimatch's affine, reoriented, equals ours.
        dice = 2 * np.sum(ours & theirs) / (ours.sum() + theirs.sum())
        assert dice >= 0.95, f"{segment.task_id}: Dice {dice:.3f}"


def test_rtstruct_rois_reference_the_series_and_its_frame_of_reference(written, segments):
    meta, found = segments
    ds = pydicom.dcmread(written["rtstruct"])
    sources = dicom_out.load_source_series(meta)
    assert [r.ROIName for r in ds.StructureSetROISequence] == [s.name for s in found]
    assert {r.ReferencedFrameOfReferenceUID for r in ds.StructureSetROISequence} == {
        sources[0].FrameOfReferenceUID
    }
    codes = [o.RTROIIdentificationCodeSequence[0].CodeValue for o in ds.RTROIObservationsSequence]
    from hermes_model.tasks.codes import task_code

    assert codes == [task_code(s.task_id).type.value for s in found]
    uids = {s.SOPInstanceUID for s in sources}
    for roi in ds.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID in uids


def test_series_without_frame_of_reference_or_uids_is_one_line(series, tmp_path, data_dir):
    broken = tmp_path / "no_frame"
    broken.mkdir()
    for path in sorted(series.iterdir()):
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(broken / path.name)
    _, meta = read_image(broken)
    with pytest.raises(InputError, match="no Frame of Reference UID") as caught:
        dicom_out.load_source_series(meta)
    assert "\n" not in str(caught.value) and str(broken) in str(caught.value)
    _, blank = read_image(data_dir / "totalsegmentator" / "example_ct_dicom")
    with pytest.raises(InputError, match="no SeriesInstanceUID"):
        dicom_out.load_source_series(blank)  # the shared copy: UIDs blanked by an anonymiser


def test_parse_formats_and_non_dicom_input():
    assert dicom_out.parse_formats(None) == ("nifti",)
    assert dicom_out.parse_formats(["nifti,rtstruct", "dicom-seg", "rtstruct"]) == (
        "nifti", "rtstruct", "dicom-seg",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="unknown output format 'png'"):
        dicom_out.parse_formats(["png"])
    with pytest.raises(ConfigError, match="scan.nii.gz: --format dicom-seg needs a DICOM series"):
        dicom_out.check_dicom_input("scan.nii.gz", False, ("nifti", "dicom-seg"))
