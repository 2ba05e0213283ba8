"""Before a scan is prepared: which modality it is, and whether its values can be segmented.

``detect_modality`` reads intensities (HU-like range with air near -1000 is CT); ``check_image``
refuses what no model can segment (non-finite voxels, a constant image, a "CT" whose values are
not Hounsfield units) and returns warnings for what it may segment badly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from hermes_model.errors import InputError
from hermes_model.io import ImageMeta
from hermes_model.pipeline.preprocess import MAX_PERCENTILE_SAMPLES

__all__ = ["detect_modality", "check_image"]


@dataclass(frozen=True)
class _Summary:
    """Robust intensity statistics of a strided sample of the voxels (padding excluded)."""

    low: float  # 0.5th percentile
    high: float  # 99.5th percentile
    air: float  # fraction in [-1100, -900]: air in HU
    soft: float  # fraction in [-200, 250]: fat and soft tissue in HU
    in_range: float  # fraction in [-1100, 3100]: anything plausible in HU
    # CT stored without its rescale intercept (HU + 1024): air near 0, soft tissue near 1050,
    # and few voxels in [274, 724] (HU -750..-300: only partial-volume lung). MR fills that gap.
    shifted_air: float  # fraction in [-100, 124]
    shifted_soft: float  # fraction in [824, 1274]
    shifted_gap: float  # fraction in [274, 724]


def _summary(array: np.ndarray, max_samples: int = MAX_PERCENTILE_SAMPLES) -> _Summary:
    flat = array.ravel(order="K")
    flat = flat[:: max(1, math.ceil(flat.size / max_samples)) | 1].astype(np.float32)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return _Summary(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    minimum = float(flat.min())
    if minimum < -1100 and np.mean(flat == minimum) > 0.001:
        flat = flat[flat != minimum]  # outside-the-scan padding (-2048, -3024, ...)
    low, high = np.percentile(flat, [0.5, 99.5]) if flat.size else (minimum, minimum)

    def fraction(lo: float, hi: float) -> float:
        return float(np.mean((flat >= lo) & (flat <= hi))) if flat.size else 0.0

    return _Summary(
        low=float(low),
        high=float(high),
        air=fraction(-1100, -900),
        soft=fraction(-200, 250),
        in_range=fraction(-1100, 3100),
        shifted_air=fraction(-100, 124),
        shifted_soft=fraction(824, 1274),
        shifted_gap=fraction(274, 724),
    )


def _looks_like_unrescaled_ct(s: _Summary) -> bool:
    return (
        s.air < 0.005 and s.shifted_air >= 0.02 and s.shifted_soft >= 0.1 and s.shifted_gap <= 0.15
    )


def _looks_like_hu(s: _Summary) -> float:
    """Confidence (0-1) that the intensities are CT Hounsfield units; 0 when they are not."""
    if s.in_range < 0.95 or s.high - s.low < 50:
        return 0.0
    # Soft tissue judged among the voxels that are not air: a small body in a wide field (a
    # head-and-neck CT: 93% air, 5% soft tissue) is as much HU as a full abdomen.
    soft_in_body = s.soft / max(1.0 - s.air, 1e-6)
    if (
        s.air >= 0.01
        and s.low <= -800
        and (s.soft >= 0.05 or (s.soft >= 0.01 and soft_in_body >= 0.3))
    ):
        return 0.8 + 0.19 * min(1.0, s.air / 0.1)
    if s.air > 0.0 and s.soft >= 0.3:
        return 0.7
    if -300 <= s.low <= -50 and s.soft >= 0.6 and s.high - s.low > 200:
        return 0.55  # a crop with fat but no air
    return 0.0


def detect_modality(array: np.ndarray, meta: ImageMeta) -> tuple[str, float]:
    """("ct", "mr" or "pet", confidence 0-1): the DICOM Modality tag (PT: pet), else the
    intensities (ct or mr).

    CT in Hounsfield units has air near -1000 and many voxels in the fat/soft-tissue range
    (-200..250); anything else is taken as MR, with lower confidence when the values are already
    normalised (span < 50). Intensities that look like CT stored without its rescale intercept
    (HU + 1024) give "ct" with confidence 0.6, so that ``check_image`` explains the fix.
    """
    tag = (meta.modality_tag or "").upper()
    if tag == "CT":
        return "ct", 1.0
    if tag in ("MR", "MRI"):
        return "mr", 1.0
    if tag == "PT":
        return "pet", 1.0
    s = _summary(array)
    ct = _looks_like_hu(s)
    if ct > 0.0:
        return "ct", round(ct, 3)
    if _looks_like_unrescaled_ct(s):
        return "ct", 0.6  # check_image then explains how to convert to HU
    if s.high - s.low < 50:
        return "mr", 0.6
    return "mr", 0.9 if s.low >= -10 else 0.75


def check_image(array: np.ndarray, meta: ImageMeta, modality: str) -> list[str]:
    """Pre-flight checks before segmenting: raise on unusable images, return soft warnings.

    Raises InputError for non-finite voxels, a constant image, and a CT ("ct") whose values are
    not Hounsfield units (stored without rescale, already normalised, or another scale).
    Warnings (one line each): the reader's geometry notes (``meta.notes``), MR whose values look
    like HU, a DICOM modality other than CT/MR, thick or few slices, a strongly oblique scan, a
    NIfTI header without orientation.
    """
    source = meta.source
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InputError(
                f"{source}: {bad} of {array.size} voxels are NaN or infinite; replace them (e.g. "
                "with the background value) and save the image again"
            )
    low, high = array.min(), array.max()
    if low == high:
        raise InputError(
            f"{source}: every voxel has the value {low}; the image is empty or was exported "
            "wrongly: export it again from the original data"
        )
    s = _summary(array)
    if modality == "ct":
        _check_hounsfield(s, source)
    warnings = list(meta.notes)
    if modality != "ct" and _looks_like_hu(s) >= 0.8:
        warnings.append(
            f"{source}: intensities look like CT in Hounsfield units (air near -1000) although "
            "the modality is MR; pass --modality ct if this is a CT"
        )
    if meta.modality_tag and meta.modality_tag not in ("CT", "MR", "PT"):
        warnings.append(
            f"{source}: DICOM modality is {meta.modality_tag}; Hermes knows CT, MR and PET "
            f"only, and processes it as {modality.upper()}"
        )
    spacing = np.array(meta.spacing)
    if spacing.max() / spacing.min() > 3.0:
        warnings.append(
            f"{source}: anisotropic voxels ({' x '.join(f'{v:.3g}' for v in spacing)} mm); "
            f"structures thinner than {spacing.max():.3g} mm along the thick axis may be missed"
        )
    if min(meta.shape) < 8:
        warnings.append(
            f"{source}: only {min(meta.shape)} voxels along one axis (shape {meta.shape}); "
            "results near the volume's edges are unreliable"
        )
    angle = float(np.degrees(np.max(nib.affines.obliquity(meta.affine))))
    if angle > 10.0:
        warnings.append(
            f"{source}: oblique scan ({angle:.1f} degrees "
            "from the nearest anatomical axes); it is segmented in its own voxel grid"
        )
    if meta.qform_code == 0 and meta.sform_code == 0:
        warnings.append(
            f"{source}: NIfTI header without orientation (qform_code = sform_code = 0): "
            "left/right may be wrong; fix the header (e.g. re-export with dcm2niix)"
        )
    return warnings


def _check_hounsfield(s: _Summary, source: str) -> None:
    """InputError when a CT's values are not Hounsfield units."""
    window = f"0.5-99.5th percentile {s.low:.4g} to {s.high:.4g}"
    if s.high - s.low < 50:
        raise InputError(
            f"{source}: CT values span only {window}: already normalised, not Hounsfield "
            "units; pass the original CT in HU (air -1000, water 0)"
        )
    if _looks_like_unrescaled_ct(s):
        raise InputError(
            f"{source}: looks like a CT stored without its rescale ({window}; air near 0, soft "
            "tissue near 1000-1100): convert to HU with the DICOM rescale slope/intercept (HU = "
            "value * slope + intercept, often intercept -1024), or pass --modality mr if it is MR"
        )
    if _looks_like_hu(s) == 0.0:
        raise InputError(
            f"{source}: CT values are not Hounsfield units ({window}; expected air near -1000 "
            "and soft tissue near 0-100): rescale to HU, or pass --modality mr if it is MR"
        )
