"""Deprecated alias, kept for this release: segmenting a scan lives in ``hermes_model.pipeline``.

``from hermes_model.inference import Segmenter`` keeps working; new code imports from where the
objects live (or ``from hermes_model import Segmenter``):

=====================================  =======================================================
``hermes_model.pipeline.segmenter``    ``Segmenter``: load weights once, segment many scans
``hermes_model.pipeline.windows``      window planner, task groups, background skipping,
                                       stitching
``hermes_model.engines``               what runs the network (torch, OpenVINO, torch.compile)
                                       and in which precision
``hermes_model.device``                device choice, memory plan, stage clock
``hermes_model.pipeline.result``       ``SegmentationResult``
``hermes_model.pipeline.postprocess``  probabilities to masks, label map, legend, stats, preview
=====================================  =======================================================
"""

from __future__ import annotations

from hermes_model.device import MemoryPlan, plan_memory, resolve_device
from hermes_model.engines import autocast_dtype
from hermes_model.pipeline.result import SegmentationResult
from hermes_model.pipeline.segmenter import ImageInput, Segmenter
from hermes_model.pipeline.windows import (
    GroupRun,
    WindowSettings,
    WindowStats,
    background_threshold,
    gaussian_importance,
    plan_groups,
    sliding_window,
    window_starts,
)

__all__ = [
    "GroupRun",
    "ImageInput",
    "MemoryPlan",
    "SegmentationResult",
    "Segmenter",
    "WindowSettings",
    "WindowStats",
    "autocast_dtype",
    "background_threshold",
    "gaussian_importance",
    "plan_groups",
    "plan_memory",
    "resolve_device",
    "sliding_window",
    "window_starts",
]
