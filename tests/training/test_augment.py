"""Batched augmentation: image and targets stay aligned, binary, reproducible."""

from __future__ import annotations

import dataclasses

import torch

from hermes_model.training.augment import Augmenter
from hermes_model.training.settings import AugmentConfig

SPATIAL_ONLY = AugmentConfig(
    p_spatial=1.0, rotation_deg=30.0, scale_range=(0.7, 1.4), crop_margin=4,
    p_intensity={"ct": 0.0, "mr": 0.0}, mirror_axes=(), p_mirror=0.0,
)  # fmt: skip


def _blobs(batch: int, size: tuple[int, int, int]) -> torch.Tensor:
    """(B, 2, *size) binary targets: an off-centre L-shaped block and a bar (not symmetric)."""
    targets = torch.zeros(batch, 2, *size, dtype=torch.uint8)
    targets[:, 0, 6:16, 5:12, 8:14] = 1
    targets[:, 0, 6:10, 12:18, 8:14] = 1
    targets[:, 1, 14:19, 4:20, 2:7] = 1
    return targets


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_rotated_and_scaled_image_still_coincides_with_its_labels() -> None:
    targets = _blobs(4, (24, 24, 24))
    modality = torch.zeros(4, dtype=torch.int64)
    centre = targets[:, :, 4:20, 4:20, 4:20]
    for channel in (0, 1):
        aug = Augmenter(SPATIAL_ONLY, (16, 16, 16), seed=1)  # same seed: same transforms
        assert aug.input_size == (24, 24, 24)
        image = targets[:, channel : channel + 1].float() * 2.0 - 1.0
        out_image, out_targets = aug(image, targets, modality)
        assert out_image.shape == (4, 1, 16, 16, 16) and out_targets.shape == (4, 2, 16, 16, 16)
        assert out_targets.dtype == torch.uint8 and set(out_targets.unique().tolist()) <= {0, 1}
        assert out_image.min() >= -1.0 - 1e-5  # outside the input: the sample's minimum
        for b in range(4):
            assert not torch.equal(out_targets[b], centre[b])  # it did move
            # The image is the label; thresholding the warped image gives the warped label.
            assert _dice(out_image[b, 0] > 0.0, out_targets[b, channel]) > 0.95


def test_mirroring_flips_image_and_labels_together_exactly() -> None:
    config = dataclasses.replace(SPATIAL_ONLY, p_spatial=0.0, mirror_axes=(0, 1, 2), p_mirror=0.5)
    aug = Augmenter(config, (24, 24, 24), seed=0)
    assert aug.input_size == (24, 24, 24)  # no spatial transform: no margin
    targets = _blobs(6, (24, 24, 24))
    image = targets[:, :1].float() + 2 * targets[:, 1:].float()
    out_image, out_targets = aug(image, targets, torch.zeros(6, dtype=torch.int64))
    assert torch.equal(out_image, out_targets[:, :1].float() + 2 * out_targets[:, 1:].float())
    assert sum(not torch.equal(out_targets[b], targets[b]) for b in range(6)) >= 3


def test_intensity_changes_only_the_image_and_follows_the_modality() -> None:
    config = AugmentConfig(p_spatial=0.0, p_intensity={"ct": 0.0, "mr": 1.0}, mirror_axes=())
    aug = Augmenter(config, (12, 12, 12), seed=3, modalities=["ct", "mr"])
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, 1, 12, 12, 12, generator=gen)
    targets = _blobs(2, (12, 12, 12))
    out_image, out_targets = aug(image, targets, torch.tensor([0, 1]))
    assert torch.equal(out_targets, targets)
    assert torch.equal(out_image[0], image[0])  # CT sample: p = 0
    assert not torch.allclose(out_image[1], image[1])  # MR sample: p = 1
    assert torch.isfinite(out_image).all()


def test_seeded_and_resumable() -> None:
    config = dataclasses.replace(SPATIAL_ONLY, p_spatial=0.5, p_intensity={"ct": 0.5, "mr": 0.5})
    targets = _blobs(3, (24, 24, 24))
    image = targets[:, :1].float()
    modality = torch.tensor([0, 1, 0])
    a, b = Augmenter(config, (16, 16, 16), seed=7), Augmenter(config, (16, 16, 16), seed=7)
    first_a, first_b = a(image, targets, modality), b(image, targets, modality)
    assert torch.equal(first_a[0], first_b[0]) and torch.equal(first_a[1], first_b[1])
    state = a.state_dict()
    assert isinstance(state["generator"], torch.Tensor)
    expected = a(image, targets, modality)
    resumed = Augmenter(config, (16, 16, 16), seed=99)
    resumed.load_state_dict(state)
    again = resumed(image, targets, modality)
    assert torch.equal(again[0], expected[0]) and torch.equal(again[1], expected[1])


def test_disabled_is_a_centre_crop() -> None:
    config = dataclasses.replace(SPATIAL_ONLY, enabled=False)
    aug = Augmenter(config, (8, 8, 8))
    assert aug.input_size == (8, 8, 8)
    image = torch.randn(2, 1, 8, 8, 8)
    targets = _blobs(2, (8, 8, 8))
    out_image, out_targets = aug(image, targets, torch.zeros(2, dtype=torch.int64))
    assert torch.equal(out_image, image) and torch.equal(out_targets, targets)
