"""Output heads shared by the per-task-channel networks (MedFormer, the universal baselines).

``TaskHead`` is a 1³ convolution with one output channel per task whose weights are stored in
chunks, one per ``add_tasks`` call, so that growing a model's task list appends rows and leaves
every existing parameter untouched (incremental learning trains only the newest chunk).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TaskHead", "uniform", "valid_mask"]


def uniform(
    shape: tuple[int, ...],
    bound: float,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """U(-bound, bound). Without ``generator``: on the default device from the global RNG (so a
    model built under ``torch.device("meta")`` stays there); with it: drawn on the CPU (the same
    numbers on every machine), then moved to ``device``."""
    if generator is None:
        return torch.empty(shape).uniform_(-bound, bound)
    values = torch.empty(shape, device="cpu").uniform_(-bound, bound, generator=generator)
    return values if device is None else values.to(device)


def valid_mask(task_idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` task indices (-1 = padding) → ``(B, T, 1, 1, 1)`` 0/1 in ``like``'s dtype."""
    return (task_idx >= 0)[..., None, None, None].to(like.dtype)


class TaskHead(nn.Module):
    """1³ conv: features ``(B, C, D, H, W)`` → logits ``(B, T, D, H, W)`` of the tasks in
    ``task_idx`` ``(B, T)`` (long, -1 = padding; padded slots are zeros).

    Initialised as ``nn.Conv3d`` is: weights and biases uniform in ±1/sqrt(C).
    """

    def __init__(self, channels: int, num_tasks: int) -> None:
        super().__init__()
        self.channels = channels
        bound = channels**-0.5
        self.weight = nn.ParameterList([nn.Parameter(uniform((num_tasks, channels), bound))])
        self.bias = nn.ParameterList([nn.Parameter(uniform((num_tasks,), bound))])

    def grow(self, n: int, generator: torch.Generator) -> None:
        """Append ``n`` task rows drawn from ``generator``."""
        bound = self.channels**-0.5
        device = self.weight[0].device
        self.weight.append(nn.Parameter(uniform((n, self.channels), bound, generator, device)))
        self.bias.append(nn.Parameter(uniform((n,), bound, generator, device)))

    def new_parameters(self) -> list[nn.Parameter]:
        """The newest chunk's weight and bias."""
        return [self.weight[-1], self.bias[-1]]

    def forward(self, x: torch.Tensor, task_idx: torch.Tensor) -> torch.Tensor:
        idx = task_idx.clamp(min=0)
        w = torch.cat(list(self.weight))[idx].to(x.dtype)  # (B, T, C)
        b = torch.cat(list(self.bias))[idx].to(x.dtype)
        logits = torch.einsum("btc,bcdhw->btdhw", w, x) + b[..., None, None, None]
        return logits * valid_mask(task_idx, logits)
