"""Inference, by name: the public objects of segmenting a scan, gathered from where they live.

``from hermes_model.inference import Segmenter`` keeps working; the code is in
one module per concept:

================================  ============================================================
``hermes_model.segmenter``        ``Segmenter``: load weights once, segment many scans
``hermes_model.windows``          window planner, task groups, background skipping, stitching
``hermes_model.engines``          what runs the network (torch, OpenVINO, torch.compile) and in
                                  which precision
``hermes_model.device``           device choice, memory plan (where stitching fits), stage clock
``hermes_model.result``           ``SegmentationResult``
``hermes_model.postprocess``      probabilities to masks, label map, legend, stats, preview
================================  ============================================================
"""

from __future__ import annotations

from hermes_model.device import MemoryPlan, plan_memory, resolve_device
from hermes_model.engines import autocast_dtype
from hermes_model.result import SegmentationResult
from hermes_model.segmenter import ImageInput, Segmenter
from hermes_model.windows import (
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
