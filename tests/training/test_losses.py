"""BCE + Dice over valid tasks: values, masking, stability."""

from __future__ import annotations

import math

import pytest
import torch

from hermes_model.training.losses import bce_dice_loss


def test_value_matches_a_hand_computation() -> None:
    logits = torch.tensor([[[2.0, -1.0, 0.0, 3.0]]])  # (B=1, T=1, V=4)
    target = torch.tensor([[[1.0, 0.0, 1.0, 1.0]]])
    mask = torch.tensor([[True]])
    terms = bce_dice_loss(logits, target, mask, lambda_dice=0.5, smooth=1e-5)
    sig = [1 / (1 + math.exp(-x)) for x in (2.0, -1.0, 0.0, 3.0)]
    y = [1.0, 0.0, 1.0, 1.0]
    bce = -sum(t * math.log(p) + (1 - t) * math.log(1 - p) for p, t in zip(sig, y, strict=True)) / 4
    inter = sum(p * t for p, t in zip(sig, y, strict=True))
    dice = (2 * inter + 1e-5) / (sum(sig) + sum(y) + 1e-5)
    assert math.isclose(terms.bce.item(), bce, rel_tol=1e-5)
    assert math.isclose(terms.dice.item(), 1 - dice, rel_tol=1e-5)
    assert math.isclose(terms.total.item(), bce + 0.5 * (1 - dice), rel_tol=1e-5)


def test_padded_tasks_get_exactly_zero_gradient_and_change_nothing() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 6, 5, 4, generator=gen)
    targets = (torch.rand(3, 4, 6, 5, 4, generator=gen) > 0.7).to(torch.uint8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    padded = logits.clone()
    padded[~mask] = float("nan")  # whatever sits in a padded slot must not matter
    padded.requires_grad_(True)
    total = bce_dice_loss(padded, targets, mask).total
    total.backward()
    assert padded.grad is not None
    assert torch.all(padded.grad[~mask] == 0)
    assert torch.all(padded.grad[mask].abs().sum(dim=(1, 2, 3)) > 0)
    # Same value as the mean over the valid pairs computed one by one.
    per_pair = [
        bce_dice_loss(logits[b : b + 1, t : t + 1], targets[b : b + 1, t : t + 1],
                      torch.ones(1, 1, dtype=torch.bool)).total
        for b, t in mask.nonzero().tolist()
    ]  # fmt: skip
    assert torch.isclose(total.detach(), torch.stack(per_pair).mean(), rtol=1e-5)


def test_stable_for_extreme_logits_and_zero_for_a_perfect_prediction() -> None:
    target = torch.zeros(1, 2, 4, 4, 4)
    target[0, 0, 1:3, 1:3, 1:3] = 1
    logits = (target * 2 - 1) * 1e4
    terms = bce_dice_loss(logits, target, torch.ones(1, 2, dtype=torch.bool))
    assert torch.isfinite(terms.total)
    assert terms.total.item() < 1e-4
    wrong = bce_dice_loss(-logits, target, torch.ones(1, 2, dtype=torch.bool))
    assert torch.isfinite(wrong.total) and wrong.total.item() > 1e3


def test_no_valid_task_gives_zero_loss_and_zero_gradient() -> None:
    logits = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    terms = bce_dice_loss(logits, torch.zeros(2, 3, 4, 4, 4), torch.zeros(2, 3, dtype=torch.bool))
    terms.total.backward()
    assert terms.total.item() == 0.0
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_batch_dice_pools_each_task_over_its_valid_samples() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 2, 4, 4, 4, generator=gen)
    targets = (torch.rand(3, 2, 4, 4, 4, generator=gen) > 0.6).float()
    targets[1, 0] = 0  # an empty target: a whole "1 - 0" term per sample, diluted when pooled
    task_idx = torch.tensor([[0, 1], [0, 1], [2, -1]])
    mask = torch.tensor([[True, True], [True, True], [True, False]])
    terms = bce_dice_loss(logits, targets, mask, smooth=1e-5, task_idx=task_idx, reduction="batch")
    p = torch.sigmoid(logits)

    def pooled(pairs: list[tuple[int, int]]) -> float:
        inter = sum((p[b, t] * targets[b, t]).sum() for b, t in pairs)
        total = sum(p[b, t].sum() + targets[b, t].sum() for b, t in pairs)
        return float(1 - (2 * inter + 1e-5) / (total + 1e-5))

    expected = (pooled([(0, 0), (1, 0)]) + pooled([(0, 1), (1, 1)]) + pooled([(2, 0)])) / 3
    assert math.isclose(terms.dice.item(), expected, rel_tol=1e-5)
    per_sample = bce_dice_loss(logits, targets, mask, smooth=1e-5)
    assert math.isclose(terms.bce.item(), per_sample.bce.item(), rel_tol=1e-6)
    assert terms.dice.item() < per_sample.dice.item()  # the empty target no longer counts as 1


def test_batch_dice_gives_unannotated_slots_no_gradient_and_needs_task_ids() -> None:
    logits = torch.randn(2, 2, 3, 3, 3, requires_grad=True)
    targets = torch.ones(2, 2, 3, 3, 3)
    mask = torch.tensor([[True, False], [True, True]])
    task_idx = torch.tensor([[0, 1], [0, 1]])
    bce_dice_loss(logits, targets, mask, task_idx=task_idx, reduction="batch").total.backward()
    assert logits.grad is not None
    assert torch.count_nonzero(logits.grad[0, 1]) == 0
    assert torch.count_nonzero(logits.grad[1, 1]) > 0
    with pytest.raises(ValueError, match="task_idx"):
        bce_dice_loss(logits, targets, mask, reduction="batch")
    with pytest.raises(ValueError, match="reduction"):
        bce_dice_loss(logits, targets, mask, reduction="mean")


def test_pos_weight_scales_the_foreground_bce_of_its_pairs_only() -> None:
    logits = torch.tensor([[[2.0, -1.0, 0.0, 3.0], [-50.0, -60.0, 1.0, 0.5]]])  # (1, 2, 4)
    targets = torch.tensor([[[1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    weighted = bce_dice_loss(logits, targets, mask, pos_weight=torch.tensor([[1.0, 20.0]]))
    plain = bce_dice_loss(logits, targets, mask)

    def softplus(x: float) -> float:  # -log(sigmoid(-x)), finite for large |x|
        return max(x, 0.0) + math.log1p(math.exp(-abs(x)))

    def bce(x: list[float], y: list[float], w: float) -> float:
        return sum(w * t * softplus(-v) + (1 - t) * softplus(v) for v, t in zip(x, y, strict=True))

    first = bce([2.0, -1.0, 0.0, 3.0], [1.0, 0.0, 1.0, 1.0], 1.0) / 4
    second = [-50.0, -60.0, 1.0, 0.5], [1.0, 0.0, 0.0, 1.0]
    assert math.isclose(weighted.bce.item(), (first + bce(*second, 20.0) / 4) / 2, rel_tol=1e-5)
    assert math.isclose(plain.bce.item(), (first + bce(*second, 1.0) / 4) / 2, rel_tol=1e-5)
    assert weighted.dice.item() == plain.dice.item()  # Dice is untouched


def test_pos_weight_pulls_a_saturated_task_harder_and_must_match_the_mask() -> None:
    logits = torch.full((1, 1, 64), -60.0, requires_grad=True)
    targets = torch.zeros(1, 1, 64)
    targets[0, 0, :2] = 1  # a small structure, 2 of 64 voxels
    mask = torch.ones(1, 1, dtype=torch.bool)
    bce_dice_loss(logits, targets, mask).total.backward()
    assert logits.grad is not None
    plain = logits.grad[0, 0, :2].clone()
    logits.grad = None
    bce_dice_loss(logits, targets, mask, pos_weight=torch.tensor([[20.0]])).total.backward()
    assert torch.allclose(logits.grad[0, 0, :2], 20 * plain)  # the Dice part is exactly zero
    assert logits.grad[0, 0, 2:].abs().max() < 1e-20  # background keeps weight 1: ~sigmoid(-60)
    with pytest.raises(ValueError, match="pos_weight"):
        bce_dice_loss(logits, targets, mask, pos_weight=torch.ones(2, 1))
