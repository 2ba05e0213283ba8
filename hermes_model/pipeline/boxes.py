"""Restoring a task's probabilities only inside the box where its mask can be on (CPU).

``preprocess.restore`` resamples a whole map to the input grid: on a 512 x 512 x 300 CT that
is 79M voxels per task, seconds per task on a CPU, although an organ fills a few percent of
the scan. When only the mask is kept (no probability maps), the voxels outside the bounding box
of the model-grid voxels with a probability near the threshold cannot reach it (a trilinear
value is a convex combination of its 8 taps), so they need not be computed.

Inside the box, :func:`restore_box` gives the very float32 values that torch's CPU kernel
(``upsample_trilinear3d``, ``align_corners=False``) gives there, bit for bit, so masks, counts
and label maps are unchanged: the kernel's source index per output voxel is
``fma(scale, o + 0.5, -0.5)`` in float32 (``scale = float32(n_in) / n_out``), its weights
``l1 = clamp(src - floor(src), 0, 1)`` and ``l0 = 1 - l1``, and each axis (last first) combines
two taps as ``fma(t0, l0, t1 * l1)``. The weights' fused multiply-add is computed exactly here
(product in float64, a two-sum for the rounding error, one rounding to float32); the taps' is
``torch.addcmul``, fused on the CPU builds of torch (AVX2, AVX-512), 18x faster than the
float64 form. Because another torch build could compute differently, :func:`matches_kernel`
checks the whole computation against the kernel once per process on small random volumes
(unfused arithmetic differs there in about 1 voxel of 6); callers fall back to the full
restore when it does not match.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["matches_kernel", "restore_box"]

Box = tuple[slice, slice, slice]


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 ``a * b + c`` with one rounding (as a fused multiply-add), exactly."""
    product = a.double().mul_(b.double())  # exact: 24 + 24 significant bits fit in 53
    total = product + c
    # Two-sum: the exact error of the float64 sum. It matters only when ``total`` lies on a
    # float32 rounding midpoint; one float64 step toward the error breaks that tie the way the
    # exact sum would, and changes nothing otherwise (no step where the error is 0).
    back = total - product
    error = product.sub_(total - back).add_(c - back)
    return total.nextafter(total + error).float()


def _table(n_in: int, n_out: int, start: int, stop: int) -> tuple[torch.Tensor, ...]:
    """Taps ``(i0, i1)`` and weights ``(l0, l1)`` of output voxels ``start:stop`` of an axis."""
    out = torch.arange(start, stop)
    if n_in == n_out:  # the kernel copies: one tap, weight 1
        return out, out, torch.ones(len(out)), torch.zeros(len(out))
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out
    source = _fma(scale.expand(len(out)), out.float() + 0.5, torch.full((len(out),), -0.5))
    source = source.clamp(min=0)
    i0 = source.floor().long().clamp(max=n_in - 1)
    l1 = (source - i0.float()).clamp(0, 1)
    i1 = i0 + (i0 < n_in - 1).long()
    return i0, i1, 1.0 - l1, l1


def _output_range(n_in: int, n_out: int, low: int, high: int) -> tuple[int, int]:
    """The output voxels of an axis with a tap in source voxels ``low..high`` (inclusive)."""
    i0, i1, _, _ = _table(n_in, n_out, 0, n_out)
    hit = ((i0 >= low) & (i0 <= high)) | ((i1 >= low) & (i1 <= high))
    where = torch.nonzero(hit).flatten()
    return int(where[0]), int(where[-1]) + 1


def _resample_box(source: torch.Tensor, shape: tuple[int, ...], box: Box) -> torch.Tensor:
    """The kernel's values of ``source`` (I, J, K) resampled to ``shape``, inside ``box``."""
    tables = [
        _table(n, m, s.start, s.stop) for n, m, s in zip(source.shape, shape, box, strict=True)
    ]
    starts = [int(t[0].min()) for t in tables]
    stops = [int(t[1].max()) + 1 for t in tables]
    values = source[starts[0] : stops[0], starts[1] : stops[1], starts[2] : stops[2]]
    for axis in (2, 1, 0):  # the kernel's nesting: the last axis innermost
        if source.shape[axis] == shape[axis]:
            continue  # the kernel copies; ``values`` is cropped to the box on this axis already
        i0, i1, l0, l1 = tables[axis]
        view = [1, 1, 1]
        view[axis] = -1
        first = values.index_select(axis, i0 - starts[axis])
        second = values.index_select(axis, i1 - starts[axis])
        values = torch.addcmul(second * l1.view(view), first, l0.view(view))
    return values


def restore_box(
    source: torch.Tensor, shape: tuple[int, ...], threshold: float
) -> tuple[Box, torch.Tensor] | None:
    """Where ``source`` resampled to ``shape`` can reach ``threshold``, and its values there.

    Args:
        source: (I', J', K') float32 on the CPU, in the input's axis order (already reoriented
            back), on the model grid.
        shape: (I, J, K) input grid.
        threshold: the mask threshold (``float16(value) >= threshold``).

    Returns ``(box, values)``: the box (slices of the input grid) outside which every resampled
    value is below ``threshold`` even after rounding to float16, and the float32 values inside,
    equal to ``F.interpolate(..., mode="trilinear")`` there; None when no voxel comes near.
    """
    # 1% and 1e-6 below: more than float16 rounding of value and threshold (2 x 2**-11) and the
    # few float32 roundings of the interpolation.
    low = threshold * (0.99 if threshold > 0 else 1.01) - 1e-6
    near = (source >= low).view(torch.uint8)  # uint8 max-reductions are vectorised; any() not
    plane = near.amax(dim=2)
    hits = [torch.nonzero(plane.amax(dim=1)).flatten(), torch.nonzero(plane.amax(dim=0)).flatten()]
    if len(hits[0]) == 0:
        return None
    i, j = hits[0], hits[1]
    column = near[int(i[0]) : int(i[-1]) + 1, int(j[0]) : int(j[-1]) + 1].amax(dim=(0, 1))
    hits.append(torch.nonzero(column).flatten())
    ranges = [
        _output_range(source.shape[a], shape[a], int(hits[a][0]), int(hits[a][-1]))
        for a in range(3)
    ]
    box = (slice(*ranges[0]), slice(*ranges[1]), slice(*ranges[2]))
    return box, _resample_box(source, shape, box)


@functools.cache
def matches_kernel() -> bool:
    """Whether :func:`restore_box` equals this torch build's CPU kernel (checked once)."""
    generator = torch.Generator().manual_seed(0)
    for size, shape in (((9, 7, 12), (23, 7, 5)), ((17, 11, 6), (40, 25, 6))):
        source = torch.rand(size, generator=generator)
        full = F.interpolate(source[None, None], size=shape, mode="trilinear", align_corners=False)
        box = (slice(1, shape[0] - 2), slice(0, shape[1]), slice(2, shape[2]))
        if not torch.equal(_resample_box(source, shape, box), full[0, 0][box]):
            return False
    return True
