"""DICOM outputs for DICOM-series inputs: a Segmentation (SEG) and an RT Structure Set (RTSTRUCT).

Written by well-kept libraries, never by hand: highdicom builds the SEG (binary, one segment per
task, referencing every source SOP instance and the series' frame of reference); rt-utils builds
the RTSTRUCT dataset (one ROI per task) with closed planar contours per slice that OpenCV traces
along the voxel edges (:func:`slice_contours`).
Both come with the optional extra ``pip install hermes-seg[dicom]``.

Each segment/ROI carries the task's SNOMED CT codes from :mod:`hermes_model.tasks.codes`: category
and type (and laterality, and a tumour's anatomic region) in the SEG; the type as the ROI's
RT ROI Identification Code in the RTSTRUCT (its name says the side).

Voxel order: the mask arrays are (I, J, K) on the grid that :func:`hermes_model.io.read_image`
returned for the series, where I is the column and J the row within a slice and K follows the
series' files as ITK sorted them. Each file's ImagePositionPatient is checked against that grid
before anything is written.

Source files whose SOP Class/Instance UID were blanked (by some anonymisers) but kept in the file
meta header are referenced by the file meta UIDs.
"""

from __future__ import annotations

import io as stdio
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hermes_model.errors import ConfigError, InputError, OptionError
from hermes_model.io import ImageMeta
from hermes_model.io.itk import simpleitk

__all__ = [
    "FORMATS",
    "DICOM_FORMATS",
    "Segment",
    "parse_formats",
    "check_dicom_input",
    "load_source_series",
    "seg_bytes",
    "rtstruct_bytes",
    "slice_contours",
    "case_outputs",
]

FORMATS = ("nifti", "dicom-seg", "rtstruct")
DICOM_FORMATS = ("dicom-seg", "rtstruct")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_SEG_SERIES_NUMBER, _RTSTRUCT_SERIES_NUMBER = 9901, 9902
# Distinct display colours (RGB) for ROIs, in task order.
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195),
)  # fmt: skip


@dataclass(frozen=True)
class Segment:
    """One task's mask. ``mask``: (I, J, K) bool on the series' grid; ``kind``: organ/tumour."""

    task_id: str
    name: str
    mask: np.ndarray
    kind: str = "organ"


def parse_formats(values: Sequence[str] | None) -> tuple[str, ...]:
    """``["nifti,rtstruct"]`` or ``["nifti", "rtstruct"]`` -> ``("nifti", "rtstruct")``.

    None (or no values) gives ``("nifti",)``. OptionError for an unknown name, or for values
    that name no format (``""``, ``","``).
    """
    names = [n.strip().lower() for v in values or () for n in v.split(",") if n.strip()]
    for name in names:
        if name not in FORMATS:
            raise OptionError(
                f"unknown output format {name!r}; use one or more of {', '.join(FORMATS)} "
                "(e.g. --format nifti --format dicom-seg)"
            )
    if values and not names:
        raise OptionError(
            f"--format {', '.join(map(repr, values))} names no format; use one or more of "
            f"{', '.join(FORMATS)}, or leave --format out for nifti"
        )
    return tuple(dict.fromkeys(names)) or ("nifti",)


def _requirements() -> None:
    try:
        import highdicom  # noqa: F401
        import rt_utils  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"DICOM outputs need highdicom and rt-utils ({error}); install them with "
            "`pip install hermes-seg[dicom]`"
        ) from error


def check_dicom_input(path: str, is_dicom: bool, formats: Sequence[str]) -> None:
    """ConfigError when a DICOM format is asked for an input that is not a DICOM series."""
    wanted = [f for f in formats if f in DICOM_FORMATS]
    if not wanted:
        return
    _requirements()
    if not is_dicom:
        raise ConfigError(
            f"{path}: --format {wanted[0]} needs a DICOM series as input (the output references "
            "the scan's DICOM instances); pass the DICOM folder, or use --format nifti"
        )


def _dataset(path: str) -> Any:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise InputError(
            f"{path}: unreadable DICOM file ({error}); re-export the series"
        ) from error
    meta = getattr(ds, "file_meta", None)
    # Some anonymisers blank the dataset's UIDs but keep them in the file meta header.
    if not ds.get("SOPInstanceUID") and meta is not None and meta.get("MediaStorageSOPInstanceUID"):
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if not ds.get("SOPClassUID") and meta is not None and meta.get("MediaStorageSOPClassUID"):
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
    return ds


def load_source_series(meta: ImageMeta) -> list[Any]:
    """The series' datasets (no pixel data) in the array's K order, checked against the grid.

    Raises InputError for a series without a frame of reference or SOP instance UIDs, or whose
    files do not lie on the grid that was segmented.
    """
    sitk = simpleitk()

    if meta.format != "dicom":
        raise InputError(f"{meta.source}: not a DICOM series; DICOM outputs need DICOM input")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(meta.source, meta.series_uid or "")
    datasets = [_dataset(f) for f in files]
    if len(datasets) != meta.shape[2]:
        raise InputError(
            f"{meta.source}: {len(datasets)} files in series {meta.series_uid} but "
            f"{meta.shape[2]} slices were segmented; re-export the series as one folder"
        )
    frames = {str(ds.get("FrameOfReferenceUID", "") or "") for ds in datasets}
    if frames == {""}:
        raise InputError(
            f"{meta.source}: the DICOM series has no Frame of Reference UID (0020,0052), so a "
            "SEG or RTSTRUCT cannot be tied to the scan's patient coordinates; re-export the "
            "series from the scanner/PACS with its frame of reference, or use --format nifti"
        )
    if len(frames) > 1:
        raise InputError(
            f"{meta.source}: the series' files have {len(frames)} different frames of reference; "
            "export one acquisition, or use --format nifti"
        )
    for keyword in ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if any(not ds.get(keyword) for ds in datasets):
            raise InputError(
                f"{meta.source}: the DICOM files have no {keyword} (blanked by an anonymiser?), "
                "so a SEG or RTSTRUCT cannot reference them; re-export the series with its UIDs "
                "(anonymisers can replace UIDs instead of blanking them), or use --format nifti"
            )
    _check_positions(datasets, meta)
    return datasets


def _check_positions(datasets: list[Any], meta: ImageMeta) -> None:
    tolerance = max(0.01, 0.1 * min(meta.spacing))
    for k, ds in enumerate(datasets):
        position = ds.get("ImagePositionPatient")
        if position is None:
            raise InputError(
                f"{meta.source}: file without ImagePositionPatient; use --format nifti"
            )
        world = _LPS_TO_RAS @ np.array([float(v) for v in position])
        expected = meta.affine[:3, :3] @ np.array([0.0, 0.0, k]) + meta.affine[:3, 3]
        if np.linalg.norm(world - expected) > tolerance:
            raise InputError(
                f"{meta.source}: slice {k} ({ds.SOPInstanceUID}) lies "
                f"{np.linalg.norm(world - expected):.2f} mm off the segmented grid; re-read the "
                "series (it may have changed on disk), or use --format nifti"
            )


def _software() -> str:
    from hermes_model.version import __version__

    return str(__version__)


def _coded(concept: Any) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(concept.value, concept.scheme, concept.meaning)


def _segment_description(number: int, segment: Segment) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from hermes_model.tasks.codes import task_code

    code = task_code(segment.task_id)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.name[:64],
        segmented_property_category=_coded(code.category),
        segmented_property_type=_coded(code.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="Hermes", family=codes.cid7162.ArtificialIntelligence, version=_software()
        ),
        tracking_id=segment.task_id[:64],
        tracking_uid=hd.UID(),
        anatomic_regions=[_coded(code.region)] if code.region else None,
    )
    if code.laterality is not None:
        (item,) = description.SegmentedPropertyTypeCodeSequence
        item.SegmentedPropertyTypeModifierCodeSequence = [_coded(code.laterality)]
    return description


def seg_bytes(segments: Sequence[Segment], sources: list[Any], meta: ImageMeta) -> bytes:
    """A binary DICOM SEG of ``segments`` over the source series (``load_source_series``)."""
    import highdicom as hd
    import pydicom

    if not segments:
        raise ConfigError("no tasks to write into the DICOM SEG; request at least one task")
    # (frames, rows, columns, segments): frame k is source file k; row j, column i.
    pixels = np.stack([np.asarray(s.mask, dtype=bool).transpose(2, 1, 0) for s in segments], -1)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment_description(n + 1, s) for n, s in enumerate(segments)],
        series_instance_uid=hd.UID(),
        series_number=_SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Hermes",
        manufacturer_model_name="hermes-seg",
        software_versions=_software(),
        device_serial_number="none",
        series_description="Hermes segmentation",
        omit_empty_frames=bool(pixels.any()),  # a SEG needs at least one frame
    )
    buffer = stdio.BytesIO()
    pydicom.dcmwrite(buffer, seg, enforce_file_format=True)
    return buffer.getvalue()


def slice_contours(mask: np.ndarray, upsample: int = 4) -> list[np.ndarray]:
    """Closed contours of one slice's mask that follow the voxel *edges*.

    Args:
        mask: (I, J) bool, one slice indexed like the volume (column i, row j).
        upsample: tracing resolution in sub-voxels per voxel.

    Returns a list of (N, 2) float arrays of (i, j) voxel coordinates: outer boundaries and hole
    boundaries (readers fill them by the even-odd rule, as DICOM's CLOSED_PLANAR contours are).
    OpenCV traces the centres of boundary pixels, so at voxel resolution a contour would run half
    a voxel inside the mask (a 17-voxel-wide vessel loses 8% of its area); on a 4x finer grid the
    traced line lies 1/8 voxel inside the edges, so every voxel centre falls on the right side.
    """
    import cv2

    fine = np.repeat(np.repeat(mask.T.astype(np.uint8), upsample, 0), upsample, 1)  # (J, I)
    contours, _ = cv2.findContours(fine, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    shift = (upsample - 1) / 2
    return [(c[:, 0, :].astype(np.float64) - shift) / upsample for c in contours if len(c) >= 1]


def _contour_items(segment: Segment, sources: list[Any], meta: ImageMeta) -> list[Any]:
    """One CLOSED_PLANAR contour item per traced contour, in LPS mm on its source slice."""
    from rt_utils import ds_helper

    items = []
    mask = np.asarray(segment.mask, dtype=bool)
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        for points in slice_contours(mask[:, :, k]):
            index = np.column_stack([points, np.full(len(points), k), np.ones(len(points))])
            lps = (_LPS_TO_RAS @ (meta.affine @ index.T)[:3]).T
            data = [float(v) for v in np.round(lps, 3).ravel()]
            item = ds_helper.create_contour(sources[k], data)
            item.NumberOfContourPoints = len(points)
            items.append(item)
    return items


def rtstruct_bytes(segments: Sequence[Segment], sources: list[Any], meta: ImageMeta) -> bytes:
    """An RT Structure Set with one ROI per segment (contours per slice), over ``sources``.

    rt-utils builds the dataset (study, series, referenced frame of reference and images,
    structure set ROIs, observations); the contours come from :func:`slice_contours`.
    """
    import pydicom
    from pydicom.dataset import Dataset
    from rt_utils import ds_helper
    from rt_utils.utils import ROIData

    from hermes_model.tasks.codes import task_code

    if not segments:
        raise ConfigError("no tasks to write into the RTSTRUCT; request at least one task")
    with warnings.catch_warnings():  # rt-utils sets pydicom's deprecated encoding flags
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = ds_helper.create_rtstruct_dataset(sources)
    frame = sources[0].FrameOfReferenceUID
    for n, segment in enumerate(segments, start=1):
        roi = ROIData(
            mask="", color=list(_PALETTE[(n - 1) % len(_PALETTE)]), number=n,
            name=segment.name[:64], frame_of_reference_uid=frame, description=segment.task_id,
            roi_generation_algorithm="AUTOMATIC",
        )  # fmt: skip
        dataset.StructureSetROISequence.append(ds_helper.create_structure_set_roi(roi))
        contour = Dataset()
        contour.ROIDisplayColor = roi.color
        items = _contour_items(segment, sources, meta)
        if items:  # an empty mask has no contours (the sequence is optional, never empty)
            contour.ContourSequence = items
        contour.ReferencedROINumber = n
        dataset.ROIContourSequence.append(contour)
        observation = ds_helper.create_rtroi_observation(roi)
        del observation.ROIObservationDescription  # rt-utils' display hints for its viewer
        observation.RTROIInterpretedType = "ORGAN" if segment.kind == "organ" else ""
        code = Dataset()
        concept = task_code(segment.task_id).type
        code.CodeValue, code.CodingSchemeDesignator = concept.value, concept.scheme
        code.CodeMeaning = concept.meaning
        observation.RTROIIdentificationCodeSequence = [code]
        dataset.RTROIObservationsSequence.append(observation)
    _describe(dataset, sources[0])
    buffer = stdio.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def _describe(dataset: Any, first: Any) -> None:
    """Equipment, series and frame-of-reference attributes that rt-utils leaves to us."""
    import pydicom

    dataset.FrameOfReferenceUID = first.FrameOfReferenceUID
    dataset.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    dataset.Manufacturer, dataset.ManufacturerModelName = "Hermes", "hermes-seg"
    dataset.SoftwareVersions = _software()
    dataset.InstitutionName = first.get("InstitutionName", "")
    dataset.StructureSetLabel = "Hermes"
    dataset.SeriesDescription = "Hermes structures"
    dataset.SeriesNumber = _RTSTRUCT_SERIES_NUMBER
    dataset.StudyID = first.get("StudyID", "")
    dataset.ReferringPhysicianName = first.get("ReferringPhysicianName", "")
    dataset.AccessionNumber = first.get("AccessionNumber", "")
    dataset.OperatorsName = ""
    dataset.InstanceNumber = 1
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian


def case_outputs(
    case: str, result: Any, folder: Any, formats: Sequence[str]
) -> list[tuple[Any, bytes]]:
    """``(path, payload)`` of a case's DICOM outputs (``DIR/<case>_seg.dcm``,
    ``DIR/<case>_rtstruct.dcm``), all built before any is written (no partial output).

    ``result`` is a :class:`hermes_model.pipeline.result.SegmentationResult` of a DICOM series.
    """
    from pathlib import Path

    from hermes_model import tasks as registry

    wanted = [f for f in formats if f in DICOM_FORMATS]
    if not wanted:
        return []
    _requirements()
    meta: ImageMeta = result.meta
    check_dicom_input(meta.source, meta.format == "dicom", wanted)
    sources = load_source_series(meta)
    known = {t.id: t for t in registry.all_tasks()}
    segments = [
        Segment(
            task,
            known[task].name if task in known else task,
            result.mask(task),
            known[task].kind if task in known else "organ",
        )
        for task in result.task_ids
    ]
    writers = {"dicom-seg": (seg_bytes, "seg"), "rtstruct": (rtstruct_bytes, "rtstruct")}
    return [
        (Path(folder) / f"{case}_{suffix}.dcm", build(segments, sources, meta))
        for build, suffix in (writers[f] for f in wanted)
    ]
