"""Readers for the brain-MR formats that nibabel reads (part of :mod:`hermes_model.io`).

- FreeSurfer MGH/MGZ (``.mgh``, ``.mgz``);
- Analyze 7.5 / SPM and NIfTI-1 pairs (``.hdr`` + ``.img``);
- MINC1 (netCDF) and MINC2 (HDF5; needs ``h5py``: ``pip install hermes-seg[minc]``) (``.mnc``).

Geometry is nibabel's own voxel-to-RAS+ affine for each format (``img.affine``), so a mask written
by Hermes lies on the voxels nibabel would show, world coordinate for world coordinate. Analyze
has no orientation field; nibabel (like SPM) assumes a left-right flipped (LAS) layout.

Also here: :func:`check_claimed_size`, the guard that refuses a header claiming an absurd number
of voxels before any array is allocated.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from hermes_model.errors import InputError

if TYPE_CHECKING:
    from hermes_model.io import ImageMeta

__all__ = ["NIBABEL_SUFFIXES", "MAX_VOXELS", "check_claimed_size", "read_nibabel"]

#: Suffix -> format name recorded in ``ImageMeta.format``.
NIBABEL_SUFFIXES = {
    ".mgz": "mgh",
    ".mgh": "mgh",
    ".hdr": "analyze",
    ".img": "analyze",
    ".mnc": "minc",
}
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


def _check_mgh_size(path: Path) -> None:
    """The size guard from the raw MGH header: version, then 4 big-endian int32 dims."""
    try:
        with nib.openers.ImageOpener(str(path)) as handle:
            head = handle.read(20)
    except OSError:
        return  # nibabel's load names the problem
    if len(head) == 20:
        dims = np.frombuffer(head[4:20], ">i4")
        check_claimed_size(tuple(int(n) for n in dims), 4, str(path))


def _load(path: Path, fmt: str) -> Any:
    from hermes_model.io import _READ_ERRORS, _one_line

    if fmt == "analyze":
        for suffix in (".hdr", ".img"):
            candidates = (path.with_suffix(suffix), path.with_suffix(suffix.upper()))
            if not any(c.is_file() for c in candidates):
                raise InputError(
                    f"{path}: the Analyze/NIfTI pair lacks its {suffix} file "
                    f"({candidates[0].name}); keep the .hdr and .img files together in one folder"
                )
    if fmt == "mgh":  # nibabel seeks past the claimed data to the footer while loading
        _check_mgh_size(path)
    try:
        return nib.load(path, mmap=False)
    except ImportError as error:  # MINC2 is HDF5: nibabel needs h5py
        raise InputError(
            f"{path}: reading MINC2 (HDF5) files needs h5py ({_one_line(error)}); install it "
            "with `pip install hermes-seg[minc]` (or `pip install h5py`)"
        ) from error
    except (*_READ_ERRORS, KeyError, IndexError) as error:
        raise InputError(
            f"{path}: not a readable {fmt.upper()} image ({_one_line(error)}); check that the "
            "file is complete, or re-export it as NIfTI (.nii.gz)"
        ) from error


def read_nibabel(path: Path, fmt: str) -> tuple[np.ndarray, ImageMeta]:
    """Read an MGH/MGZ, Analyze/NIfTI-pair or MINC file (``fmt`` from :data:`NIBABEL_SUFFIXES`).

    Returns ``(array, meta)`` like :func:`hermes_model.io.read_image`: (I, J, K) native-order
    array (float32 for float or scaled data), ``meta.affine`` = nibabel's ``img.affine``.
    """
    from hermes_model import io

    source = str(path)
    img = _load(path, fmt)
    if isinstance(img, nib.Nifti1Pair | nib.Nifti2Pair):  # a NIfTI .hdr/.img pair
        header_file = path.with_suffix(".hdr")
        return io._read_nifti(header_file if header_file.is_file() else path.with_suffix(".HDR"))
    if isinstance(img, nib.Minc1Image | nib.Minc2Image):
        fmt = "minc"
    elif isinstance(img, nib.MGHImage):
        fmt = "mgh"
    elif isinstance(img, nib.AnalyzeImage):
        fmt = "analyze"
    else:
        raise InputError(
            f"{source}: nibabel reads this file as {type(img).__name__}, not as an MGH, Analyze "
            "or MINC image; re-export it as NIfTI (.nii.gz)"
        )
    claimed = tuple(int(n) for n in img.shape)
    check_claimed_size(claimed, np.dtype(img.get_data_dtype()).itemsize, source)
    shape = io._check_spatial_shape(claimed, source)
    try:
        raw = np.asarray(img.dataobj).reshape(shape)
    except (*io._READ_ERRORS, KeyError, IndexError) as error:
        raise InputError(
            f"{source}: the image data cannot be read ({io._one_line(error)}); the file is "
            "probably truncated or corrupt: re-export it"
        ) from error
    if not raw.dtype.isnative:
        raw = raw.astype(raw.dtype.newbyteorder("="))
    array = io._as_float32_if_float(raw)
    meta = io.ImageMeta.from_affine(np.asarray(img.affine), shape, source=source, format=fmt)
    return array, meta
