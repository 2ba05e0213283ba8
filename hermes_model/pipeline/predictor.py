"""The network on one batch of windows: each task group, the mirror flips of ``--tta``, the
Gaussian weight.

Test-time augmentation averages the logits over every combination of mirroring along the axes
it is given: the axes the model was trained mirrored along (checkpoint ``mirror_axes``) and the
left-right axis, which a near-symmetric body makes safe. Other flips would show the network
anatomy it never saw (a head-and-neck CT upside down): on the bundled model, which trained
without mirroring, averaging all 8 flips emptied both parotid masks (Dice 0.71 and 0.74 with the
left-right flip alone, 0.74 and 0.69 without TTA; tests/weights/test_bundled.py).

A flip along the body's left-right axis turns a left structure into a right one, so on such a
flip the network is asked for each lateral task's partner (``tasks.pairs``): the mirrored image's
``parotid_right`` flipped back is the original's ``parotid_left``. A task group holding a
lateral task whose partner the model does not have is averaged over the flips that keep left and
right only (a left-right flip would have no task to ask for).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

import torch

from hermes_model.engines import Engine
from hermes_model.tasks.pairs import NO_PARTNER, mirror_rows

__all__ = ["Predictor", "flip_sets"]


class TaskGroup(Protocol):
    """What the predictor needs of a ``windows.GroupRun``."""

    @property
    def task_indices(self) -> tuple[int, ...]: ...  # model rows of the whole group

    @property
    def keep(self) -> tuple[int, ...]: ...  # positions in the group of the outputs kept


def flip_sets(
    tta: bool, axes: Sequence[int] = (0, 1, 2), keep_left_right: int | None = None
) -> list[tuple[int, ...]]:
    """Dims of a (B, C, D, H, W) tensor to mirror: none, or every combination of the spatial
    ``axes`` (canonical axis a is dim 2 + a), less those that flip dim ``keep_left_right``."""
    if not tta:
        return [()]
    dims = sorted({2 + a for a in axes})
    combos = [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]
    return [c for c in combos if keep_left_right is None or keep_left_right not in c]


class Predictor:
    """Gaussian-weighted logits of a (B, 1, *window) batch for each task group, flips averaged.

    Args:
        engine: runs the network.
        runs: the task groups (``windows.plan_groups``).
        modality_index: row of the model's modalities.
        tta: average over mirror flips.
        gauss: (D, H, W) importance weights of a window.
        device: where the windows are.
        left_right_axis: the canonical axis along the body's left-right direction (0 in RAS).
        tta_axes: canonical axes to mirror along with ``tta``.
    """

    def __init__(
        self,
        engine: Engine,
        runs: Sequence[TaskGroup],
        modality_index: int,
        tta: bool,
        gauss: torch.Tensor,
        device: torch.device,
        left_right_axis: int = 0,
        tta_axes: Sequence[int] = (0, 1, 2),
    ) -> None:
        self.engine, self.modality_index, self.gauss = engine, modality_index, gauss
        self.device = device
        self.lr_dim = 2 + left_right_axis
        partners = mirror_rows(list(getattr(engine.model, "task_ids", [])))
        self.tasks, self.mirrored, self.flips = [], [], []
        for run in runs:
            rows = list(run.task_indices)
            swapped = [partners[r] if r < len(partners) else r for r in rows]
            whole = NO_PARTNER not in swapped
            self.tasks.append(torch.tensor(rows, device=device))
            self.mirrored.append(torch.tensor(swapped if whole else rows, device=device))
            self.flips.append(flip_sets(tta, tta_axes, None if whole else self.lr_dim))
        self.keep = [torch.tensor(r.keep, device=device) for r in runs]

    @property
    def passes(self) -> int:
        """Network passes per window position, over all groups and flips."""
        return sum(len(f) for f in self.flips)

    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """One (B, K, *window) float32 tensor per group: K kept outputs, x Gaussian."""
        n = batch.shape[0]
        modalities = torch.full((n,), self.modality_index, dtype=torch.long, device=self.device)
        out = []
        groups = zip(self.tasks, self.mirrored, self.keep, self.flips, strict=True)
        for task_idx, mirrored_idx, keep, flips in groups:
            summed: torch.Tensor | None = None
            for dims in flips:
                inputs = batch.flip(dims) if dims else batch
                asked = mirrored_idx if self.lr_dim in dims else task_idx
                logits = self.engine(inputs, asked.expand(n, -1), modalities)
                logits = logits.index_select(1, keep).float()
                logits = logits.flip(dims) if dims else logits
                summed = logits if summed is None else summed.add_(logits)
            assert summed is not None  # flips is never empty
            out.append(summed.mul_(self.gauss / len(flips)))
        return out
