"""Optimisers, learning-rate schedules and an EMA of the weights.

- :class:`Lamb` (You et al. 2020, "Large batch optimization for deep learning"), implemented here
  because timm's needs torchvision. Per parameter tensor ``w`` with gradient ``g`` at step t::

      m = b1 m + (1 - b1) g            v = b2 v + (1 - b2) g^2
      u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + weight_decay * w
      r = ||w|| / ||u||   (1 where either norm is 0)
      w = w - lr * r * u

  This is apex's FusedLAMB (the authors' optimiser) without its built-in global gradient
  clipping: clip with ``train.grad_clip`` instead.
- :func:`make_optimizer`: LAMB or torch's AdamW from recipe settings.
- :class:`WarmupDecay`: warm-up then poly / exponential / constant decay: a
  ``LambdaLR`` multiplier whose state is plain numbers.
- :class:`ModelEMA`: exponential moving average of a model, for validation and export.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hermes_model.training.settings import OptimizerSettings, ScheduleSettings

__all__ = ["Lamb", "make_optimizer", "WarmupDecay", "make_scheduler", "ModelEMA"]


class Lamb(torch.optim.Optimizer):
    """LAMB with bias correction and decoupled weight decay inside the trust ratio."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0 or not all(0 <= b < 1 for b in betas) or eps <= 0 or weight_decay < 0:
            raise ValueError(
                f"Lamb needs lr > 0, betas in [0, 1), eps > 0, weight_decay >= 0; got lr={lr}, "
                f"betas={betas}, eps={eps}, weight_decay={weight_decay}"
            )
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                if w.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                # fp16/bf16 weights keep float32 moments; float32/64 compute in their own dtype.
                dtype = torch.promote_types(w.dtype, torch.float32)
                state = self.state[w]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(w, dtype=dtype)
                    state["exp_avg_sq"] = torch.zeros_like(w, dtype=dtype)
                state["step"] += 1
                t = float(state["step"])
                g = w.grad.to(dtype)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                m_hat = m / (1 - beta1**t)
                v_hat = v / (1 - beta2**t)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update = update + group["weight_decay"] * w.to(dtype)
                w_norm, u_norm = w.to(dtype).norm(), update.norm()
                ratio = torch.where(
                    (w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm)
                )
                w.add_((-group["lr"] * ratio * update).to(w.dtype))
        return loss


def make_optimizer(params: Iterable[Any], settings: OptimizerSettings) -> torch.optim.Optimizer:
    """LAMB or AdamW with the recipe's lr, betas, eps and weight decay."""
    if settings.name == "lamb":
        return Lamb(
            params,
            lr=settings.lr,
            betas=settings.betas,
            eps=settings.eps,
            weight_decay=settings.weight_decay,
        )
    if settings.name == "adamw":
        return torch.optim.AdamW(
            params,
            lr=settings.lr,
            betas=settings.betas,
            eps=settings.eps,
            weight_decay=settings.weight_decay,
        )
    raise ValueError(f"unknown optimiser {settings.name!r}; use 'lamb' or 'adamw'")


@dataclass(frozen=True)
class WarmupDecay:
    """Learning-rate multiplier at iteration ``step`` (0-based), for ``LambdaLR``.

    Warm-up over ``warmup`` iterations: ``linear`` ((step + 1) / warmup) or ``exponential``
    (e^(10 (step / warmup - 1)), the authors' ramp from e^-10 to 1). After it, with
    p = (step - warmup) / (total - warmup) clipped to [0, 1]: ``poly`` (1 - p)^power,
    ``exponential`` final_ratio^p, ``constant`` 1. Its state is these plain fields.
    """

    total: int
    warmup: int = 0
    warmup_shape: str = "linear"
    decay: str = "poly"
    power: float = 0.9
    final_ratio: float = 0.01

    def __post_init__(self) -> None:
        if self.warmup_shape not in ("linear", "exponential"):
            raise ValueError(f"warm-up shape {self.warmup_shape!r}: use linear or exponential")
        if self.decay not in ("poly", "exponential", "constant"):
            raise ValueError(f"decay {self.decay!r}: use poly, exponential or constant")

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            if self.warmup_shape == "linear":
                return (step + 1) / self.warmup
            return math.exp(10.0 * (step / self.warmup - 1.0))
        span = max(1, self.total - self.warmup)
        p = min(1.0, max(0.0, (step - self.warmup) / span))
        if self.decay == "poly":
            return (1.0 - p) ** self.power
        if self.decay == "exponential":
            return self.final_ratio**p
        return 1.0

    @classmethod
    def from_settings(cls, settings: ScheduleSettings, total: int) -> WarmupDecay:
        return cls(
            total=total,
            warmup=settings.warmup_iterations,
            warmup_shape=settings.warmup_shape,
            decay=settings.decay,
            power=settings.power,
            final_ratio=settings.final_ratio,
        )


def make_scheduler(
    optimizer: torch.optim.Optimizer, settings: ScheduleSettings, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping once per iteration; its ``state_dict()`` holds only numbers."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupDecay.from_settings(settings, total))


class ModelEMA:
    """Exponential moving average of a model's weights.

    ``module`` is a frozen copy in eval mode, usable directly for validation. After each
    optimiser step, ``update(model)`` sets every float parameter to
    ``d * ema + (1 - d) * param`` with ``d = min(decay, 1 - 1 / n)`` after n updates (the
    authors' ramp: the first update copies the model, so the random init is soon forgotten)
    and copies the buffers. ``state_dict()`` holds tensors only: the shadow weights and
    ``num_updates``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.99) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (same architecture) into the average."""
        self.num_updates += 1
        d = min(self.decay, 1.0 - 1.0 / self.num_updates)
        for ema_p, p in zip(self.module.parameters(), model.parameters(), strict=True):
            if ema_p.dtype.is_floating_point:
                ema_p.mul_(d).add_(p.detach().to(ema_p.dtype), alpha=1.0 - d)
            else:
                ema_p.copy_(p)
        for ema_b, b in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"module.{k}": v.detach().clone() for k, v in self.module.state_dict().items()}
        state["num_updates"] = torch.tensor(self.num_updates, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.num_updates = int(state["num_updates"])
        weights = {k[len("module.") :]: v for k, v in state.items() if k.startswith("module.")}
        self.module.load_state_dict(weights)
