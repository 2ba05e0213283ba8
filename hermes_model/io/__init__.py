"""Reading and writing images: the only package that touches image files.

``meta``       ``ImageMeta`` (the geometry) and the checks every reader shares
``nifti``      NIfTI read and write (the only output format of images)
``itk``        NRRD and MetaImage (SimpleITK)
``formats``    FreeSurfer MGH/MGZ, Analyze, MINC (nibabel)
``dicom``      DICOM series (SimpleITK/GDCM) with slice-position checks
``dicom_out``  DICOM SEG and RT Structure Set out
``cases``      which paths are cases, and their names
``atomic``     every output written whole or not at all

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

from pathlib import Path

import numpy as np

from hermes_model.errors import InputError
from hermes_model.io.atomic import write_bytes_atomically
from hermes_model.io.cases import case_name, find_images, is_dicom_case
from hermes_model.io.dicom import is_dicom_file, read_dicom, series_uid_of
from hermes_model.io.formats import NIBABEL_SUFFIXES, read_nibabel
from hermes_model.io.itk import ITK_SUFFIXES, read_itk
from hermes_model.io.meta import ImageMeta
from hermes_model.io.nifti import NIFTI_SUFFIXES, read_nifti, write_image

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
            header that claims more than ``io.meta.MAX_VOXELS`` voxels (refused before any
            allocation).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the path (and the current folder)")
    if path.is_dir():
        return read_dicom(path, series_uid)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    suffix = path.suffix.lower()
    if suffix in ITK_SUFFIXES:
        return read_itk(path, ITK_SUFFIXES[suffix])
    if suffix in NIBABEL_SUFFIXES:
        return read_nibabel(path, NIBABEL_SUFFIXES[suffix])
    if is_dicom_file(path):
        return read_dicom(path.parent, series_uid or series_uid_of(path))
    raise InputError(
        f"{path}: unsupported file type {suffix or '(no suffix)'!r}; use NIfTI (.nii, .nii.gz), "
        "NRRD (.nrrd), MetaImage (.mha, .mhd), FreeSurfer (.mgz, .mgh), Analyze (.hdr + .img), "
        "MINC (.mnc) or a folder of DICOM files"
    )
