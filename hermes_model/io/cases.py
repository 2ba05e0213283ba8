"""Which files and folders are cases to segment, and what each case is called."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from hermes_model.errors import InputError
from hermes_model.io.dicom import dicom_info, is_dicom_file
from hermes_model.io.formats import NIBABEL_SUFFIXES
from hermes_model.io.itk import ITK_SUFFIXES
from hermes_model.io.nifti import NIFTI_SUFFIXES

IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, *ITK_SUFFIXES, *NIBABEL_SUFFIXES)


def _is_dicom_folder(folder: Path) -> bool:
    return any(
        p.is_file() and not p.name.startswith(".") and not _is_image_file(p) and is_dicom_file(p)
        for p in sorted(folder.iterdir())
    )


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _analyze_header(path: Path) -> Path:
    """An Analyze/NIfTI-pair ``.img`` stands for its ``.hdr`` (one case, not two)."""
    if path.suffix.lower() != ".img":
        return path
    for header in (path.with_suffix(".hdr"), path.with_suffix(".HDR")):
        if header.is_file():
            return header
    return path


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into cases, one path per image to segment.

    A folder that directly holds DICOM files is one case. Any other folder gives its supported
    image files (NIfTI, NRRD, MHA/MHD, MGH/MGZ, Analyze ``.hdr``, MINC; sorted by name, hidden
    files skipped) plus its direct sub-folders that hold DICOM files. A DICOM file stands for its
    series (several files of one series give one case). Duplicates are dropped.

    Raises InputError for a missing path or a folder without images.
    """
    cases: list[Path] = []
    series_seen: set[tuple[Path, str]] = set()
    for path in (Path(p) for p in paths):
        if not path.exists():
            raise InputError(f"{path}: no such file or folder; check the path")
        if path.is_file():
            if _is_image_file(path):
                cases.append(_analyze_header(path))
            elif is_dicom_file(path):
                key = (path.resolve().parent, dicom_info(path).get("uid", ""))
                if key not in series_seen:
                    series_seen.add(key)
                    cases.append(path)
            else:
                raise InputError(
                    f"{path}: unsupported file type; use .nii.gz, .nii, .nrrd, .mha, .mhd, .mgz, "
                    ".mgh, .hdr/.img, .mnc or a DICOM file or folder"
                )
        elif _is_dicom_folder(path):
            cases.append(path)
        else:
            children = sorted(p for p in path.iterdir() if not p.name.startswith("."))
            found = [_analyze_header(p) for p in children if _is_image_file(p)]
            found += [p for p in children if p.is_dir() and _is_dicom_folder(p)]
            if not found:
                raise InputError(
                    f"{path}: no images in this folder; it should hold .nii.gz/.nii/.nrrd/.mha/"
                    ".mhd/.mgz/.mgh/.hdr/.mnc files, DICOM files, or sub-folders of DICOM series"
                )
            cases.extend(sorted(set(found)))
    folders = {p for p in cases if p.is_dir()}
    # A DICOM file whose folder is itself a case would segment the same series twice.
    cases = [p for p in cases if p.is_dir() or _is_image_file(p) or p.parent not in folders]
    return list(dict.fromkeys(cases))


def is_dicom_case(path: str | Path) -> bool:
    """True for a case of :func:`find_images` that is a DICOM series (a folder or one file)."""
    path = Path(path)
    return path.is_dir() or (not _is_image_file(path) and is_dicom_file(path))


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def case_name(path: str | Path) -> str:
    """The case's name: file name without its image suffix; a DICOM folder's own name.

    One DICOM file names its series: ``<SeriesDescription>_s<SeriesNumber>`` (characters other
    than letters, digits, ``.``, ``_``, ``-`` become ``_``), else the SeriesInstanceUID, else
    the file name.
    """
    path = Path(path)
    lower = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[: -len(suffix)]
    if path.is_file() and is_dicom_file(path):
        info = dicom_info(path)
        parts = [info.get("description", ""), f"s{info['number']}" if info.get("number") else ""]
        name = _UNSAFE.sub("_", "_".join(p for p in parts if p)).strip("_.")
        return name or info.get("uid") or path.stem
    return path.name
