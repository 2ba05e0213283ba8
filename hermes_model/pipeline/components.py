"""Keep only the largest connected component of a task's mask (nnU-Net's post-processing).

A network that sees a scan window by window can leave small islands far from the organ: a
mandible blob in the shoulders, a spinal-cord fragment at the top of the skull. For a structure
that is one connected piece they cost little Dice but dominate the Hausdorff distance. Removing
every component but the largest is what nnU-Net does after training, for the classes where it
improves the validation Dice; Hermes does the same, per task:

- ``python scripts/choose_largest_component.py`` segments a validation split once, scores each
  task with and without the largest-component filter, and records in the weights' metadata
  (``"largest_component"``) the tasks where it raised the mean Dice;
- ``Segmenter(largest_component="auto")`` (the default; ``hermes segment`` and ``hermes
  evaluate --largest-component``) then applies it to those tasks; ``all`` / ``none`` / a list of
  task ids override the recording.

Components are 26-connected (voxels touching at a face, an edge or a corner are one piece), so
a thin structure cut diagonally by the voxel grid stays whole. The filter runs on the final
input-grid mask, within the mask's bounding box, on the host (scipy): about 0.1 s for a
head-and-neck organ on a 128 x 128 x 128 grid. Probability maps are not changed; only the
masks and the label map are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hermes_model.errors import ConfigError, OptionError
from hermes_model.weights.checkpoint import LARGEST_COMPONENT_KEY

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHOICES",
    "METADATA_KEY",
    "choose_tasks",
    "largest_component",
    "largest_component_tensor",
    "resolve_tasks",
]

#: Weights metadata: the task ids for which the filter was chosen on validation.
METADATA_KEY = LARGEST_COMPONENT_KEY

#: The named choices; anything else is a list of task ids.
CHOICES = ("auto", "all", "none")


def largest_component(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every 26-connected component but the largest set to False.

    An empty mask, or one with a single component, is returned unchanged (the same array). Of
    components of equal size, the first in C order is kept.
    """
    from scipy import ndimage  # here, not at import: importing this module stays cheap

    if mask.dtype != np.bool_:
        raise ValueError(f"largest_component needs a boolean mask, not {mask.dtype}")
    boxes = ndimage.find_objects(mask.view(np.uint8))
    if not boxes or boxes[0] is None:
        return mask
    box = boxes[0]
    labels, count = ndimage.label(mask[box], structure=np.ones((3,) * mask.ndim, bool))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    out = np.zeros_like(mask)
    out[box] = labels == int(np.argmax(sizes)) + 1
    return out


def largest_component_tensor(mask: torch.Tensor) -> torch.Tensor:
    """:func:`largest_component` of a boolean tensor, on the tensor's device."""
    import torch

    kept = largest_component(mask.cpu().numpy())
    return torch.from_numpy(kept).to(mask.device)


def resolve_tasks(
    choice: str | Sequence[str], task_ids: Sequence[str], metadata: Mapping[str, Any]
) -> set[str]:
    """The tasks of ``task_ids`` to filter: ``auto`` (those the weights' metadata records),
    ``all``, ``none``, or an explicit list of task ids (ones not in ``task_ids`` are ignored)."""
    if isinstance(choice, str):
        if choice == "auto":
            recorded = metadata.get(METADATA_KEY, [])
            if not isinstance(recorded, list) or not all(isinstance(t, str) for t in recorded):
                raise ConfigError(
                    f"weights metadata {METADATA_KEY!r} must list task ids, not {recorded!r}"
                )
            return set(recorded) & set(task_ids)
        if choice == "all":
            return set(task_ids)
        if choice == "none":
            return set()
        raise OptionError(
            f"largest component: {choice!r} is not auto, all, none or a list of task ids"
        )
    return set(choice) & set(task_ids)


def choose_tasks(
    raw: Mapping[str, Sequence[float]], filtered: Mapping[str, Sequence[float]]
) -> list[str]:
    """The tasks whose mean validation Dice rose with the filter (nnU-Net's rule; a tie keeps
    the masks as they are). ``raw`` / ``filtered``: task -> the per-case Dice of the same cases
    without / with the filter."""
    chosen = []
    for task, before in raw.items():
        after = filtered[task]
        if len(after) != len(before):
            raise ValueError(f"{task}: {len(before)} cases without the filter, {len(after)} with")
        if before and float(np.mean(after)) > float(np.mean(before)):
            chosen.append(task)
    return chosen
