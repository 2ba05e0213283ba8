"""From a scan to network input and back: orientation, resampling, normalisation.

Everything after the one host-to-device copy in ``prepare`` runs in torch on the tensor's device.

Grid conventions (the same in both directions, so ``restore`` is the exact inverse of ``prepare``):
- Reorientation to the canonical axes (``PreprocessConfig.orientation``, "RAS") is a pure axis
  permutation plus flips chosen by ``nibabel.orientations.io_orientation``: no interpolation. For
  an oblique scan each array axis goes to the world axis closest to it; the residual rotation
  stays in the affine (``Prepared.affine``), so the world position of every voxel is exact.
- Resampling works on voxel centres, with ``interpolate(mode="trilinear", align_corners=False)``:
  along an axis of ``n`` voxels of ``s`` mm, the output has ``m = floor(n * s / t + 0.5)``
  voxels (``t`` the target spacing, at least 1) and output voxel ``o`` samples input coordinate
  ``(o + 0.5) * n / m - 0.5``. The field of view (outer voxel edges) is kept; the effective
  spacing ``s * n / m`` differs from ``t`` by the rounding of ``m`` (``Prepared.spacing``).
  Outside the input the edge values are repeated (torch's clamping).
- Normalisation on the resampled grid: CT is clipped to ``ct_clip`` HU, MR to its
  ``mr_percentiles``; then z-scored with the mean and standard deviation of the clipped volume.
  Percentiles are exact order statistics (``torch.kthvalue``, numpy's "linear" interpolation) of
  at most ``MAX_PERCENTILE_SAMPLES`` voxels taken at a fixed odd stride through the volume, so
  every device computes the same numbers; ``torch.quantile`` is limited to 2**24 elements and
  sorts, and a full kthvalue on a 20M-voxel CT takes seconds on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from hermes_model.config import PreprocessConfig
from hermes_model.errors import InputError, TaskError
from hermes_model.io import ImageMeta
from hermes_model.io.meta import MAX_VOXELS, spacing_field
from hermes_model.tasks import MODALITIES

__all__ = [
    "MODALITIES",
    "MAX_PERCENTILE_SAMPLES",
    "Reorientation",
    "Intensity",
    "Prepared",
    "reorientation",
    "resampled_shape",
    "check_grid",
    "resample",
    "percentiles",
    "normalise",
    "prepare",
    "restore",
    "prepare_label",
]

# MODALITIES (the registry's rows): CT is clipped in HU, every other row (PET, MR) at percentiles.
MAX_PERCENTILE_SAMPLES = 2**20
#: The longest scan along any axis, in mm (10 m: any body, with a wide margin). A header that
#: claims more has its spacing in the wrong units or corrupt.
MAX_EXTENT_MM = 10_000.0


@dataclass(frozen=True, eq=False)
class Reorientation:
    """An exact axis permutation plus flips from an (i, j, k) array to the canonical axes.

    Canonical axis ``c`` is input axis ``permutation[c]``; input axis ``a`` is reversed first
    when ``flips[a]``.
    """

    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    input_shape: tuple[int, int, int]
    affine: np.ndarray  # voxel -> world of the canonical array (input resolution)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the canonical array."""
        s = self.input_shape
        return (s[self.permutation[0]], s[self.permutation[1]], s[self.permutation[2]])

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """(..., I, J, K) input order -> (..., D, H, W) canonical order (a view when no flip)."""
        lead = tensor.dim() - 3
        flipped = [lead + a for a in range(3) if self.flips[a]]
        if flipped:
            tensor = tensor.flip(flipped)
        return tensor.permute(*range(lead), *(lead + a for a in self.permutation))

    def invert(self, tensor: torch.Tensor) -> torch.Tensor:
        """(..., D, H, W) canonical order -> (..., I, J, K) input order."""
        lead = tensor.dim() - 3
        inverse = [self.permutation.index(a) for a in range(3)]
        tensor = tensor.permute(*range(lead), *(lead + c for c in inverse))
        flipped = [lead + a for a in range(3) if self.flips[a]]
        return tensor.flip(flipped) if flipped else tensor


def reorientation(
    affine: np.ndarray, shape: tuple[int, int, int], orientation: str = "RAS"
) -> Reorientation:
    """The permutation and flips that bring an array with this affine to ``orientation``."""
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(tuple(orientation)))
    permutation = tuple(int(a) for a in np.argsort(transform[:, 0]))
    flips = tuple(bool(f < 0) for f in transform[:, 1])
    canonical = np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(transform, shape)
    canonical.setflags(write=False)
    return Reorientation(
        permutation=(permutation[0], permutation[1], permutation[2]),
        flips=(flips[0], flips[1], flips[2]),
        input_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        affine=canonical,
    )


def resampled_shape(
    shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]
) -> tuple[int, ...]:
    """Voxels per axis after resampling: ``floor(n * s / t + 0.5)``, at least 1."""
    return tuple(
        max(1, math.floor(n * s / t + 0.5)) for n, s, t in zip(shape, spacing, target, strict=True)
    )


def check_grid(meta: ImageMeta, target: tuple[float, ...], size: tuple[int, ...]) -> None:
    """Refuse, before anything is allocated, a scan longer than :data:`MAX_EXTENT_MM` along an
    axis, or whose grid resampled to ``target`` mm (``size`` voxels) exceeds ``MAX_VOXELS``.

    Raises InputError naming the header field that holds the spacing.
    """
    field, spacing = spacing_field(meta), [float(f"{s:.4g}") for s in meta.spacing]
    extent = [n * s for n, s in zip(meta.shape, meta.spacing, strict=True)]
    axis = int(np.argmax(extent))
    if extent[axis] > MAX_EXTENT_MM:
        raise InputError(
            f"{meta.source}: the voxel spacing {spacing} mm, from the header's {field}, makes the "
            f"scan {extent[axis] / 1000:.3g} m long along axis {axis}, more than the "
            f"{MAX_EXTENT_MM / 1000:g} m any scan covers; the spacing is corrupt or not in mm: "
            f"fix {field}"
        )
    voxels = math.prod(size)
    if voxels > MAX_VOXELS:
        raise InputError(
            f"{meta.source}: resampling its {'x'.join(map(str, meta.shape))} voxels of "
            f"{spacing} mm (the header's {field}) to the model's {list(target)} mm grid needs "
            f"{voxels:.3g} voxels, more than the {MAX_VOXELS:.3g} Hermes allocates; check {field} "
            "(units mm), or crop the scan"
        )


def resample(tensor: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Trilinear resampling of (C, D, H, W) to (C, *size) on voxel centres (see module doc).

    Floating dtypes are kept (float16/bfloat16 included); other dtypes become float32.
    """
    if tuple(tensor.shape[-3:]) == tuple(size):
        return tensor
    if not tensor.is_floating_point():
        tensor = tensor.float()
    return F.interpolate(tensor[None], size=tuple(size), mode="trilinear", align_corners=False)[0]


def percentiles(
    tensor: torch.Tensor, qs: tuple[float, ...], max_samples: int = MAX_PERCENTILE_SAMPLES
) -> list[float]:
    """Percentiles (0-100) of a tensor's values, numpy "linear" style, on the tensor's device.

    Uses at most ``max_samples`` values, taken at a fixed odd stride through the flattened tensor
    (odd, so that the stride does not lock onto even row lengths).
    """
    flat = tensor.reshape(-1)
    if flat.numel() > max_samples:
        step = math.ceil(flat.numel() / max_samples) | 1
        flat = flat[::step]
    n = flat.numel()
    out = []
    for q in qs:
        position = q / 100.0 * (n - 1)
        below = math.floor(position)
        low = flat.kthvalue(below + 1).values
        high = flat.kthvalue(min(below + 2, n)).values if position > below else low
        out.append(float(low) + (position - below) * (float(high) - float(low)))
    return out


@dataclass(frozen=True)
class Intensity:
    """The intensity mapping that ``normalise`` applied: ``(clip(x, low, high) - mean) / std``."""

    low: float
    high: float
    mean: float
    std: float


def normalise(
    tensor: torch.Tensor, modality: str, config: PreprocessConfig
) -> tuple[torch.Tensor, Intensity]:
    """CT: clip to ``config.ct_clip`` HU; MR/PET: clip to ``config.mr_percentiles``; then
    z-score, with mean and std over the whole volume or, for ``config.norm_region == "body"``,
    over the body's voxels only (the clip window still comes from the whole volume).

    Works on a float tensor of any shape, on its device. A constant (clipped) volume has std 0;
    it is then divided by 1 so that the result is all zeros rather than NaN.
    """
    if modality == "ct":
        low, high = config.ct_clip
    elif modality in MODALITIES:
        low, high = percentiles(tensor, config.mr_percentiles)
    else:
        raise TaskError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    region = _body(tensor, modality, low, high) if config.norm_region == "body" else None
    tensor = tensor.clamp(low, high)
    if region is not None and int(region.sum()) > 1:
        std, mean = torch.std_mean(tensor[region], correction=0)
    else:
        std, mean = torch.std_mean(tensor, correction=0)
    std_value = float(std) if float(std) > 1e-6 else 1.0
    tensor = (tensor - mean) / std_value
    return tensor, Intensity(float(low), float(high), float(mean), std_value)


def _body(tensor: torch.Tensor, modality: str, low: float, high: float) -> torch.Tensor:
    """Voxels inside the body, for ``norm_region = "body"`` statistics: CT above -500 HU (air
    and the table's surroundings out); PET/MR above 10% of the clip window (background out)."""
    threshold = -500.0 if modality == "ct" else low + 0.1 * (high - low)
    return tensor > threshold


@dataclass(eq=False)
class Prepared:
    """A scan as the network sees it, and what is needed to map outputs back onto the scan.

    Attributes:
        image: (1, D, H, W) float32 on the device: canonical axes, resampled, normalised.
        meta: geometry of the input scan.
        modality: "ct" or "mr", as normalised.
        reorientation: input (i, j, k) -> canonical axes, with the canonical input-grid affine.
        affine: (4, 4) voxel -> RAS mm of ``image``'s grid.
        spacing: effective voxel size of ``image`` in mm (D, H, W axes).
        intensity: the clip window and z-score statistics used.
    """

    image: torch.Tensor
    meta: ImageMeta
    modality: str
    reorientation: Reorientation
    affine: np.ndarray
    spacing: tuple[float, float, float]
    intensity: Intensity


def _to_tensor(array: np.ndarray, device: torch.device | str) -> tuple[torch.Tensor, list[int]]:
    """The array on ``device`` in its native dtype, without a host copy when it is contiguous.

    Returns the tensor and, for each tensor dim, the array axis it holds: an F-ordered array
    (nibabel, and io's ITK arrays) is read as its C-ordered transpose, axes (2, 1, 0).
    """
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype.kind == "u" and array.dtype.itemsize > 1:
        array = array.astype(np.int64 if array.dtype.itemsize >= 4 else np.int32)
    elif array.dtype == bool:
        array = array.astype(np.uint8)
    if array.flags.c_contiguous:
        axes = [0, 1, 2]
    elif array.flags.f_contiguous:
        array, axes = array.T, [2, 1, 0]
    else:
        array, axes = np.ascontiguousarray(array), [0, 1, 2]
    return torch.from_numpy(array).to(device), axes


def prepare(
    array: np.ndarray,
    meta: ImageMeta,
    config: PreprocessConfig,
    modality: str,
    device: torch.device | str = "cpu",
) -> Prepared:
    """Reorient, resample and normalise a scan for the network, on ``device``.

    The array (shape ``meta.shape``, any real dtype) is copied to the device once, in its native
    dtype; resampling runs in the array's axis order and the cheap flips and permutation on the
    resampled tensor (both commute exactly with resampling on the symmetric voxel-centre grid).
    """
    if modality not in MODALITIES:
        raise TaskError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    if tuple(array.shape) != tuple(meta.shape):
        raise ValueError(f"array shape {array.shape} does not match meta.shape {meta.shape}")
    orient = reorientation(meta.affine, meta.shape, config.orientation)
    canonical_spacing = np.linalg.norm(orient.affine[:3, :3], axis=0)
    size = resampled_shape(orient.shape, tuple(canonical_spacing), config.spacing)
    check_grid(meta, config.spacing, size)
    tensor, axes = _to_tensor(array, device)
    # Canonical axis c is input axis permutation[c]; give each tensor dim its target size.
    size_of_input_axis = {orient.permutation[c]: size[c] for c in range(3)}
    tensor = resample(tensor[None].float(), tuple(size_of_input_axis[a] for a in axes))[0]
    tensor = tensor.permute(*(axes.index(a) for a in range(3)))  # back to (i, j, k) order
    tensor = orient.apply(tensor).contiguous()
    tensor, intensity = normalise(tensor, modality, config)
    scale = np.array(orient.shape, dtype=np.float64) / np.array(size, dtype=np.float64)
    grid = np.eye(4)
    grid[:3, :3] = np.diag(scale)
    grid[:3, 3] = (scale - 1.0) / 2.0
    affine = orient.affine @ grid
    affine.setflags(write=False)
    spacing = canonical_spacing * scale
    return Prepared(
        image=tensor[None],
        meta=meta,
        modality=modality,
        reorientation=orient,
        affine=affine,
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        intensity=intensity,
    )


def restore(probabilities: torch.Tensor, prepared: Prepared) -> torch.Tensor:
    """Map (T, D, H, W) maps on ``prepared.image``'s grid back onto the input grid.

    Undoes the flips and permutation on the small tensor, then resamples trilinearly to the
    input shape (the exact inverse grid mapping of ``prepare``), on the tensor's device and in
    its floating dtype. Returns (T, *meta.shape), indexed like the array ``read_image`` gave.
    Thresholding is the caller's job.
    """
    expected = tuple(prepared.image.shape[1:])
    if probabilities.dim() != 4 or tuple(probabilities.shape[1:]) != expected:
        raise ValueError(
            f"expected (T, {', '.join(map(str, expected))}), got {probabilities.shape}"
        )
    tensor = prepared.reorientation.invert(probabilities)
    return resample(tensor, prepared.meta.shape).contiguous()


def prepare_label(label: np.ndarray, meta: ImageMeta, prepared: Prepared) -> torch.Tensor:
    """A label map on ``prepared.image``'s grid, by nearest neighbour (for training targets).

    ``label`` (shape ``meta.shape``, integer values 0..255) must lie on the image's grid. It is
    reoriented like the image, then sampled with ``nearest-exact``: output voxel ``o`` takes the
    canonical input voxel ``floor((o + 0.5) * n / m)``, the nearest one to its centre on the same
    voxel-centre grid as the image. Returns (D, H, W) uint8 on the image's device.
    """
    if tuple(label.shape) != tuple(meta.shape):
        raise ValueError(f"label shape {label.shape} does not match its meta {meta.shape}")
    if meta.shape != prepared.meta.shape or not np.allclose(
        meta.affine, prepared.meta.affine, rtol=0, atol=1e-2
    ):
        raise InputError(
            f"{meta.source}: the label is not on the grid of its image {prepared.meta.source} "
            "(shape or affine differ); resample the label onto the image grid"
        )
    tensor, axes = _to_tensor(label, prepared.image.device)
    tensor = tensor.permute(*(axes.index(a) for a in range(3)))
    tensor = prepared.reorientation.apply(tensor)
    size = tuple(prepared.image.shape[1:])
    if tuple(tensor.shape) != size:
        # float32 holds 0..255 exactly; nearest interpolation of integer tensors is not
        # implemented on every device.
        tensor = F.interpolate(tensor[None, None].float(), size=size, mode="nearest-exact")[0, 0]
    return tensor.to(torch.uint8).contiguous()
