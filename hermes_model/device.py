"""Devices: which one to run on, where stitching and outputs fit, and a stage clock.

Memory plan: the accumulator is ``(T + 1)`` float32 maps on the padded model grid; it lives on
the inference device when it fits beside the forward pass, else on the CPU (one device-to-host
copy per window batch: slower, never out of memory on the GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hermes_model.errors import ConfigError, OptionError

__all__ = ["MemoryPlan", "StageClock", "plan_memory", "resolve_device", "synchronize"]


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA, else MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    text = str(spec).strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_ok else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise OptionError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {spec!r}: no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"device {spec!r}: only {count} CUDA GPU(s), cuda:0..cuda:{count - 1}"
            )
    elif device.type == "mps" and not mps_ok:
        raise ConfigError(f"device {spec!r}: MPS (Apple GPU) is not available; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise OptionError(f"unsupported device {spec!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


@dataclass(frozen=True)
class MemoryPlan:
    """Where stitching and the outputs live, and the byte estimates behind the choice.

    The accumulator is ``(T + 1)`` float32 maps on the padded model grid (T tasks plus the
    weight sum). The outputs are, per task on the input grid, a bool mask and (optionally) a
    float16 probability map, plus the label map and the working maps of ``postprocess``. The
    forward pass is estimated at ``batch x window voxels x base channels x 20`` bytes (about ten
    full-resolution feature maps alive at once in half precision, x 2 in float32).
    """

    stitch_device: torch.device
    output_device: torch.device
    stitch_bytes: int
    output_bytes: int
    forward_bytes: int
    free_bytes: int | None


def plan_memory(
    device: torch.device,
    grid_voxels: int,
    input_voxels: int,
    n_tasks: int,
    forward_bytes: int,
    keep_probabilities: bool = True,
    free_bytes: int | None = None,
    budget: float = 0.8,
) -> MemoryPlan:
    """Stitch and keep outputs on ``device`` when they fit, else on the CPU.

    ``free_bytes`` is the device's free memory (default: asked from CUDA/MPS; None on the CPU,
    where everything stays). The accumulator goes to the CPU when accumulator + forward pass
    exceed ``budget`` x free memory; the outputs go to the CPU when they do not fit beside them.
    CPU stitching costs one device-to-host copy per window batch (slower, but never out of
    memory on the GPU).
    """
    stitch = (n_tasks + 2) * grid_voxels * 4
    per_voxel = n_tasks * (1 + (2 if keep_probabilities else 0)) + 4 + 2 + 2 + 1
    output = per_voxel * input_voxels
    cpu = torch.device("cpu")
    if device.type == "cpu":
        return MemoryPlan(cpu, cpu, stitch, output, forward_bytes, None)
    if free_bytes is None:
        free_bytes = _free_memory(device)
    if free_bytes is None:
        return MemoryPlan(device, device, stitch, output, forward_bytes, None)
    room = budget * free_bytes - forward_bytes
    stitch_device = device if stitch <= room else cpu
    room -= stitch if stitch_device == device else 0
    output_device = device if stitch_device == device and output <= room else cpu
    return MemoryPlan(stitch_device, output_device, stitch, output, forward_bytes, free_bytes)


def _free_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "mps":
        mps = torch.mps
        if hasattr(mps, "recommended_max_memory"):
            return int(mps.recommended_max_memory() - mps.current_allocated_memory())
    return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU), so that timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class StageClock:
    """Stage timer that waits for the device, so each stage is charged its own GPU work."""

    def __init__(self, device: torch.device, timings: dict[str, float]) -> None:
        self.device, self.timings, self.last = device, timings, time.perf_counter()

    def lap(self, stage: str) -> None:
        """Record the seconds since the previous lap as ``timings[stage]``."""
        synchronize(self.device)
        now = time.perf_counter()
        self.timings[stage] = now - self.last
        self.last = now
