"""The contract every engine keeps, and the default one: the network in eager PyTorch.

An engine runs the network on a batch of windows and nothing else: the sliding window, the
stitching and the restoring are the same whichever engine runs. The network is a black box
``net(image, task_idx, modality_idx) -> logits``:

- ``image``: (B, 1, D, H, W) float32, normalised, channels first;
- ``task_idx``: (B, T) int64 model task indices; ``modality_idx``: (B,) int64;
- returns (B, T, D, H, W) logits, in the engine's compute dtype (float32, float16 or bfloat16).
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch

from hermes_model.engines.precision import (
    autocast_dtype_of,
    exact_fp32_on_cuda,
    resolve_precision,
)

__all__ = ["Engine", "TorchEngine"]


class Engine:
    """Runs a network on batches of windows; subclasses say how.

    Attributes:
        name: the ``--engine`` choice that makes this engine.
        model: the network (eval mode) the engine was built from.
        device: where inputs and outputs live.
        precision: ``fp32``, ``fp16`` or ``bf16``: what the network computes in (resolved, never
            ``auto``).
    """

    name: ClassVar[str] = ""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str) -> None:
        self.model = model.eval()
        self.device = device
        self.precision = precision
        exact_fp32_on_cuda(torch.device(device), precision)  # fp32 means fp32, not TF32

    def __call__(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, D, H, W) logits for (B, 1, D, H, W) windows (module docstring)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for logs and benchmark tables, e.g. ``torch fp32 on cpu``."""
        return f"{self.name} {self.precision} on {self.device}"


class TorchEngine(Engine):
    """The network as it is, in eager PyTorch, under autocast for fp16 / bf16.

    Runs everywhere torch runs; the reference every other engine is compared with.
    """

    name = "torch"

    def __init__(
        self, model: torch.nn.Module, device: torch.device | str, precision: str = "auto"
    ) -> None:
        device = torch.device(device)
        super().__init__(model, device, resolve_precision(precision, device, self.name, model))
        self.dtype = autocast_dtype_of(self.precision)

    def _autocast(self) -> Any:
        return autocast_context(self.device, self.dtype)

    def __call__(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> torch.Tensor:
        with self._autocast():
            return self.model(image.contiguous(), task_idx, modality_idx)


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Autocast to ``dtype`` on ``device``; nothing for plain float32 (``dtype`` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def pad_batch(
    batch_size: int, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A short last batch padded to the fixed ``batch_size`` an engine was built for, by
    repeating its last window (the caller keeps the first ``n`` outputs)."""
    n = image.shape[0]
    if n > batch_size:
        raise ValueError(f"batch of {n} windows; this engine was built for {batch_size}")
    if n < batch_size:
        pad = batch_size - n
        image = torch.cat([image, image[-1:].expand(pad, *image.shape[1:])])
        task_idx = torch.cat([task_idx, task_idx[-1:].expand(pad, -1)])
        modality_idx = torch.cat([modality_idx, modality_idx[-1:].expand(pad)])
    return image, task_idx, modality_idx
