"""Reading DICOM series (part of :mod:`hermes_model.io`, which owns the geometry convention).

SimpleITK/GDCM sort a series' files into one regular grid; the checks here refuse series whose
files do not lie on it (gapped, uneven or tilted) and headers that claim absurd sizes, and name
the slice file that cannot be decoded when one is behind the failure.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from hermes_model.errors import InputError
from hermes_model.io.itk import itk_array, itk_meta, simpleitk
from hermes_model.io.meta import LPS_TO_RAS, ImageMeta, check_claimed_size, one_line

_ITK_ERRORS = (RuntimeError, OSError)
log = logging.getLogger(__name__)


def is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM preamble ("DICM" at byte 128) or a .dcm suffix."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def series_uid_of(path: Path) -> str:
    sitk = simpleitk()

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except _ITK_ERRORS as error:
        raise InputError(
            f"{path}: unreadable DICOM file ({one_line(error)}); pass the series folder instead"
        ) from error
    return reader.GetMetaData("0020|000e").strip() if reader.HasMetaDataKey("0020|000e") else ""


def read_dicom(folder: Path, series_uid: str | None) -> tuple[np.ndarray, ImageMeta]:
    sitk = simpleitk()

    source = str(folder)
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise InputError(f"{source}: empty folder; pass an image file or a folder of DICOM slices")
    series = {
        uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(source, uid)
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(source)
    }
    if not series:
        raise InputError(
            f"{source}: folder without DICOM files ({len(entries)} other entries); pass an image "
            "file (.nii.gz, .nrrd, .mha) or a folder that holds the DICOM slices of one series"
        )
    if series_uid is None:
        series_uid = max(series, key=lambda uid: len(series[uid]))
    elif series_uid not in series:
        listed = ", ".join(f"{uid or '(empty UID)'} ({len(f)} files)" for uid, f in series.items())
        raise InputError(
            f"{source}: no DICOM series {series_uid!r} here; available series: {listed}"
        )
    _check_series_size(series[series_uid], source)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(series[series_uid])
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except _ITK_ERRORS as error:
        _name_a_broken_slice(series[series_uid], error, pixels=True)
        raise InputError(
            f"{source}: DICOM series cannot be read ({one_line(error)}); check that all files "
            "are complete, or convert the series with dcm2niix"
        ) from error
    has_tag = reader.HasMetaDataKey(0, "0008|0060")
    tag = reader.GetMetaData(0, "0008|0060").strip() if has_tag else ""

    _, meta = itk_meta(
        image, source, "dicom", modality_tag=tag.upper() or None, series_uid=series_uid
    )
    try:
        _check_slice_positions(reader, meta, source)
    except InputError as error:  # a gap: often a slice GDCM could not parse, left out
        in_series = {os.path.abspath(file) for names in series.values() for file in names}
        _name_a_broken_slice(
            [str(p) for p in entries if os.path.abspath(p) not in in_series], error
        )
        raise
    return itk_array(image), meta


#: Files beside DICOM slices that are not slices (reports, exports, checksums).
_NOT_SLICES = (".txt", ".json", ".xml", ".md", ".csv", ".pdf", ".png", ".jpg", ".nii", ".gz",
               ".zip", ".md5", ".sha256", ".html")  # fmt: skip


def _name_a_broken_slice(files: list[str], error: Exception, pixels: bool = False) -> None:
    """Raise InputError naming the first of ``files`` that cannot be decoded, if any.

    ``pixels``: decode each file's pixels (the series reader failed on one of them); otherwise
    read its header (``files`` are those GDCM left out of every series).
    """
    sitk = simpleitk()
    for name in sorted(files):
        path = Path(name)
        if path.name.upper() == "DICOMDIR" or path.name.lower().endswith(_NOT_SLICES):
            continue
        if not path.is_file():
            continue
        single = sitk.ImageFileReader()
        single.SetFileName(name)
        try:
            single.Execute() if pixels else single.ReadImageInformation()
        except _ITK_ERRORS as problem:
            log.debug("%s: %s", path, problem)  # ITK's text names its own source files
            why = "damaged or truncated pixel data" if pixels else "not a readable DICOM file"
            raise InputError(
                f"{path}: this DICOM slice cannot be decoded ({why}), so the series in "
                f"{path.parent} is incomplete; replace the file with an intact copy (or "
                "re-export the series from the scanner or PACS)"
            ) from error


def _check_series_size(files: tuple[str, ...], source: str) -> None:
    """The size guard for a series: the first slice's claimed size times the number of files."""
    sitk = simpleitk()

    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    try:
        first.ReadImageInformation()
    except _ITK_ERRORS:
        return  # the series reader names the unreadable file
    size = first.GetSize()
    check_claimed_size((*size[:2], len(files) * (size[2] if len(size) > 2 else 1)), 1, source)


def _check_slice_positions(reader: Any, meta: ImageMeta, source: str) -> None:
    """Refuse series whose slices do not sit on the regular grid ITK assumes.

    ITK builds one regular grid from the first slice's orientation and position and one slice
    step; missing slices, uneven steps or gantry tilt would put every later slice in the wrong
    place. Each file's ImagePositionPatient must lie within 0.1 voxel of its grid position.
    """
    count = len(reader.GetFileNames())
    key = "0020|0032"
    if count < 2 or not all(reader.HasMetaDataKey(n, key) for n in range(count)):
        return
    try:
        lps = np.array(
            [[float(v) for v in reader.GetMetaData(n, key).split("\\")] for n in range(count)]
        )
    except ValueError:
        return
    world = lps @ LPS_TO_RAS  # diag matrix: same as applying it to each row
    expected = meta.affine[:3, 3] + np.outer(np.arange(count), meta.affine[:3, 2])
    error = world - expected
    along = error @ meta.direction[:, 2]
    across = np.linalg.norm(error - np.outer(along, meta.direction[:, 2]), axis=1)
    tolerance = max(0.01, 0.1 * min(meta.spacing))
    if across.max() > tolerance:
        raise InputError(
            f"{source}: slices drift sideways by up to {across.max():.2f} mm from a regular grid "
            "(gantry tilt or a sheared series); resample it to a regular grid first (e.g. "
            "dcm2niix, which corrects gantry tilt) and pass the NIfTI file"
        )
    if np.abs(along).max() > tolerance:
        steps = np.diff(world @ meta.direction[:, 2])
        raise InputError(
            f"{source}: uneven slice spacing ({steps.min():.3g} to {steps.max():.3g} mm; missing "
            "or duplicate slices, or several acquisitions in one series); export a complete "
            "single-acquisition series, or pick one with series_uid/--series"
        )


def dicom_info(path: Path) -> dict[str, str]:
    """A DICOM file's series tags (UID, description, number); empty values when absent."""
    sitk = simpleitk()

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except _ITK_ERRORS:
        return {}
    tags = {"uid": "0020|000e", "description": "0008|103e", "number": "0020|0011"}
    return {
        name: reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""
        for name, tag in tags.items()
    }
