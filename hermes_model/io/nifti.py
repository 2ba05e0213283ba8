"""NIfTI read and write: the input's geometry header fields kept bit for bit on output."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from hermes_model.errors import InputError, OutputError
from hermes_model.io import gz
from hermes_model.io.atomic import write_bytes_atomically
from hermes_model.io.meta import (
    READ_ERRORS,
    ImageMeta,
    as_float32_if_float,
    check_claimed_size,
    check_spatial_shape,
    one_line,
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Raw NIfTI-1 header fields that fix the geometry; copied verbatim so that output = input geometry.
_NIFTI_GEOMETRY_FIELDS = (
    "pixdim",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "qform_code",
    "sform_code",
    "xyzt_units",
)
_NIFTI_UNIT_TO_MM = {0: 1.0, 1: 1000.0, 2: 1.0, 3: 0.001}  # unknown (assume mm), m, mm, micron


def nifti_affine_mm(header: nib.Nifti1Header) -> np.ndarray:
    """The header's best affine in mm (NIfTI spatial units may be m or µm)."""
    units = int(header["xyzt_units"]) & 0x07
    scale = _NIFTI_UNIT_TO_MM.get(units, 1.0)
    affine = np.array(header.get_best_affine(), dtype=np.float64)
    if scale != 1.0:
        affine[:3, :] *= scale
    return affine


def _check_raw_pixdim(path: Path, header: nib.Nifti1Header) -> None:
    """Refuse zero/negative pixdim where it defines the geometry (qform, or no transform).

    nibabel silently replaces negative pixdim by its absolute value on load while the NIfTI C
    library (ITK, FSL) uses 1.0 instead, so such a file has no single geometry.
    """
    if int(header["sform_code"]) > 0 and int(header["qform_code"]) == 0:
        return
    if isinstance(header, nib.Nifti2Header):
        return
    with nib.openers.ImageOpener(str(path)) as handle:
        raw = nib.Nifti1Header(handle.read(348), check=False)
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise InputError(
            f"{path}: invalid voxel spacing pixdim[1:4] = {pixdim.tolist()} in the NIfTI header "
            "(zero, negative or non-finite); fix the header's pixdim (must be > 0 mm)"
        )


def _load(path: Path) -> Any:
    """The NIfTI image at ``path``; a .nii.gz is decoded in one call of ``gz`` (isal when
    installed), twice as fast as nibabel's streamed gzip. InputError when truncated."""
    if not path.name.lower().endswith(".gz"):
        return nib.load(path, mmap=False)
    compressed = path.read_bytes()
    if not gz.is_gzip(compressed):
        raise InputError(
            f"{path}: not a readable NIfTI file (not gzip-compressed, though named .gz); "
            "check that it is a complete .nii/.nii.gz image (re-download or re-export it)"
        )
    try:
        raw = gz.decompress(compressed)
    except gz.DECODE_ERRORS as error:
        raise InputError(
            f"{path}: the image data cannot be read ({one_line(error)}); the file is "
            "probably truncated or corrupt: re-download or re-export it"
        ) from error
    del compressed
    # nib.load's choice of class: NIfTI-2 headers are 540 bytes long, NIfTI-1 ones 348.
    size = int.from_bytes(raw[:4], "little")
    nifti2 = 540 in (size, int.from_bytes(raw[:4], "big"))
    klass = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    holder = nib.FileHolder(str(path), BytesIO(raw))
    return klass.from_file_map({"header": holder, "image": holder})


def read_nifti(path: Path) -> tuple[np.ndarray, ImageMeta]:
    source = str(path)
    try:
        img = _load(path)
    except READ_ERRORS as error:
        raise InputError(
            f"{source}: not a readable NIfTI file ({one_line(error)}); check that it is a "
            "complete .nii/.nii.gz image (re-download or re-export it)"
        ) from error
    if not isinstance(img, nib.Nifti1Pair | nib.Nifti2Pair):  # Nifti1Image is a Nifti1Pair
        raise InputError(f"{source}: not a NIfTI image; re-export it as .nii.gz")
    header = img.header
    claimed = tuple(int(n) for n in img.shape)
    check_claimed_size(claimed, np.dtype(header.get_data_dtype()).itemsize, source)
    shape = check_spatial_shape(claimed, source)
    _check_raw_pixdim(path, header)
    try:
        affine = nifti_affine_mm(header)
    except HeaderDataError as error:
        raise InputError(
            f"{source}: invalid geometry in the NIfTI header ({one_line(error)}); fix the "
            "pixdim/qform/sform fields (e.g. re-export the image)"
        ) from error
    try:
        proxy: Any = img.dataobj
        raw = np.asarray(proxy.get_unscaled()).reshape(shape, order="F")
    except READ_ERRORS as error:
        raise InputError(
            f"{source}: the image data cannot be read ({one_line(error)}); the file is "
            "probably truncated or corrupt: re-download or re-export it"
        ) from error
    # nibabel moves scl_slope/scl_inter from the header into the array proxy on load.
    slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    if not raw.dtype.isnative:  # big-endian files: torch and most tools want native order
        raw = raw.astype(raw.dtype.newbyteorder("="))
    if slope != 1.0 or inter != 0.0:
        array = raw.astype(np.float32) * np.float32(slope) + np.float32(inter)
    else:
        array = as_float32_if_float(raw)
    fields = {}
    if isinstance(header, nib.Nifti1Header) and not isinstance(img, nib.Nifti2Pair):
        fields = {name: np.array(header[name]) for name in _NIFTI_GEOMETRY_FIELDS}
    meta = ImageMeta.from_affine(
        affine,
        shape,
        source=source,
        format="nifti",
        qform_code=int(header["qform_code"]),
        sform_code=int(header["sform_code"]),
        nifti_fields=fields or None,
        notes=_transform_notes(header, shape, source),
    )
    return array, meta


def _transform_notes(
    header: nib.Nifti1Header, shape: tuple[int, ...], source: str
) -> tuple[str, ...]:
    """A note when qform and sform are both set but put the volume's corners in different places."""
    if int(header["qform_code"]) <= 0 or int(header["sform_code"]) <= 0:
        return ()
    try:
        qform, sform = header.get_qform(), header.get_sform()
    except HeaderDataError:
        return ()
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape[:3]], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones((1, corners.shape[1]))])
    distance = float(np.abs((qform - sform) @ corners).max())
    if distance <= 0.1:
        return ()
    return (
        f"{source}: the NIfTI qform and sform disagree by up to {distance:.2f} mm; Hermes uses the "
        "sform (as nibabel does; some ITK-based tools use the qform) and writes both unchanged",
    )


def write_image(
    array: np.ndarray,
    meta: ImageMeta,
    path: str | Path,
    *,
    dtype: np.dtype | type | str | None = None,
    compression_level: int = 1,
) -> Path:
    """Write ``array`` as NIfTI-1 on exactly the grid of ``meta``, atomically.

    Args:
        array: (I, J, K) indexed like the array ``read_image`` returned (or (I, J, K, C) for C
            maps on the same grid). bool is written as uint8.
        meta: the geometry of the image the array belongs to.
        path: output file, ``.nii.gz`` (gzip, ``compression_level``) or ``.nii``.
        dtype: on-disk dtype; default the array's (int64 -> int32 when the values fit).

    Returns the path written. Raises OutputError when the file cannot be written.
    """
    payload = nifti_bytes(array, meta, path, dtype=dtype, compression_level=compression_level)
    write_bytes_atomically(path, payload)
    return Path(path)


def nifti_bytes(
    array: np.ndarray,
    meta: ImageMeta,
    path: str | Path,
    *,
    dtype: np.dtype | type | str | None = None,
    compression_level: int = 1,
) -> bytes:
    """The bytes :func:`write_image` writes to ``path`` (its name decides gzip or not)."""
    path = Path(path)
    array = np.asarray(array)
    if array.shape[:3] != tuple(meta.shape) or array.ndim not in (3, 4):
        raise ValueError(f"array shape {array.shape} does not match the image shape {meta.shape}")
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise OutputError(
            f"{path}: outputs are written as NIfTI; name the file *.nii.gz (or *.nii)"
        )
    out_dtype = _output_dtype(array, dtype)
    if array.dtype == bool and out_dtype == np.uint8:
        data = array.view(np.uint8)  # False/True are the bytes 0/1: no copy
    else:
        data = array.astype(out_dtype, copy=False)
    # nibabel writes voxels in Fortran order; from a C-ordered array it gathers them slice by
    # slice (seconds for a 512 x 512 x 300 map), from a Fortran-ordered one it copies.
    img = nib.Nifti1Image(fortran_order(data), affine=None, header=nifti_header(meta, data))
    img.header.set_data_dtype(data.dtype)
    payload = img.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gz.compress(payload, compression_level)
    return payload


def fortran_order(array: np.ndarray, block: int = 64) -> np.ndarray:
    """``array`` with the same values in Fortran (column-major) memory order: itself when it is
    already, else a copy made in ``block`` x ``block`` tiles of the first two axes, which stay
    in the CPU cache (2-3x faster than ``np.asfortranarray`` on a 512 x 512 x 300 volume)."""
    if array.flags.f_contiguous or array.ndim != 3:
        return np.asfortranarray(array)
    rows, columns, _ = array.shape
    out = np.empty(array.shape[::-1], dtype=array.dtype)
    for i in range(0, rows, block):
        for j in range(0, columns, block):
            out[:, j : j + block, i : i + block] = array[i : i + block, j : j + block, :].T
    return out.T


def _output_dtype(array: np.ndarray, dtype: Any) -> np.dtype:
    if dtype is not None:
        return np.dtype(dtype)
    if array.dtype == bool:
        return np.dtype(np.uint8)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        info = np.iinfo(np.int32)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return np.dtype(np.int32)
    return array.dtype


def nifti_header(meta: ImageMeta, data: np.ndarray) -> nib.Nifti1Header:
    """A header whose geometry is the input's: raw fields copied, or the RAS affine (code 1)."""
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    if meta.nifti_fields is not None:
        for name, value in meta.nifti_fields.items():
            header[name] = value
        header.set_data_shape(data.shape)  # pixdim[1:4] is kept; only dims change
        if np.allclose(nifti_affine_mm(header), meta.affine, rtol=0, atol=1e-6):
            return header
        header = nib.Nifti1Header()
        header.set_data_shape(data.shape)
    header.set_xyzt_units(xyz="mm")
    header.set_qform(meta.affine, code=1)
    header.set_sform(meta.affine, code=1)
    return header
