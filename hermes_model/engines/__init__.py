"""Engines: what runs the network behind the sliding window (``--engine``).

=========  =====================  ==========================================================
engine     devices                what it is
=========  =====================  ==========================================================
torch      every device           eager PyTorch (autocast fp16/bf16); the reference
openvino   Intel / AMD CPUs       OpenVINO-compiled network, cached; ``[openvino]`` extra;
                                  the only engine with int8 (``engines.int8``, NNCF)
compile    CUDA (CPU works)       ``torch.compile`` for the fixed window, CUDA graphs on CUDA
auto       —                      :func:`choose_engine`
=========  =====================  ==========================================================

Every engine must give masks identical (>= 99.9% of voxels) to torch fp32 on real scans
(``tests/engines``).
"""

from __future__ import annotations

import platform

import torch

from hermes_model.engines.base import Engine, TorchEngine
from hermes_model.engines.compiled import CompiledEngine
from hermes_model.engines.int8 import Calibration
from hermes_model.engines.openvino import INSTALL_HINT, OpenVINOEngine, openvino_available
from hermes_model.engines.precision import (
    PRECISIONS,
    autocast_dtype,
    cpu_native_bf16,
    int8_possible,
    resolve_precision,
)
from hermes_model.errors import OptionError
from hermes_model.options import ENGINES

__all__ = [
    "ENGINES",
    "INSTALL_HINT",
    "PRECISIONS",
    "Calibration",
    "CompiledEngine",
    "Engine",
    "OpenVINOEngine",
    "TorchEngine",
    "autocast_dtype",
    "choose_engine",
    "cpu_native_bf16",
    "int8_possible",
    "make_engine",
    "openvino_available",
    "resolve_precision",
]


def choose_engine(device: torch.device) -> str:
    """The engine ``auto`` means on ``device``: the fastest installed one measured safe there.

    CPU (x86-64): ``openvino`` when the extra is installed (2x faster than torch in fp32,
    masks identical), else ``torch``. CUDA: ``torch`` (fp16): ``compile`` is not yet measured on
    a GPU, so it stays opt-in. Anything else: ``torch``.
    """
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if device.type == "cpu" and x86 and openvino_available():
        return "openvino"
    return "torch"


def make_engine(
    name: str,
    model: torch.nn.Module,
    device: torch.device | str,
    precision: str = "auto",
    batch_size: int = 1,
    calibration: Calibration | None = None,
) -> Engine:
    """The engine ``name`` (:data:`ENGINES`) running ``model`` on ``device``.

    Raises ConfigError for an unknown engine, an engine that cannot run on the device, or an
    optional extra that is not installed (the message names the pip command).
    ``calibration``: int8 calibration windows (``pipeline.calibration``), openvino only.
    """
    device = torch.device(device)
    if name not in ENGINES:
        raise OptionError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")
    if name == "auto":
        name = choose_engine(device)
    if name == "openvino":
        return OpenVINOEngine(
            model, device, precision, batch_size=batch_size, calibration=calibration
        )
    if name == "compile":
        return CompiledEngine(model, device, precision, batch_size=batch_size)
    return TorchEngine(model, device, precision)
