"""NRRD and MetaImage through SimpleITK (imported only when such a file is read); ITK's LPS
geometry converted to RAS. The DICOM reader uses the same conversion."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from hermes_model.errors import InputError
from hermes_model.io.meta import (
    LPS_TO_RAS,
    ImageMeta,
    as_float32_if_float,
    check_claimed_size,
    check_spatial_shape,
    one_line,
)

ITK_SUFFIXES = {".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha", ".mhd": "mha"}
_ITK_ERRORS = (RuntimeError, OSError)
log = logging.getLogger(__name__)


def simpleitk() -> Any:
    """The SimpleITK module, with ITK's own warnings (``WARNING: In .../itk*.hxx``, printed
    straight to stderr) shown only when this module logs at DEBUG (``--debug``): Hermes reports
    the problem itself, in one line."""
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(log.isEnabledFor(logging.DEBUG))
    return sitk


def itk_meta(image: Any, source: str, fmt: str, **extra: Any) -> tuple[tuple[int, ...], ImageMeta]:
    """Shape (i, j, k) and meta of a SimpleITK image; ITK's LPS geometry converted to RAS."""
    size = tuple(int(n) for n in image.GetSize())
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(
            f"{source}: multi-component image ({image.GetNumberOfComponentsPerPixel()} values per "
            "voxel, e.g. RGB or vector); pass a scalar 3D image (one channel per file)"
        )
    shape = check_spatial_shape(size, source)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)[:3]
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(
            f"{source}: invalid voxel spacing {spacing.tolist()} (must be finite and > 0 mm); "
            "fix the spacing in the header"
        )
    dim = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    origin = np.array(image.GetOrigin(), dtype=np.float64)[:3]
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ origin
    return size, ImageMeta.from_affine(affine, shape, source=source, format=fmt, **extra)


def itk_array(image: Any) -> np.ndarray:
    """The voxels indexed (i, j, k): ITK's array is (z, y, x), so reverse the axes (no copy)."""
    sitk = simpleitk()

    array = sitk.GetArrayFromImage(image)
    array = array.reshape(array.shape[-3:]) if array.ndim > 3 else array
    return as_float32_if_float(array.transpose(2, 1, 0))


def _numbers(text: str) -> list[float]:
    try:
        return [
            float(v) for v in text.replace("(", " ").replace(")", " ").replace(",", " ").split()
        ]
    except ValueError:
        return []


def _itk_header_problem(path: Path) -> str | None:
    """A spacing/direction problem in a NRRD or MetaImage text header, or None.

    ITK rejects zero or NaN spacing with an unspecific message, and silently turns a negative
    MetaImage ElementSpacing into a flipped axis; both are caught here, from the header text.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(16384).decode("latin-1")
    except OSError:
        return None
    spacing: list[float] = []
    vectors: list[list[float]] = []
    for line in head.splitlines():
        if not line.strip():
            break  # a NRRD header ends at its first blank line
        if line.startswith("#") or ":=" in line:
            continue  # NRRD comments and key/value pairs
        key, _, value = line.partition("=" if "=" in line else ":")
        key = key.strip().lower()
        if key == "elementdatafile":
            break  # the last MetaImage header line
        if key in ("elementspacing", "spacings"):
            spacing = [v for v in _numbers(value) if not np.isnan(v) or key == "elementspacing"]
        elif key == "space directions":
            vectors = [_numbers(t) for t in re.findall(r"\(([^)]*)\)", value)]
        elif key in ("transformmatrix", "rotation", "orientation"):
            numbers = _numbers(value)
            if len(numbers) == 9:
                vectors = [numbers[0:3], numbers[3:6], numbers[6:9]]
    norms = [float(np.linalg.norm(v)) for v in vectors if v]
    if any(not np.isfinite(v) for v in spacing + norms):
        return f"non-finite voxel spacing or direction in the header ({spacing or norms})"
    if any(v <= 0 for v in spacing + norms):
        return f"zero or negative voxel spacing in the header ({spacing or norms} mm)"
    if len(vectors) == 3 and all(len(v) == 3 for v in vectors):
        matrix = np.array(vectors) / np.array(norms)[:, None]
        if abs(np.linalg.det(matrix)) < 1e-6:
            return "singular orientation in the header (two image axes point the same way)"
    return None


def read_itk(path: Path, fmt: str) -> tuple[np.ndarray, ImageMeta]:
    sitk = simpleitk()

    source = str(path)
    problem = _itk_header_problem(path)
    if problem:
        raise InputError(f"{source}: {problem}; fix the spacing/direction fields of the header")
    try:
        info = sitk.ImageFileReader()
        info.SetFileName(source)
        info.ReadImageInformation()
        check_claimed_size(info.GetSize(), 1, source)
        image = sitk.ReadImage(source)
    except _ITK_ERRORS as error:
        raise InputError(
            f"{source}: not a readable {fmt.upper()} image ({one_line(error)}); check that the "
            "file (and a .mhd's data file) is complete, or re-export it"
        ) from error
    _, meta = itk_meta(image, source, fmt)
    return itk_array(image), meta
