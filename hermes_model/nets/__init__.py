"""Networks (nn.Modules only) and the one factory, ``create_model``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hermes_model.config import ModelConfig, model_config
from hermes_model.nets.baselines import ClipDrivenR, DoDNetR, MultiDecoderR
from hermes_model.nets.hermes import HermesR, ResUNet, SegmentationNet
from hermes_model.nets.medformer import HermesM, MedFormer

__all__ = [
    "create_model",
    "build_model",
    "SegmentationNet",
    "HermesR",
    "ResUNet",
    "MedFormer",
    "HermesM",
    "MultiDecoderR",
    "DoDNetR",
    "ClipDrivenR",
]

_ARCHS: dict[str, type[SegmentationNet]] = {
    "hermes-r": HermesR,
    "resunet": ResUNet,
    "medformer": MedFormer,
    "hermes-m": HermesM,
    "multi-decoder-r": MultiDecoderR,
    "dodnet-r": DoDNetR,
    "clip-driven-r": ClipDrivenR,
}


def build_model(
    config: ModelConfig, task_ids: Sequence[str], modalities: Sequence[str] | None = None
) -> SegmentationNet:
    """The network that ``config`` describes, for ``task_ids`` (ordered) and ``modalities``."""
    from hermes_model.tasks import MODALITIES

    return _ARCHS[config.arch](config, list(task_ids), list(modalities or MODALITIES))


def create_model(
    name: str,
    tasks: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    **overrides: Any,
) -> SegmentationNet:
    """A freshly initialised model from preset ``name`` with config ``overrides``.

    Args:
        name: a preset of ``hermes_model.config.MODEL_PRESETS`` (``hermes-r-base``, ``tiny``...).
        tasks: ordered task ids (``dataset/label``); default every registered task.
        modalities: modality names; default ``hermes_model.tasks.MODALITIES``.
    """
    from hermes_model.tasks import task_ids

    return build_model(model_config(name, **overrides), tasks or task_ids(), modalities)
