"""Reading and writing images: the only module that touches image files.

Geometry convention (the NIfTI one, used everywhere in Hermes):
- the returned array is indexed ``(i, j, k)``: axis 0 is the fastest-varying axis on disk (NIfTI
  ``dim[1]``, ITK's x index, the column index within a DICOM slice);
- ``ImageMeta.affine`` maps a voxel *centre* ``(i, j, k, 1)`` to RAS+ world millimetres: +x
  towards the patient's Right, +y Anterior, +z Superior. DICOM and ITK store LPS+ coordinates
  (+x Left, +y Posterior); ``world_RAS = diag(-1, -1, 1) @ world_LPS``, exactly, in both directions;
- ``ImageMeta.orientation`` uses nibabel's axis codes: the direction each array axis increases
  towards ("LPS": axis 0 towards the patient's Left, axis 1 Posterior, axis 2 Superior).

Output is always NIfTI-1 (``.nii.gz`` or ``.nii``) with the input's geometry: for NIfTI input the
qform/sform fields are copied bit for bit; for NRRD/MHA/DICOM input the RAS affine is written as
both qform and sform (code 1, scanner), rounded to float32 by the format (relative error about
6e-8: under 0.0001 mm for coordinates within a metre).
"""

from __future__ import annotations

import gzip
import os
import re
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from hermes_model.errors import InputError, OutputError
from hermes_model.io.dicom import _dicom_info, _is_dicom_file, _read_dicom, _series_uid_of
from hermes_model.io.formats import NIBABEL_SUFFIXES, check_claimed_size, read_nibabel

__all__ = [
    "ImageMeta",
    "read_image",
    "write_image",
    "write_bytes_atomically",
    "find_images",
    "case_name",
    "is_dicom_case",
    "NIFTI_SUFFIXES",
    "ITK_SUFFIXES",
    "NIBABEL_SUFFIXES",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = {".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha", ".mhd": "mha"}
_IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, *ITK_SUFFIXES, *NIBABEL_SUFFIXES)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
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
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError)
_ITK_ERRORS = (RuntimeError, OSError)


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
            disagree; ``preprocess.check_image`` reports them as warnings.

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
        _check_affine(affine, source)
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


def read_image(path: str | Path, series_uid: str | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Read a 3D image and its geometry.

    Args:
        path: a ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``, FreeSurfer
            ``.mgz``/``.mgh``, Analyze or NIfTI-pair ``.hdr``/``.img``, MINC ``.mnc`` file, a
            folder of DICOM files, or one DICOM file (its series is read from the file's folder).
        series_uid: the DICOM series to read when the folder holds several; by default the one
            with the most slices.

    Returns:
        ``(array, meta)``: array of shape ``meta.shape`` indexed (i, j, k), native integer dtype
        or float32 (float64 data and NIfTI scl_slope/scl_inter scaling give float32).

    Raises:
        InputError: missing, unreadable, corrupt, 2D/4D or geometrically invalid image, or a
            header that claims more than ``io_formats.MAX_VOXELS`` voxels (refused before any
            allocation).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the path (and the current folder)")
    if path.is_dir():
        return _read_dicom(path, series_uid)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return _read_nifti(path)
    suffix = path.suffix.lower()
    if suffix in ITK_SUFFIXES:
        return _read_itk(path, ITK_SUFFIXES[suffix])
    if suffix in NIBABEL_SUFFIXES:
        return read_nibabel(path, NIBABEL_SUFFIXES[suffix])
    if _is_dicom_file(path):
        return _read_dicom(path.parent, series_uid or _series_uid_of(path))
    raise InputError(
        f"{path}: unsupported file type {suffix or '(no suffix)'!r}; use NIfTI (.nii, .nii.gz), "
        "NRRD (.nrrd), MetaImage (.mha, .mhd), FreeSurfer (.mgz, .mgh), Analyze (.hdr + .img), "
        "MINC (.mnc) or a folder of DICOM files"
    )


def _one_line(error: BaseException, limit: int = 160) -> str:
    """An exception's text on one line (ITK messages span many lines)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = " ".join(lines) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_affine(affine: np.ndarray, source: str) -> None:
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


def _check_spatial_shape(shape: tuple[int, ...], source: str) -> tuple[int, int, int]:
    """The 3D shape, after dropping trailing singleton dimensions; InputError for 2D/4D."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise InputError(
            f"{source}: {len(dims)}D image of shape {tuple(shape)}; Hermes segments one 3D volume "
            "at a time: split the time points/channels into separate 3D files"
        )
    if len(dims) < 3 or min(dims) == 1:
        raise InputError(
            f"{source}: 2D image of shape {tuple(shape)}; Hermes segments 3D volumes: pass the "
            "whole volume (all slices of the series), not a single slice"
        )
    return dims[0], dims[1], dims[2]


def _as_float32_if_float(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "f" and array.dtype != np.float32:
        return array.astype(np.float32)
    return array


def _nifti_affine_mm(header: nib.Nifti1Header) -> np.ndarray:
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


def _read_nifti(path: Path) -> tuple[np.ndarray, ImageMeta]:
    source = str(path)
    try:
        img = nib.load(path, mmap=False)
    except _READ_ERRORS as error:
        raise InputError(
            f"{source}: not a readable NIfTI file ({_one_line(error)}); check that it is a "
            "complete .nii/.nii.gz image (re-download or re-export it)"
        ) from error
    if not isinstance(img, nib.Nifti1Pair | nib.Nifti2Pair):  # Nifti1Image is a Nifti1Pair
        raise InputError(f"{source}: not a NIfTI image; re-export it as .nii.gz")
    header = img.header
    claimed = tuple(int(n) for n in img.shape)
    check_claimed_size(claimed, np.dtype(header.get_data_dtype()).itemsize, source)
    shape = _check_spatial_shape(claimed, source)
    _check_raw_pixdim(path, header)
    try:
        affine = _nifti_affine_mm(header)
    except HeaderDataError as error:
        raise InputError(
            f"{source}: invalid geometry in the NIfTI header ({_one_line(error)}); fix the "
            "pixdim/qform/sform fields (e.g. re-export the image)"
        ) from error
    try:
        proxy: Any = img.dataobj
        raw = np.asarray(proxy.get_unscaled()).reshape(shape, order="F")
    except _READ_ERRORS as error:
        raise InputError(
            f"{source}: the image data cannot be read ({_one_line(error)}); the file is "
            "probably truncated or corrupt: re-download or re-export it"
        ) from error
    # nibabel moves scl_slope/scl_inter from the header into the array proxy on load.
    slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    if not raw.dtype.isnative:  # big-endian files: torch and most tools want native order
        raw = raw.astype(raw.dtype.newbyteorder("="))
    if slope != 1.0 or inter != 0.0:
        array = raw.astype(np.float32) * np.float32(slope) + np.float32(inter)
    else:
        array = _as_float32_if_float(raw)
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


def _itk_meta(image: Any, source: str, fmt: str, **extra: Any) -> tuple[tuple[int, ...], ImageMeta]:
    """Shape (i, j, k) and meta of a SimpleITK image; ITK's LPS geometry converted to RAS."""
    size = tuple(int(n) for n in image.GetSize())
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(
            f"{source}: multi-component image ({image.GetNumberOfComponentsPerPixel()} values per "
            "voxel, e.g. RGB or vector); pass a scalar 3D image (one channel per file)"
        )
    shape = _check_spatial_shape(size, source)
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
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ origin
    return size, ImageMeta.from_affine(affine, shape, source=source, format=fmt, **extra)


def _itk_array(image: Any) -> np.ndarray:
    """The voxels indexed (i, j, k): ITK's array is (z, y, x), so reverse the axes (no copy)."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    array = array.reshape(array.shape[-3:]) if array.ndim > 3 else array
    return _as_float32_if_float(array.transpose(2, 1, 0))


_SEPARATORS = str.maketrans("(),", "   ")


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


def _read_itk(path: Path, fmt: str) -> tuple[np.ndarray, ImageMeta]:
    import SimpleITK as sitk

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
            f"{source}: not a readable {fmt.upper()} image ({_one_line(error)}); check that the "
            "file (and a .mhd's data file) is complete, or re-export it"
        ) from error
    _, meta = _itk_meta(image, source, fmt)
    return _itk_array(image), meta


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
    path = Path(path)
    array = np.asarray(array)
    if array.shape[:3] != tuple(meta.shape) or array.ndim not in (3, 4):
        raise ValueError(f"array shape {array.shape} does not match the image shape {meta.shape}")
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise OutputError(
            f"{path}: outputs are written as NIfTI; name the file *.nii.gz (or *.nii)"
        )
    data = array.astype(_output_dtype(array, dtype), copy=False)
    img = nib.Nifti1Image(data, affine=None, header=_nifti_header(meta, data))
    img.header.set_data_dtype(data.dtype)
    payload = img.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=compression_level, mtime=0)
    write_bytes_atomically(path, payload)
    return path


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


def _nifti_header(meta: ImageMeta, data: np.ndarray) -> nib.Nifti1Header:
    """A header whose geometry is the input's: raw fields copied, or the RAS affine (code 1)."""
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    if meta.nifti_fields is not None:
        for name, value in meta.nifti_fields.items():
            header[name] = value
        header.set_data_shape(data.shape)  # pixdim[1:4] is kept; only dims change
        if np.allclose(_nifti_affine_mm(header), meta.affine, rtol=0, atol=1e-6):
            return header
        header = nib.Nifti1Header()
        header.set_data_shape(data.shape)
    header.set_xyzt_units(xyz="mm")
    header.set_qform(meta.affine, code=1)
    header.set_sform(meta.affine, code=1)
    return header


def write_bytes_atomically(path: str | os.PathLike[str], payload: bytes) -> Path:
    """Write to a temporary file in the same folder, then rename: never a half-written file.

    Every output of Hermes (images, legends, previews, tables) goes through here.
    Raises OutputError naming the path and the fix.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"{path.parent}: cannot create the output folder, so cannot write {path.name} "
            f"({_one_line(error)}); choose a writable output folder"
        ) from error
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        # os.open honours the umask (mkstemp would make the mask readable by its owner only).
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(
            f"{path}: cannot write the output ({_one_line(error)}); check that the folder is "
            "writable, not full, and that the path is not a folder"
        ) from error
    return path


def _is_dicom_folder(folder: Path) -> bool:
    return any(
        p.is_file() and not p.name.startswith(".") and not _is_image_file(p) and _is_dicom_file(p)
        for p in sorted(folder.iterdir())
    )


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_IMAGE_SUFFIXES)


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
            elif _is_dicom_file(path):
                key = (path.resolve().parent, _dicom_info(path).get("uid", ""))
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
    return path.is_dir() or (not _is_image_file(path) and _is_dicom_file(path))


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def case_name(path: str | Path) -> str:
    """The case's name: file name without its image suffix; a DICOM folder's own name.

    One DICOM file names its series: ``<SeriesDescription>_s<SeriesNumber>`` (characters other
    than letters, digits, ``.``, ``_``, ``-`` become ``_``), else the SeriesInstanceUID, else
    the file name.
    """
    path = Path(path)
    lower = path.name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[: -len(suffix)]
    if path.is_file() and _is_dicom_file(path):
        info = _dicom_info(path)
        parts = [info.get("description", ""), f"s{info['number']}" if info.get("number") else ""]
        name = _UNSAFE.sub("_", "_".join(p for p in parts if p)).strip("_.")
        return name or info.get("uid") or path.stem
    return path.name
