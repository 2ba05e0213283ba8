"""Choices the CLI offers for inference, in a module without torch (``hermes --help`` is fast).

The code behind each name is in ``hermes_model.engines``.
"""

from __future__ import annotations

__all__ = ["ENGINES", "PRECISION_CHOICES"]

#: ``--engine``: ``auto`` picks the fastest installed engine measured safe on the device.
ENGINES = ("auto", "torch", "openvino", "compile")
#: ``--precision``: ``auto`` is decided per device, engine and model size.
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16", "int8")
