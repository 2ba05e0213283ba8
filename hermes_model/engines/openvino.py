"""The network compiled by OpenVINO for Intel and AMD CPUs (``pip install "hermes-seg[openvino]"``).

OpenVINO's CPU plugin fuses convolutions, norms and activations and uses AMX / AVX512-BF16 /
VNNI kernels that eager PyTorch does not: 2-4x faster in fp32 on the Xeons we measured (see
``engines.precision`` for the figures). Conversion (a trace of the network) takes 15 s for
Hermes-R Small and minutes for Base, so the converted model is cached (``engines.cache``) and
OpenVINO's own compiled-blob cache sits inside the same entry.

One converted model per input shape: batch, window and task-group length are fixed (static
shapes compile to faster code); the task and modality indices stay inputs. A short last batch is
padded to the batch size.

One ``openvino.Core`` serves the whole process (:func:`_core`). Each Core makes its own CPU
plugin, and the CPU plugin (openvino 2026.4) gives the thread that makes it a signal stack of its
own (``sigaltstack``, room for AMX state); when released, it puts back the stack it found and
unmaps its own. Two plugins released in the order they were made (one engine dropped before a
second, or one engine's compiled networks for two task groups) leave the thread on an unmapped
stack, and the next Python signal handler on it (CPython runs them on that stack) kills the
process with SIGSEGV before it runs: a DataLoader's SIGCHLD handler at a worker's or a
subprocess's exit, so training after segmenting died; SIGTERM or Ctrl-C would too. One plugin,
made once and never released, cannot leave a dangling stack. Fork itself is not the problem.
"""

from __future__ import annotations

import os
import threading
from typing import Any, cast

import torch

from hermes_model.engines.base import Engine, pad_batch
from hermes_model.engines.cache import (
    entry_dir,
    network_source_digest,
    seal,
    weights_digest,
)
from hermes_model.engines.int8 import QUANTISATION, Calibration, quantize
from hermes_model.engines.precision import resolve_precision
from hermes_model.errors import ConfigError

__all__ = ["INSTALL_HINT", "OpenVINOEngine", "convert", "openvino_available"]

INSTALL_HINT = 'pip install "hermes-seg[openvino]"'
#: INFERENCE_PRECISION_HINT per precision; int8 runs what NNCF did not quantise in f32.
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def openvino_available() -> bool:
    """Is the OpenVINO extra installed?"""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as error:
        raise ConfigError(
            f"engine openvino needs the OpenVINO extra, which is not installed: {INSTALL_HINT} "
            "(or use --engine torch)"
        ) from error
    return openvino


_CORE_LOCK = threading.Lock()
_CORE: Any = None


def _core() -> Any:
    """The process's one ``openvino.Core``, made on first use and never released (see the
    module docstring: one CPU plugin, so no dangling signal stack)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = _import_openvino().Core()
        return _CORE


def convert(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> Any:
    """The network as an ``openvino.Model``, traced with ``example`` inputs.

    The only place that knows how a network becomes an OpenVINO graph: the network is a black
    box called with ``example`` positionally (image, task indices, modality indices).
    """
    import warnings

    ov = _import_openvino()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The shape checks in forward() are traced as constants: right for one fixed shape.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        inputs = tuple(t.clone() for t in example)  # inference tensors cannot be traced
        return ov.convert_model(model, example_input=inputs)


def _config_digest(config: dict[str, Any]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


class OpenVINOEngine(Engine):
    """The network compiled by OpenVINO for the CPU, fp32, bf16 or int8 (module docstring).

    ``calibration``: where int8 gets its calibration windows (``pipeline.calibration``); int8
    without it, or for a task group it does not cover, is a ConfigError.
    """

    name = "openvino"

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device | str = "cpu",
        precision: str = "auto",
        batch_size: int = 1,
        threads: int | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        device = torch.device(device)
        if device.type != "cpu":
            raise ConfigError(f"engine openvino runs on the CPU, not {device}; use --engine torch")
        precision = resolve_precision(precision, device, self.name, model, calibration is not None)
        if precision not in _OV_PRECISION:
            raise ConfigError(f"engine openvino supports fp32, bf16 and int8, not {precision}")
        super().__init__(model, device, precision)
        self.ov = _import_openvino()
        self.calibration = calibration
        if precision == "int8":
            _int8_ready(calibration)
        self.batch_size = batch_size
        self.threads = threads or torch.get_num_threads()
        self._digest: tuple[str, str] | None = None
        self._requests: dict[tuple[Any, ...], Any] = {}
        #: Seconds spent converting and compiling, and whether it came from the cache, per shape.
        self.compile_log: list[dict[str, Any]] = []

    def _key(self, image: torch.Tensor, task_idx: torch.Tensor) -> dict[str, Any]:
        if self._digest is None:
            self._digest = (weights_digest(self.model), network_source_digest(self.model))
        key = {
            "weights_sha256": self._digest[0],
            "network_source_sha256": self._digest[1],
            "image": [self.batch_size, *image.shape[1:]],
            "task_group": [int(t) for t in task_idx[0].tolist()],
            "openvino": self.ov.__version__,
            "torch": torch.__version__,
        }
        if self.precision == "int8":
            import nncf

            group = self._group(task_idx)
            window = (int(image.shape[2]), int(image.shape[3]), int(image.shape[4]))
            assert self.calibration is not None  # checked in __init__
            key["int8"] = {
                "nncf": nncf.__version__,
                "quantisation": QUANTISATION,
                "calibration": self.calibration.identity(group, window),
            }
        return key

    def _group(self, task_idx: torch.Tensor) -> str:
        """The calibration group of a window's task group; ConfigError if it has none."""
        names = cast(list[str], self.model.task_ids)
        ids = tuple(names[int(t)] for t in task_idx[0].tolist())
        group = None if self.calibration is None else self.calibration.groups.get(ids)
        if group is None:
            raise ConfigError(
                f"precision int8: no calibration data for the task group {', '.join(ids)} (int8 "
                "is calibrated on the training cases of the weights' own datasets, which are not "
                "on this machine or not named by the weights); use --precision fp32"
            )
        return group

    def _request(self, image: torch.Tensor, task_idx: torch.Tensor) -> Any:
        import time

        shape = (tuple(image.shape[1:]), tuple(task_idx[0].tolist()))
        if shape in self._requests:
            return self._requests[shape]
        start = time.perf_counter()
        key = self._key(image, task_idx)
        folder, cached = entry_dir(self.name, key)
        xml = folder / "model.xml"
        if not cached:
            folder.mkdir(parents=True, exist_ok=True)
            n = self.batch_size
            example = (
                torch.zeros((n, *image.shape[1:]), dtype=torch.float32),
                task_idx[:1].expand(n, -1).contiguous(),
                torch.zeros(n, dtype=torch.long),
            )
            ov_model = convert(self.model, example)
            if self.precision == "int8":
                window = (int(image.shape[2]), int(image.shape[3]), int(image.shape[4]))
                assert self.calibration is not None  # checked in __init__
                samples = self.calibration.load(self._group(task_idx), window)
                ov_model = quantize(ov_model, samples, task_idx[0], n)
            self.ov.save_model(ov_model, xml, compress_to_fp16=False)
            seal(folder, key)
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": self.threads,
        }
        if self.threads < (os.cpu_count() or 1):
            # OpenVINO pins its threads from core 0 up: two processes with one thread each (two
            # evaluations, or --shard on one node) then share core 0 and leave the others idle
            # (seen on this 2-core machine: 50% of one core each). Pin only when using all cores.
            config["ENABLE_CPU_PINNING"] = False
        # One blob cache per compile configuration. OpenVINO 2026.4 keys its compiled-blob cache
        # by the model, not by INFERENCE_PRECISION_HINT: a bf16 compile next to an fp32 blob of
        # the same model loaded that blob under the bf16 runtime and gave NaN logits in the same
        # process and SIGSEGV (an AMX tile load) in a new one. Measured with a fresh cache, bf16
        # alone is finite (bench/engines.py).
        config["CACHE_DIR"] = str(folder / f"blobs-{_config_digest(config)}")
        compiled = _core().compile_model(str(xml), "CPU", config)
        request = compiled.create_infer_request()
        self._requests[shape] = request
        seconds = time.perf_counter() - start
        self.compile_log.append({"seconds": seconds, "cached": cached, "entry": str(folder)})
        return request

    def __call__(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> torch.Tensor:
        n = image.shape[0]
        image, task_idx, modality_idx = pad_batch(self.batch_size, image, task_idx, modality_idx)
        request = self._request(image, task_idx)
        inputs = [
            image.float().contiguous().numpy(),
            task_idx.long().contiguous().numpy(),
            modality_idx.long().contiguous().numpy(),
        ]
        request.infer(inputs)
        return torch.from_numpy(request.get_output_tensor(0).data.copy())[:n]


def _int8_ready(calibration: Calibration | None) -> None:
    """Refuse int8 early, in one line, when NNCF or any calibration data is missing."""
    from hermes_model.engines.int8 import _import_nncf

    _import_nncf()
    if calibration is None:
        raise ConfigError(
            "precision int8 needs calibration data: the training cases of the weights' own "
            "datasets (named in their provenance), which are not on this machine or not named "
            "by these weights; use --precision fp32"
        )
