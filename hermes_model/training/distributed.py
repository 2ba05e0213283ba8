"""torch.distributed plumbing for training: one code path with or without ``torchrun``.

``torchrun --nproc-per-node N -m hermes_cli.main train ...`` (or ``torchrun $(which hermes)
train ...``) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`setup` then joins the process group (NCCL on CUDA, gloo on the CPU) and pins the process
to ``cuda:LOCAL_RANK``. Without those variables (or with ``WORLD_SIZE=1``) it is a plain
single process and every collective below is a no-op.

Rank 0 logs, validates and writes files; the others wait at :meth:`DistContext.barrier`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from hermes_model.errors import ConfigError

__all__ = ["DistContext", "setup", "teardown", "wrap_model"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) job.

    Attributes:
        rank / world_size / local_rank: from the launcher's environment (0 / 1 / 0 without one).
        device: the training device of this process.
        owns_group: True when :func:`setup` created the process group (and must destroy it).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.distributed:
            if self.device.type == "cuda":
                torch.distributed.barrier(device_ids=[self.device.index or 0])
            else:
                torch.distributed.barrier()

    def mean(self, values: Sequence[float]) -> list[float]:
        """Element-wise mean of ``values`` over the ranks (float64 on the CPU; the identity
        in a single process)."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self._comm_device)
        torch.distributed.all_reduce(tensor)
        return [float(v) / self.world_size for v in tensor.cpu()]

    def gather_bytes(self, blob: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's 1-D uint8 ``blob`` (same length on all ranks), in rank order."""
        if not self.distributed:
            return [blob.cpu()]
        local = blob.to(self._comm_device)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, local)
        return [p.cpu() for p in parts]

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (to stop all ranks together)."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self._comm_device)
        torch.distributed.broadcast(tensor, src=0)
        return bool(tensor.item())

    @property
    def _comm_device(self) -> torch.device:
        # NCCL only moves CUDA tensors; gloo only CPU ones.
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError as error:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from error


def setup(device: torch.device) -> DistContext:
    """Join the job the launcher described, or describe a single process.

    Args:
        device: the device asked for (``resolve_device`` of the recipe's ``train.device``). With
            several ranks on CUDA, each rank uses ``cuda:LOCAL_RANK`` instead.

    Raises:
        ConfigError: inconsistent launcher variables, or more ranks per node than GPUs.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(
            f"launcher variables RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} are "
            "inconsistent; start with torchrun (or unset them for one process)"
        )
    if world == 1:
        return DistContext(0, 1, 0, device)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA GPU(s) on this "
                "node; start at most one process per GPU (torchrun --nproc-per-node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not torch.distributed.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if (
            device.type == "cuda"
            and "device_id" in inspect.signature(torch.distributed.init_process_group).parameters
        ):  # torch >= 2.3: bind the group to this GPU (eager NCCL init)
            kwargs["device_id"] = device
        # Rank 0 validates while the others wait at a barrier: allow long validations.
        torch.distributed.init_process_group(
            backend, rank=rank, world_size=world, timeout=timedelta(hours=2), **kwargs
        )
    return DistContext(rank, world, local, device, owns)


def teardown(context: DistContext) -> None:
    """Leave the process group if :func:`setup` created it."""
    if context.owns_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap_model(model: nn.Module, context: DistContext, find_unused: bool) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several ranks, else itself.

    ``find_unused``: some parameters get no gradient in some steps (per-dataset decoders,
    auxiliary heads); DDP then has to look for them every step (a little slower).
    """
    if not context.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [context.device.index or 0] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)
