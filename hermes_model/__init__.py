"""Hermes: universal 3D medical image segmentation with task and modality context priors.

Importing ``hermes_model`` is cheap; torch is imported only when a model function is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hermes_model.version import __version__

__all__ = [
    "__version__",
    "Segmenter",
    "create_model",
    "save_checkpoint",
    "load_checkpoint",
]

if TYPE_CHECKING:
    from hermes_model.nets import create_model
    from hermes_model.pipeline.segmenter import Segmenter
    from hermes_model.weights.checkpoint import load_checkpoint, save_checkpoint

_LAZY = {
    "Segmenter": "hermes_model.pipeline.segmenter",
    "create_model": "hermes_model.nets",
    "save_checkpoint": "hermes_model.weights.checkpoint",
    "load_checkpoint": "hermes_model.weights.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hermes_model' has no attribute {name!r}")
