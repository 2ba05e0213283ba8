"""Image geometry (``ImageMeta``) and the checks and helpers every reader shares.

The geometry convention is in :mod:`hermes_model.io`'s docstring.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from hermes_model.errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
#: What a corrupt or truncated file raises inside nibabel and gzip.
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError)


@dataclass(frozen=True, eq=False)
class ImageMeta:
    """Geometry and provenance of an image; enough to write a mask back onto the same voxels.

    Attributes:
        affine: (4, 4) float64, voxel centre (i, j, k) -> RAS+ world mm.
        shape: (I, J, K) voxels, in the index order of the array ``read_image`` returns.
        spacing: (3,) mm along i, j, k (the affine's column norms).
        origin: (3,) RAS mm of the centre of voxel (0, 0, 0).
        direction: (3, 3) RAS unit vectors of the i, j, k axes, as columns.
        orientation: axis codes, e.g. ``"LPS"``: the world direction each array axis increases to.
        modality_tag: the DICOM Modality tag ("CT", "MR", ...) or None when the file has none.
        source: the path that was read.
        format: ``nifti``, ``nrrd``, ``mha`` or ``dicom``.
        series_uid: the DICOM SeriesInstanceUID that was read ("" when the files have none).
        qform_code, sform_code: NIfTI transform codes of the input (None for other formats).
        nifti_fields: raw NIfTI geometry header fields, copied verbatim when writing.
        notes: geometry caveats found while reading (one line each), e.g. qform/sform that
            disagree; ``pipeline.checks.check_image`` reports them as warnings.

    ``eq=False``: the array fields make field-wise equality ambiguous; compare affines instead.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    orientation: str
    modality_tag: str | None = None
    source: str = "<memory>"
    format: str = "nifti"
    series_uid: str | None = None
    qform_code: int | None = None
    sform_code: int | None = None
    nifti_fields: Mapping[str, np.ndarray] | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()

    @classmethod
    def from_affine(
        cls, affine: np.ndarray, shape: Iterable[int], source: str = "<memory>", **extra: Any
    ) -> ImageMeta:
        """Meta of a grid given by a voxel->RAS mm affine; raises InputError on a bad affine."""
        affine = np.array(affine, dtype=np.float64)
        shape3 = tuple(int(n) for n in shape)
        if affine.shape != (4, 4) or len(shape3) != 3:
            raise ValueError(f"need a 4x4 affine and 3 sizes, got {affine.shape} and {shape3}")
        check_affine(affine, source)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        direction = affine[:3, :3] / spacing
        affine.setflags(write=False)
        direction.setflags(write=False)
        return cls(
            affine=affine,
            shape=(shape3[0], shape3[1], shape3[2]),
            spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
            origin=(float(affine[0, 3]), float(affine[1, 3]), float(affine[2, 3])),
            direction=direction,
            orientation="".join(str(c) for c in nib.aff2axcodes(affine)),
            source=source,
            **extra,
        )


def one_line(error: BaseException, limit: int = 160) -> str:
    """An exception's text on one line (ITK messages span many lines)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = " ".join(lines) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_affine(affine: np.ndarray, source: str) -> None:
    if not np.all(np.isfinite(affine)):
        raise InputError(
            f"{source}: the voxel-to-world affine has non-finite values (NaN/Inf); fix the "
            "header's spacing/orientation (e.g. re-export the image with dcm2niix or SimpleITK)"
        )
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise InputError(
            f"{source}: zero voxel spacing along axis {int(np.argmin(spacing))} "
            f"(spacing {np.round(spacing, 4).tolist()} mm); fix the header's pixel spacing"
        )
    det = abs(float(np.linalg.det(affine[:3, :3] / spacing)))
    if det < 1e-6:
        raise InputError(
            f"{source}: singular voxel-to-world affine (two image axes point the same way, "
            f"|det| = {det:.2g}); fix the header's orientation (direction cosines / srow)"
        )


def check_spatial_shape(shape: tuple[int, ...], source: str) -> tuple[int, int, int]:
    """The 3D shape, after dropping trailing singleton dimensions; InputError for anything
    that is not a volume (a voxel, a line, a 2D image) or has a 4th dimension."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise InputError(
            f"{source}: {len(dims)}D image of shape {tuple(shape)}; Hermes segments one 3D volume "
            "at a time: split the time points/channels into separate 3D files"
        )
    if len(dims) < 3 or min(dims) == 1:
        extended = sum(n > 1 for n in dims)
        what = ("a single voxel", "a 1D line of voxels", "a 2D image")[min(extended, 2)]
        raise InputError(
            f"{source}: {what} of shape {tuple(shape)}; Hermes segments 3D volumes: pass the "
            "whole volume (all slices of the series), not a single slice"
        )
    return dims[0], dims[1], dims[2]


def as_float32_if_float(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "f" and array.dtype != np.float32:
        return array.astype(np.float32)
    return array


#: The most voxels one image may claim (2**31, about 1290³: 4.3 GB as int16, 8.6 GB as float32).
#: The largest clinical volumes (1024² x 2000 slices) stay below it.
MAX_VOXELS = 2**31


def check_claimed_size(shape: tuple[int, ...], itemsize: int, source: str) -> None:
    """Refuse a header that claims more than :data:`MAX_VOXELS` voxels, before reading data.

    Args:
        shape: the sizes the header claims (any number of dimensions).
        itemsize: bytes per voxel on disk.
        source: the file, for the message.

    Raises InputError naming the claimed size.
    """
    voxels = int(np.prod([int(n) for n in shape], dtype=object))
    if voxels <= MAX_VOXELS:
        return
    size = "x".join(str(int(n)) for n in shape)
    raise InputError(
        f"{source}: the header claims {size} voxels ({voxels:.3g} voxels, "
        f"{voxels * max(itemsize, 1) / 1e9:.3g} GB), more than the {MAX_VOXELS:.3g} Hermes reads; "
        "the header is probably corrupt (re-export the image), or crop/downsample the scan"
    )


#: Where each format keeps the voxel spacing, for messages about a bad spacing.
SPACING_FIELDS = {
    "nifti": "pixdim / srow_x..z",
    "nrrd": "space directions",
    "mha": "ElementSpacing",
    "dicom": "PixelSpacing (0028,0030) and the slice positions (0020,0032)",
    "mgh": "delta (voxel size)",
    "analyze": "pixdim",
    "minc": "step",
}


def spacing_field(meta: ImageMeta) -> str:
    """The header field that holds ``meta``'s voxel spacing, named for a message."""
    return SPACING_FIELDS.get(meta.format, "voxel spacing")
