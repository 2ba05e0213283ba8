"""int8: the OpenVINO network quantised after training by NNCF, for CPUs without native bf16.

``--precision int8`` (engine ``openvino`` only; ``pip install "hermes-seg[openvino]"`` brings
NNCF). ``nncf.quantize`` puts 8-bit fake-quantise nodes on the inputs and weights of the
convolutions and matmuls; their ranges come from *calibration*: the fp32 network run on real
windows. Everything else (instance norm, softmax, accumulation, stitching) stays float32.

Calibration data (decided in issue 26): windows of the *training* split of the datasets the
weights were trained on, per task group (the OpenKBP group on OpenKBP CTs, the hippocampus group
on hippocampus MRs), preprocessed exactly as a scan is (``pipeline.calibration`` builds them; the
engines layer only receives them). Weights whose training data cannot be found (imported weights,
a checkpoint without provenance, a machine without the dataset) get no int8: asked for
explicitly it is an error naming the fix, and ``auto`` never picks it. Calibrating on the scan
being segmented was rejected: a quantisation per scan (tens of seconds) that the cache could not
reuse, and masks of one scan that would depend on which scan calibrated them.

The quantised model is cached beside the fp32 one (``engines.cache``), keyed additionally by the
NNCF version, the quantisation settings and the calibration set's identity (cards, case ids,
window positions), so another calibration set is another entry.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hermes_model.errors import ConfigError

__all__ = [
    "Calibration",
    "GroupSamples",
    "QUANTISATION",
    "input_convolutions",
    "nncf_available",
    "quantize",
]

#: How the network is quantised (part of the cache key): NNCF's performance preset (symmetric
#: int8 weights and activations; the ``mixed`` preset moved more voxels) and fast bias
#: correction; matmuls (attention, prototype head), norms, residual sums and scales stay f32, and
#: so do the convolutions that read the image (:func:`input_convolutions`). docs/int8.md has the
#: settings tried. The windows per group are the calibration set's business.
QUANTISATION: dict[str, Any] = {
    "preset": "performance",
    "fast_bias_correction": True,
    "ignored_types": ["MatMul", "MVN", "Add", "Multiply"],
    "model_type": None,
    "input_convs_f32": True,
}


def nncf_available() -> bool:
    """Is NNCF (the quantiser of the ``openvino`` extra) installed?"""
    return importlib.util.find_spec("nncf") is not None


def _import_nncf() -> Any:
    try:
        import nncf
    except ImportError as error:
        raise ConfigError(
            'precision int8 needs NNCF, which is not installed: pip install "hermes-seg[openvino]"'
            " (or pip install nncf), or use --precision fp32"
        ) from error
    return nncf


@dataclass(frozen=True)
class GroupSamples:
    """Calibration windows for one task group.

    Attributes:
        windows: (N, 1, D, H, W) float32 normalised windows, the shape the engine runs.
        modality_index: the row of the weights' modalities these windows are fed with.
        identity: what makes these windows these windows (card, case ids, positions); JSON-able.
    """

    windows: torch.Tensor
    modality_index: int
    identity: dict[str, Any]


@dataclass(frozen=True)
class Calibration:
    """Where an engine gets int8 calibration windows, per task group.

    Attributes:
        groups: task ids of a group, in the group's order -> the group's name.
        load: ``load(group, window)`` -> :class:`GroupSamples`; reads images, so it is called
            only when the quantised model for that group and window is not cached.
        identity: ``identity(group, window)`` -> the JSON-able identity of what ``load`` would
            return, without decoding any image (it goes into the cache key).
    """

    groups: dict[tuple[str, ...], str]
    load: Callable[[str, tuple[int, int, int]], GroupSamples]
    identity: Callable[[str, tuple[int, int, int]], dict[str, Any]]

    def group_of(self, task_ids: Sequence[str]) -> str | None:
        """The group whose tasks are ``task_ids`` (a window's task group), or None."""
        return self.groups.get(tuple(task_ids))


def input_convolutions(ov_model: Any) -> list[str]:
    """Names of the convolutions that read the image itself (the model's first layer).

    Why they stay float32: a z-scored CT spans air to bone (about -1 to +3 after normalisation),
    and one 8-bit scale over that range leaves a few steps for the soft tissue the organs are
    told apart by. Quantising them moved 9.3% of the foreground on OpenKBP val CTs; keeping them
    float32 0.58% (docs/int8.md). They take one input channel, so they cost little time.
    """
    return [
        op.get_friendly_name()
        for op in ov_model.get_ordered_ops()
        if op.get_type_name() == "Convolution"
        and op.input_value(0).get_node().get_type_name() == "Parameter"
    ]


def quantize(
    ov_model: Any,
    samples: GroupSamples,
    task_idx: torch.Tensor,
    batch_size: int,
) -> Any:
    """``ov_model`` (an fp32 ``openvino.Model`` of fixed batch) quantised to int8 by NNCF.

    Args:
        ov_model: the converted network (``engines.openvino.convert``).
        samples: the group's calibration windows; cut into batches of ``batch_size`` (the last
            one padded by repeating its last window).
        task_idx: (T,) int64 model task indices of the group.
        batch_size: the batch the model was converted with.
    """
    nncf = _import_nncf()
    import logging

    windows = samples.windows.float()
    batches = []
    for first in range(0, windows.shape[0], batch_size):
        chunk = windows[first : first + batch_size]
        if chunk.shape[0] < batch_size:
            pad = chunk[-1:].expand(batch_size - chunk.shape[0], -1, -1, -1, -1)
            chunk = torch.cat([chunk, pad])
        batches.append(
            [
                chunk.contiguous().numpy(),
                task_idx[None].expand(batch_size, -1).long().contiguous().numpy(),
                torch.full((batch_size,), samples.modality_index, dtype=torch.long).numpy(),
            ]
        )
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)  # its progress bars and INFO lines are not ours
    try:
        q = QUANTISATION
        names = input_convolutions(ov_model) if q["input_convs_f32"] else []
        ignored = nncf.IgnoredScope(types=list(q["ignored_types"]), names=names, validate=False)
        return nncf.quantize(
            ov_model,
            nncf.Dataset(batches),
            preset=nncf.QuantizationPreset(q["preset"]),
            subset_size=len(batches),
            fast_bias_correction=q["fast_bias_correction"],
            model_type=nncf.ModelType(q["model_type"]) if q["model_type"] else None,
            ignored_scope=ignored,
        )
    finally:
        nncf_logger.setLevel(level)
