"""hermes_model.pipeline.boxes: restoring inside a task's box gives the kernel's values there, bit
for bit, and finalise's outputs do not change with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hermes_model.config import PreprocessConfig
from hermes_model.io import ImageMeta
from hermes_model.pipeline import boxes, postprocess
from hermes_model.pipeline.preprocess import prepare

# (source shape, input shape): up- and downsampling, an axis kept (the kernel copies it).
GRIDS = [
    ((13, 9, 11), (29, 17, 11)),
    ((20, 31, 8), (11, 47, 19)),
    ((7, 7, 30), (7, 25, 61)),
    ((34, 26, 22), (67, 51, 44)),
]


def blobs(shape: tuple[int, ...], n: int, seed: int = 0) -> torch.Tensor:
    """(n, *shape) float32 maps: a smooth bump per task, in [0, 1], centred at random."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij", sparse=True)
    out = np.empty((n, *shape), dtype=np.float32)
    for t in range(n):
        centre, radii = rng.uniform(-0.6, 0.6, 3), rng.uniform(0.15, 0.5, 3)
        radius = np.sqrt(
            sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
        )
        out[t] = 1.0 / (1.0 + np.exp((radius - 1.0) * rng.uniform(3, 12)))
    return torch.from_numpy(out)


def test_this_torch_build_matches_the_kernel() -> None:
    assert boxes.matches_kernel()


@pytest.mark.parametrize(("source_shape", "shape"), GRIDS)
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_restore_box_is_the_kernel_inside_and_below_threshold_outside(
    source_shape: tuple[int, ...], shape: tuple[int, ...], threshold: float
) -> None:
    for seed, source in enumerate(blobs(source_shape, 4, seed=len(shape))):
        full = F.interpolate(source[None, None], size=shape, mode="trilinear")[0, 0]
        on = full.half() >= threshold
        restored = boxes.restore_box(source, shape, threshold)
        if restored is None:
            assert not on.any(), seed
            continue
        box, values = restored
        assert values.dtype == torch.float32
        assert torch.equal(values, full[box]), seed  # bit for bit
        outside = on.clone()
        outside[box] = False
        assert not outside.any(), seed
        assert on[box].any()


def test_restore_box_of_a_map_far_below_threshold_is_none() -> None:
    assert boxes.restore_box(torch.full((5, 6, 7), 0.2), (9, 12, 14), 0.5) is None


def _prepared(affine: np.ndarray, shape: tuple[int, int, int]):
    meta = ImageMeta.from_affine(affine, shape)
    array = np.zeros(shape, dtype=np.float32)
    return prepare(array, meta, PreprocessConfig(spacing=(1.5, 1.5, 1.5)), "ct")


@pytest.mark.parametrize("name", ["flipped", "oblique", "anisotropic"])
def test_finalise_inside_boxes_equals_the_full_restore(name: str, request, monkeypatch) -> None:
    prepared = _prepared(request.getfixturevalue(f"{name}_affine"), (37, 29, 15))
    tasks = ["lits/liver", "amos/spleen", "lits/liver_tumor", "amos/pancreas"]
    probs = blobs(tuple(prepared.image.shape[1:]), len(tasks), seed=3)
    probs[3] *= 0.3  # a task nowhere near the threshold: an empty mask
    keep = {"amos/spleen"}
    fast = postprocess.finalise(probs, prepared, tasks, keep_probabilities=False, keep_largest=keep)
    with_maps = postprocess.finalise(probs, prepared, tasks, keep_largest=keep)
    monkeypatch.setattr(boxes, "matches_kernel", lambda: False)
    full = postprocess.finalise(probs, prepared, tasks, keep_probabilities=False, keep_largest=keep)
    for other in (with_maps, full):
        assert torch.equal(fast.masks, other.masks)
        assert torch.equal(fast.label_map, other.label_map)
        assert fast.voxel_counts == other.voxel_counts
    assert fast.voxel_counts["amos/pancreas"] == 0
    assert all(fast.voxel_counts[t] > 0 for t in tasks[:3])
    assert set(torch.unique(fast.label_map).tolist()) >= {0, 1, 3}
    # Written as NIfTI stores voxels: Fortran order, so the writer copies instead of gathering.
    assert fast.label_map.numpy().flags.f_contiguous
    assert fast.masks[0].numpy().flags.f_contiguous
    assert full.label_map.numpy().flags.c_contiguous  # the full CPU path is unchanged
