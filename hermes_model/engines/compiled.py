"""The network through ``torch.compile`` for one fixed window shape; CUDA graphs on CUDA.

Every batch has the same shape (a short last batch is padded), so the graph is compiled once
(``dynamic=False``) and, on CUDA, replayed as a CUDA graph (``mode="reduce-overhead"``), which
removes the per-kernel launch cost that dominates small windows. CUDA-graph outputs live in
memory the next replay overwrites, so they are cloned before being returned.
"""

from __future__ import annotations

from typing import Any

import torch

from hermes_model.engines.base import Engine, autocast_context, pad_batch
from hermes_model.engines.precision import autocast_dtype_of, resolve_precision

__all__ = ["CompiledEngine"]


class CompiledEngine(Engine):
    """``torch.compile`` of the network (module docstring).

    Args:
        model, device, precision: as :class:`TorchEngine`.
        batch_size: the fixed batch every call is padded to.
        cuda_graphs: replay CUDA graphs (CUDA only; default True there).
    """

    name = "compile"

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device | str,
        precision: str = "auto",
        batch_size: int = 1,
        cuda_graphs: bool | None = None,
    ) -> None:
        device = torch.device(device)
        super().__init__(model, device, resolve_precision(precision, device, self.name, model))
        self.dtype = autocast_dtype_of(self.precision)
        self.batch_size = batch_size
        self.cuda_graphs = device.type == "cuda" if cuda_graphs is None else cuda_graphs
        mode = "reduce-overhead" if self.cuda_graphs else "default"
        self._compiled: Any = torch.compile(self.model, mode=mode, dynamic=False)

    def _autocast(self) -> Any:
        return autocast_context(self.device, self.dtype)

    def __call__(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> torch.Tensor:
        n = image.shape[0]
        image, task_idx, modality_idx = pad_batch(self.batch_size, image, task_idx, modality_idx)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self._autocast():
            out = self._compiled(image.contiguous(), task_idx.contiguous(), modality_idx)
        return out[:n].clone() if self.cuda_graphs else out[:n]
