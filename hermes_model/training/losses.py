"""Segmentation loss: binary cross-entropy + lambda * soft Dice over the valid tasks only.

Every task is a binary problem (sigmoid per task, paper eq. 2-3). A batch mixes samples with
different numbers of tasks; padded task slots (``mask == False``) are dropped before any
arithmetic, so they contribute nothing and receive exactly zero gradient, even if their logits
are not finite. A task that the sample's case does not annotate (partial labels, the card's
``[annotated]``) is masked the same way: pass ``Batch.loss_mask``, not ``task_mask``.

Dice is computed per sample and per task, soft (on probabilities), with a small ``smooth``
(default 1e-5) added to numerator and denominator::

    dice = (2 * sum(p * g) + smooth) / (sum(p) + sum(g) + smooth)

With a tiny smooth an empty target gives a loss near 1 for any predicted foreground (so false
positives on a patch without the structure are penalised), and 0 only when the prediction is
empty too; it only guards against 0/0. The authors' code uses 1e-6 and an adaptive Tversky
weighting; this is the plain soft Dice of the paper's equation.

``dice_reduction="batch"`` pools the sums of each task over the batch's samples that annotate it
(nnU-Net's "batch Dice"), then averages over the tasks present in the batch. A patch without the
structure then costs a false positive only through the pooled denominator, instead of a whole
``1 - 0`` term: with per-sample Dice a small structure that is absent from most patches (OpenKBP's
oesophagus: 56 of 166 training cases contour it, median 272 voxels at 4 mm) is pushed towards an
empty prediction everywhere. The BCE term is the same in both modes.

``pos_weight`` (per (sample, task) pair, from the recipe's ``[loss] pos_weight`` table) scales
the BCE of a task's foreground voxels (``torch``'s ``pos_weight``). It is for a task whose
sigmoid has saturated towards "never": once its logits are far below zero the Dice gradient,
which flows through ``p * (1 - p)``, is gone, and only the BCE of its few foreground voxels
(one voxel in a few hundred of a patch) still pulls it back; raising their weight pulls harder.
Background voxels keep weight 1, so the Dice term still penalises false positives.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["DICE_REDUCTIONS", "LossTerms", "bce_dice_loss"]

DICE_REDUCTIONS = ("sample", "batch")


class LossTerms(NamedTuple):
    """``total = bce + lambda_dice * dice``; all scalars (``bce``/``dice`` detached)."""

    total: torch.Tensor
    bce: torch.Tensor
    dice: torch.Tensor


def bce_dice_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    lambda_dice: float = 1.0,
    smooth: float = 1e-5,
    *,
    task_idx: torch.Tensor | None = None,
    reduction: str = "sample",
    pos_weight: torch.Tensor | None = None,
) -> LossTerms:
    """BCE + lambda * Dice, averaged over the valid (sample, task) pairs.

    Args:
        logits: (B, T, D, H, W) raw scores, any float dtype (computed in float32).
        targets: (B, T, D, H, W) binary {0, 1}, any dtype.
        mask: (B, T) bool, True where the sample annotates task slot t: a real (not padded)
            slot whose task the sample's case annotates (``Batch.loss_mask``).
        lambda_dice: weight of the Dice term (paper: 1).
        smooth: Dice smoothing term.
        task_idx: (B, T) model task index per slot; needed (only) by ``reduction="batch"``.
        reduction: ``"sample"``: Dice per (sample, task) pair; ``"batch"``: per task, over the
            pooled voxels of the valid pairs of that task.
        pos_weight: (B, T) weight of each pair's foreground voxels in the BCE (None: 1).

    Returns:
        LossTerms. BCE is the voxel mean per (sample, task), then the mean over valid pairs; Dice
        loss is ``1 - dice`` per valid pair (per task with ``reduction="batch"``), then the
        mean. No valid pair gives a zero loss that still back-propagates (zeros) into
        ``logits``.
    """
    if logits.shape != targets.shape or logits.shape[:2] != mask.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and mask "
            f"{tuple(mask.shape)} must agree as (B, T, ...), (B, T, ...), (B, T)"
        )
    if reduction not in DICE_REDUCTIONS:
        raise ValueError(f"reduction must be one of {DICE_REDUCTIONS}, got {reduction!r}")
    if reduction == "batch" and (task_idx is None or task_idx.shape != mask.shape):
        raise ValueError("reduction='batch' needs task_idx of the same (B, T) shape as mask")
    if pos_weight is not None and pos_weight.shape != mask.shape:
        raise ValueError(f"pos_weight must be (B, T) like mask, got {tuple(pos_weight.shape)}")
    valid = mask.to(torch.bool)
    if not bool(valid.any()):
        zero = logits.sum() * 0.0
        return LossTerms(zero, zero.detach(), zero.detach())
    x = logits[valid].flatten(1).float()  # (N, V): only the valid pairs enter the graph
    y = targets[valid].flatten(1).float()
    weight = None if pos_weight is None else pos_weight.to(x.device)[valid].float()[:, None]
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none", pos_weight=weight)
    bce = bce.mean(dim=1)
    p = torch.sigmoid(x)
    inter, p_sum, y_sum = (p * y).sum(1), p.sum(1), y.sum(1)
    if reduction == "batch":
        assert task_idx is not None
        tasks, group = torch.unique(task_idx.to(valid.device)[valid], return_inverse=True)
        pooled = torch.zeros((3, len(tasks)), dtype=inter.dtype, device=inter.device)
        pooled = pooled.index_add(1, group, torch.stack((inter, p_sum, y_sum)))
        inter, p_sum, y_sum = pooled[0], pooled[1], pooled[2]
    dice = (2 * inter + smooth) / (p_sum + y_sum + smooth)
    bce_mean, dice_loss = bce.mean(), (1 - dice).mean()
    total = bce_mean + lambda_dice * dice_loss
    return LossTerms(total, bce_mean.detach(), dice_loss.detach())
