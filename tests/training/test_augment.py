"""Batched augmentation: image and targets stay aligned, binary, reproducible."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hermes_model.tasks.pairs import NO_PARTNER
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


# -- left-right mirroring of paired tasks (issue 27) ------------------------------------------

#: model task rows: 0 parotid_right, 1 parotid_left, 2 larynx (no side)
PAIRED_TASKS = ["openkbp/parotid_right", "openkbp/parotid_left", "openkbp/larynx"]
MIRROR_LR = AugmentConfig(
    p_spatial=0.0, p_intensity={"ct": 0.0, "mr": 0.0}, mirror_axes=(0,), p_mirror=1.0
)


class _SideOracle(torch.nn.Module):
    """Knows anatomy, not flips: a bright voxel on the patient's right half (RAS axis 0 runs
    towards R, so the high half) is right parotid, on the left half left parotid; the larynx is
    every bright voxel. Logits +-8."""

    def forward(self, image: torch.Tensor, task_idx: torch.Tensor) -> torch.Tensor:
        bright = image[:, 0] > 0
        half = image.shape[2] // 2
        right = torch.zeros_like(bright)
        right[:, half:] = True
        per_row = {0: bright & right, 1: bright & ~right, 2: bright}
        out = torch.stack(
            [torch.stack([per_row[int(t)][b] for t in task_idx[b]]) for b in range(len(task_idx))]
        )
        return out.float() * 16 - 8


def _paired_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One patient: right parotid high on axis 0, left parotid low, larynx the union."""
    targets = torch.zeros(2, 3, 16, 12, 10, dtype=torch.uint8)
    targets[:, 0, 10:14, 3:8, 2:6] = 1
    targets[:, 1, 2:5, 5:10, 4:9] = 1
    targets[:, 2] = targets[:, 0] | targets[:, 1]
    image = targets[:, 2:3].float() * 2 - 1
    return image, targets, torch.tensor([[0, 1, 2], [1, 0, 2]])


def test_a_mirrored_image_with_swapped_tasks_gives_the_same_loss_as_the_original() -> None:
    from hermes_model.training.augment import mirror_partners
    from hermes_model.training.losses import bce_dice_loss

    image, targets, task_idx = _paired_batch()
    targets_by_slot = torch.stack([targets[b, task_idx[b]] for b in range(2)])
    mask = torch.ones(2, 3, dtype=torch.bool)
    oracle = _SideOracle()
    original = bce_dice_loss(oracle(image, task_idx), targets_by_slot, mask).total
    assert float(original) < 0.01  # the oracle is right on the original

    partners, axis = mirror_partners(MIRROR_LR, "RAS", PAIRED_TASKS)
    assert partners == [1, 0, 2] and axis == 0
    aug = Augmenter(MIRROR_LR, (16, 12, 10), seed=0, partners=partners, left_right_axis=axis)
    out_image, out_targets, out_tasks = aug.with_tasks(
        image.clone(), targets_by_slot.clone(), torch.zeros(2, dtype=torch.long), task_idx
    )
    assert torch.equal(out_image, image.flip(2))  # p_mirror 1: every sample mirrored
    assert torch.equal(out_tasks, torch.tensor([[1, 0, 2], [0, 1, 2]]))  # sides swapped
    mirrored = bce_dice_loss(oracle(out_image, out_tasks), out_targets, mask).total
    torch.testing.assert_close(mirrored, original)
    # Without the swap, the flipped left parotid would be taught as a left one on the right.
    unswapped = bce_dice_loss(oracle(out_image, task_idx), out_targets, mask).total
    assert float(unswapped) > 1.0


def test_left_right_mirroring_needs_every_partner() -> None:
    from hermes_model.errors import ConfigError
    from hermes_model.training.augment import mirror_partners

    with pytest.raises(ConfigError, match="structseg/lung_right"):
        mirror_partners(MIRROR_LR, "RAS", ["structseg/lung_left", "structseg/heart"])
    # Mirroring only front-back, or no lateral task at all: nothing to swap, nothing refused.
    front_back = dataclasses.replace(MIRROR_LR, mirror_axes=(1,))
    assert mirror_partners(front_back, "RAS", ["structseg/lung_left"]) == ([NO_PARTNER], 0)
    assert mirror_partners(MIRROR_LR, "RAS", ["hippocampus/anterior"]) == (None, 0)
    aug = Augmenter(MIRROR_LR, (16, 12, 10), partners=[1, 0, 2])
    image, targets, _ = _paired_batch()
    with pytest.raises(ValueError, match="with_tasks"):
        aug(image, targets, torch.zeros(2, dtype=torch.long))
