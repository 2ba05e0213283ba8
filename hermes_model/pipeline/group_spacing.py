"""Voxel spacing per task group: what training resampled each dataset to, and inference reuses.

One model may learn datasets whose native resolutions differ by far more than a resampling can
bridge: MSD hippocampus crops are 1 mm, OpenKBP head-and-neck CT is ~4 x 4 x 2.5 mm. Resampling
both to 1 mm multiplies the CT's voxels (and cost) by ~40; resampling both to 4 mm leaves a
hippocampus of a few dozen voxels. So a recipe may give a dataset its own ``spacing``
(``[[datasets]] spacing = [4.0, 4.0, 2.5]``); its task group (the dataset's task set) is trained
at that spacing, and the checkpoint records it::

    "group_spacing": {"openkbp": [4.0, 4.0, 2.5], "hippocampus": [1.0, 1.0, 1.0]}

in mm along the canonical axes (R, A, S), next to the ``preprocess`` block whose ``spacing``
stays the default. Inference prepares a scan at the spacing of the groups it runs
(:func:`preprocess_for_groups`); a checkpoint without ``group_spacing`` (every checkpoint
written before it existed) uses ``preprocess.spacing`` for every group, exactly as before.
Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from hermes_model.config import PreprocessConfig
from hermes_model.errors import TaskError, WeightsError

__all__ = ["GROUP_SPACING_KEY", "spacing_for_group", "preprocess_for_groups"]

#: The checkpoint metadata key: group name -> [x, y, z] mm.
GROUP_SPACING_KEY = "group_spacing"

Spacing = tuple[float, float, float]


def _default_spacing(metadata: Mapping[str, Any]) -> Spacing:
    block = metadata.get("preprocess") or {}
    spacing = block.get("spacing", PreprocessConfig().spacing)
    return _checked(spacing, "preprocess.spacing")


def _checked(value: Any, where: str) -> Spacing:
    try:
        spacing = tuple(float(v) for v in value)
    except (TypeError, ValueError) as error:
        raise WeightsError(f"checkpoint metadata {where} = {value!r} is not 3 numbers") from error
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise WeightsError(
            f"checkpoint metadata {where} = {value!r} must be 3 positive mm values; "
            "re-export the checkpoint"
        )
    return (spacing[0], spacing[1], spacing[2])


def spacing_for_group(metadata: Mapping[str, Any], group: str) -> Spacing:
    """The spacing (mm, canonical R, A, S) that ``group`` was trained at.

    ``metadata["group_spacing"][group]`` when the checkpoint records it, else the checkpoint's
    ``preprocess.spacing`` (old checkpoints: one spacing for all), else the PreprocessConfig
    default. Raises WeightsError for a malformed entry.
    """
    table = metadata.get(GROUP_SPACING_KEY) or {}
    if not isinstance(table, Mapping):
        raise WeightsError(f"checkpoint metadata {GROUP_SPACING_KEY} must map group -> spacing")
    if group in table:
        return _checked(table[group], f"{GROUP_SPACING_KEY}[{group!r}]")
    return _default_spacing(metadata)


def preprocess_for_groups(
    config: PreprocessConfig, metadata: Mapping[str, Any], groups: Sequence[str]
) -> PreprocessConfig:
    """``config`` at the spacing of the task ``groups`` one scan is run with.

    Returns ``config`` itself (the same object, so old checkpoints compute exactly as before)
    when the groups' spacing equals it. Raises TaskError when the groups were trained at
    different spacings: one preprocessed grid cannot serve both; segment them separately.
    """
    spacings = {g: spacing_for_group(metadata, g) for g in dict.fromkeys(groups)}
    distinct = set(spacings.values())
    if len(distinct) > 1:
        listed = "; ".join(
            f"{g} at {'x'.join(f'{s:g}' for s in v)} mm" for g, v in spacings.items()
        )
        raise TaskError(
            f"the requested tasks belong to task groups trained at different spacings ({listed}); "
            "segment each group's tasks in a separate run (--tasks)"
        )
    if not distinct:
        return config
    spacing = distinct.pop()
    if tuple(float(s) for s in config.spacing) == spacing:
        return config
    return dataclasses.replace(config, spacing=spacing)
