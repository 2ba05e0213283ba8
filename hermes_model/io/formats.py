"""Readers for the brain-MR formats that nibabel reads (part of :mod:`hermes_model.io`).

- FreeSurfer MGH/MGZ (``.mgh``, ``.mgz``);
- Analyze 7.5 / SPM and NIfTI-1 pairs (``.hdr`` + ``.img``);
- MINC1 (netCDF) and MINC2 (HDF5; needs ``h5py``: ``pip install hermes-seg[minc]``) (``.mnc``).

Geometry is nibabel's own voxel-to-RAS+ affine for each format (``img.affine``), so a mask written
by Hermes lies on the voxels nibabel would show, world coordinate for world coordinate. Analyze
has no orientation field; nibabel (like SPM) assumes a left-right flipped (LAS) layout.

Every reader refuses a header that claims an absurd number of voxels before any array is
allocated (``meta.check_claimed_size``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from hermes_model.errors import InputError
from hermes_model.io.meta import check_claimed_size

if TYPE_CHECKING:
    from hermes_model.io.meta import ImageMeta

__all__ = ["NIBABEL_SUFFIXES", "read_nibabel"]

#: Suffix -> format name recorded in ``ImageMeta.format``.
NIBABEL_SUFFIXES = {
    ".mgz": "mgh",
    ".mgh": "mgh",
    ".hdr": "analyze",
    ".img": "analyze",
    ".mnc": "minc",
}


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
    from hermes_model.io.meta import READ_ERRORS, one_line

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
            f"{path}: reading MINC2 (HDF5) files needs h5py ({one_line(error)}); install it "
            "with `pip install hermes-seg[minc]` (or `pip install h5py`)"
        ) from error
    except (*READ_ERRORS, KeyError, IndexError) as error:
        raise InputError(
            f"{path}: not a readable {fmt.upper()} image ({one_line(error)}); check that the "
            "file is complete, or re-export it as NIfTI (.nii.gz)"
        ) from error


def read_nibabel(path: Path, fmt: str) -> tuple[np.ndarray, ImageMeta]:
    """Read an MGH/MGZ, Analyze/NIfTI-pair or MINC file (``fmt`` from :data:`NIBABEL_SUFFIXES`).

    Returns ``(array, meta)`` like :func:`hermes_model.io.read_image`: (I, J, K) native-order
    array (float32 for float or scaled data), ``meta.affine`` = nibabel's ``img.affine``.
    """
    from hermes_model.io import meta as geometry
    from hermes_model.io.nifti import read_nifti

    source = str(path)
    img = _load(path, fmt)
    if isinstance(img, nib.Nifti1Pair | nib.Nifti2Pair):  # a NIfTI .hdr/.img pair
        header_file = path.with_suffix(".hdr")
        return read_nifti(header_file if header_file.is_file() else path.with_suffix(".HDR"))
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
    shape = geometry.check_spatial_shape(claimed, source)
    try:
        raw = np.asarray(img.dataobj).reshape(shape)
    except (*geometry.READ_ERRORS, KeyError, IndexError) as error:
        raise InputError(
            f"{source}: the image data cannot be read ({geometry.one_line(error)}); the file is "
            "probably truncated or corrupt: re-export it"
        ) from error
    if not raw.dtype.isnative:
        raw = raw.astype(raw.dtype.newbyteorder("="))
    array = geometry.as_float32_if_float(raw)
    meta = geometry.ImageMeta.from_affine(np.asarray(img.affine), shape, source=source, format=fmt)
    return array, meta
