"""What the network computes in: ``--precision auto`` decided per device, engine and model size.

Accumulation and everything after the network are always float32; only the network changes.

- CUDA: fp16 (autocast, channels first); bf16 measured 20% slower on the GPUs we tried.
- CPU with native bf16 (AMX or AVX512-BF16; Linux ``/proc/cpuinfo`` flags ``amx_bf16`` /
  ``avx512_bf16``): bf16 where :data:`CPU_BF16_FASTER` says it measured faster for the engine
  and the model size; fp32 otherwise. CPUs without native bf16 (most users' laptops and many
  cluster nodes) emulate it and are slower: fp32 there.
- CPU without native bf16 (AVX2 only), engine ``openvino``: int8 (``engines.int8``) where
  :data:`CPU_INT8_FASTER` says it measured faster for the model size, the weights passed the
  accuracy guard (:data:`INT8_GUARDED`) and their calibration data is on this machine; fp32
  otherwise.
- MPS and anything else: fp32.
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

import torch

from hermes_model.errors import ConfigError, OptionError

log = logging.getLogger(__name__)

__all__ = [
    "CPU_BF16_FASTER",
    "CPU_INT8_FASTER",
    "INT8_GUARDED",
    "PRECISIONS",
    "autocast_dtype",
    "autocast_dtype_of",
    "cpu_native_bf16",
    "exact_fp32_on_cuda",
    "model_size",
    "resolve_precision",
    "resolve_training_precision",
]

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "int8": None,  # not an autocast dtype: OpenVINO + NNCF only (engines.int8)
}

#: Does bf16 pass the accuracy guard *and* run faster than fp32, on a CPU with native bf16, per
#: (engine, model size)? Measured on an Intel Xeon with AMX-BF16 (2 cores, 2026-12-01/02; ratios
#: of runs interleaved in one script, absolute times are noisy):
#:
#: - torch, small (<= 16 base channels): bf16 autocast faster than fp32 at 96³: 1.20x here
#:   (``python bench/engines.py --models hermes-r-small --sizes 96 --repeats 2``: 13.9 -> 11.5 s
#:   per 15-task window; 2.2x in issue 11's quieter run), and the bundled model's masks in bf16
#:   pass the guard of
#:   ``tests/engines/test_real_scans.py`` (>= 99.9% of voxels, <= 0.5% of foreground changed,
#:   Dice drop <= 0.002 on hippocampus val cases) -> bf16.
#: - openvino, small: bf16 -> bf16. Measured with trained weights on 2026-12-02, after the
#:   blob-cache fix in ``engines.openvino`` (one compiled-blob folder per precision: the earlier
#:   "OpenVINO bf16 fails the guard / gives NaN / crashes in an AMX tile load" figures came from a
#:   bf16 compile that loaded the fp32 blob of the same model):
#:   ``python bench/segment_engines.py --scans examples/openkbp_286.nii.gz
#:   examples/openkbp_307.nii.gz examples/hippocampus_001.nii.gz examples/hippocampus_003.nii.gz``
#:   (one thread, the bundled universal-hermes-r v2): torch fp32 17.4 s per scan, torch bf16 7.0 s
#:   (2.5x), OpenVINO fp32 13.2 s (1.3x), OpenVINO bf16 3.8 s (4.6x); 0.030% of the foreground
#:   changed. Guard (``python bench/precision_guard.py``, whole val splits against torch fp32):
#:   hippocampus (20 cases) 0.140% of the foreground changed, Dice 0.8977 -> 0.8978; OpenKBP
#:   (32 CTs) 0.449% changed, Dice 0.6321 -> 0.6323. Torch bf16 in the same run: 0.128% and
#:   0.491%, Dice +0.0000 and +0.0003.
#: - Every engine, small and base, 96³ and 128³ (``python bench/engines.py --repeats 1``, one
#:   thread, random weights, 15 tasks, 2026-12-02, after the fix; seconds per window, speed-up
#:   against torch fp32 of the same row):
#:
#:   | model, window | torch fp32 | torch bf16 | OpenVINO fp32 | OpenVINO bf16 |
#:   |---|---|---|---|---|
#:   | small 96³  | 7.50 | 4.12 (1.82x) | 3.99 (1.88x) | 0.86 (8.77x) |
#:   | small 128³ | 12.7 | 5.91 (2.16x) | 5.88 (2.17x) | 1.62 (7.86x) |
#:   | base 96³   | 13.4 | 5.85 (2.29x) | 7.61 (1.76x) | 1.65 (8.11x) |
#:   | base 128³  | 33.1 | 15.2 (2.17x) | 17.8 (1.86x) | 3.80 (8.71x) |
#:
#:   -> bf16 for base too, with both engines. (An earlier run on a loaded CPU had torch base
#:   bf16 at 0.8x; this one, with both engines measured in one run, does not confirm it.) The
#:   accuracy guard could only be run with trained small weights (no trained base model
#:   exists); random weights agree on the logit sign about as often for base as for small
#:   (92% against 94%, both engines alike). ``--precision fp32`` keeps the reference.
#: - compile: not measured on the CPU -> fp32.
CPU_BF16_FASTER: dict[tuple[str, str], bool] = {
    ("torch", "small"): True,
    ("torch", "base"): True,
    ("openvino", "small"): True,
    ("openvino", "base"): True,
}


#: Does int8 (OpenVINO + NNCF, ``engines.int8``) run faster than OpenVINO fp32, on a CPU
#: *without* native bf16, per (engine, model size)? Measured on an AMD EPYC Zen 2 (AVX2 and FMA;
#: no AVX512, VNNI or AMX), 2 cores shared with other work (load 8-15), 2026-12-04, one thread,
#: the bundled model (small), seconds per scan, ratios from runs in one process:
#:
#: - NNCF defaults: ``examples/openkbp_286`` 98.0 -> 56.0 s (1.75x), ``hippocampus_001``
#:   2.27 -> 1.51 s (1.50x) against OpenVINO fp32;
#: - the shipped settings (``int8.QUANTISATION``), network seconds of ``bench/precision_guard.py``
#:   on ``openkbp_202``: torch fp32 216 s, OpenVINO int8 103 s (2.1x).
#:
#: -> faster for small. Base is not measured: not chosen. See docs/int8.md.
CPU_INT8_FASTER: dict[tuple[str, str], bool] = {("openvino", "small"): True}

#: Weights (``engines.cache.weights_digest``, the sha256 of their tensors) whose int8 masks
#: passed the accuracy guard of ``bench/precision_guard.py`` on the val splits of every dataset
#: they were trained on (<= 0.5% of torch fp32's foreground changed, no task's Dice lower by
#: more than 0.005). Only these may get int8 from ``auto``. None today: the bundled
#: ``universal-hermes-r`` passes on hippocampus val (20 cases: 0.255% changed, no Dice lost) and
#: fails narrowly on OpenKBP val (all 32 cases: 0.634% changed, no task's Dice lower by more
#: than 0.0003; before the image-reading convolution stayed f32: 9.3%; docs/int8.md), so
#: ``auto`` keeps fp32 on CPUs without native bf16.
INT8_GUARDED: dict[str, str] = {}


def _int8_chosen(engine: str, model: torch.nn.Module | None) -> bool:
    """``auto`` on a CPU without native bf16: int8 measured faster *and* these weights guarded."""
    if model is None or not CPU_INT8_FASTER.get((engine, model_size(model)), False):
        return False
    from hermes_model.engines.cache import weights_digest

    return weights_digest(model) in INT8_GUARDED


def int8_possible(
    precision: str, device: torch.device, engine: str, model: torch.nn.Module
) -> bool:
    """Could ``precision`` resolve to int8 here, calibration data given? Only then is it worth
    looking for that data (``auto`` on a CPU with native bf16, or for weights int8 was not
    guarded on, never picks int8)."""
    if device.type != "cpu":
        return False
    if precision == "int8":
        return True
    return precision == "auto" and not cpu_native_bf16() and _int8_chosen(engine, model)


@functools.cache
def cpu_native_bf16() -> bool:
    """Does this CPU compute bf16 natively (AMX-BF16 or AVX512-BF16)? False when unknown."""
    if platform.system() != "Linux":
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"amx_bf16", "avx512_bf16"})


#: How much slower than fp32 torch's emulated bf16 measured on a CPU without native bf16 (an
#: AMD EPYC, Zen 3, AVX2 only; 2 threads; 2026-12-03). Training: ``python bench/train_amp.py
#: --base-channels 12 --patch 48 48 32 --batch 2 --steps 1`` (1.41 s per step in fp32, 63.3 s in
#: bf16), the bundled recipe's width-12 Hermes-R.
#: Inference: the bundled model, torch engine, on the 40 x 40 x 11 CT crop of
#: ``tests/engines/test_real_scans.py`` (8.7 s in fp32, 869 s in bf16).
EMULATED_BF16_SLOWDOWN = {"training": 45, "inference": 100}


@functools.cache
def _warn_if_emulated(setting: str, what: str) -> None:
    """Warn once per setting when bf16 was asked for on a CPU that would emulate it.

    Honoured, not overridden (a user may want bf16's numerics on purpose, as the precision tests
    do), but never silent: emulated bf16 is tens of times slower than fp32.
    """
    if cpu_native_bf16():
        return
    log.warning(
        "%s: this CPU has no native bf16 (no AMX-BF16 or AVX512-BF16), so torch emulates it; "
        "%s measured ~%dx slower than fp32 on such a CPU. Use 'auto' (fp32 here) unless you "
        "want bf16's numerics",
        setting,
        what,
        EMULATED_BF16_SLOWDOWN[what],
    )


def model_size(model: torch.nn.Module | None) -> str:
    """``small`` (base channels <= 16), ``base`` (more), or ``unknown`` (no ``config``)."""
    channels = getattr(getattr(model, "config", None), "base_channels", None)
    if not isinstance(channels, int):
        return "unknown"
    return "small" if channels <= 16 else "base"


def resolve_precision(
    precision: str,
    device: torch.device,
    engine: str,
    model: torch.nn.Module | None = None,
    calibrated: bool = False,
) -> str:
    """``fp32``, ``fp16``, ``bf16`` or ``int8`` for ``precision`` (``auto`` or one of those)
    (module docstring). ``calibrated``: int8 calibration data exists for ``model``.

    Raises ConfigError for an unknown precision, fp16 on the CPU (no fast kernels), and int8
    anywhere but engine openvino on the CPU.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        if device.type == "cpu" and cpu_native_bf16():
            faster = CPU_BF16_FASTER.get((engine, model_size(model)), False)
            return "bf16" if faster else "fp32"
        if device.type == "cpu" and calibrated and _int8_chosen(engine, model):
            return "int8"
        return "fp32"
    if precision not in PRECISIONS:
        raise OptionError(f"unknown precision {precision!r}; use auto, fp32, fp16, bf16 or int8")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("precision fp16 needs a GPU; use fp32 or bf16 on the CPU")
    if precision == "int8" and (engine != "openvino" or device.type != "cpu"):
        raise ConfigError(
            f"precision int8 runs only with --engine openvino on the CPU, not engine {engine} "
            f"on {device.type}; use --engine openvino --device cpu, or another precision"
        )
    if precision == "bf16" and device.type == "cpu" and engine != "openvino":
        _warn_if_emulated("--precision bf16", "inference")
    return precision


def autocast_dtype_of(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision; None means plain float32."""
    return PRECISIONS[precision]


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The torch engine's autocast dtype for ``precision`` on ``device``, for a network of
    unknown size (``auto``: fp16 on CUDA, fp32 elsewhere); None means plain float32."""
    return PRECISIONS[resolve_precision(precision, device, "torch", None)]


#: Is bf16 autocast faster than fp32 for a *training* step (forward, backward, AdamW) on a CPU
#: with native bf16, per model size? ``python bench/train_amp.py --steps 2`` (Xeon with AMX,
#: 2 shared cores, 2026-12-01, fp32 and bf16 interleaved): the bundled recipe's shapes
#: (Hermes-R base 8, 8 x 32x48x32 patches) 23.3 s -> 17.3 s per step, 0.34 -> 0.46 patches/s,
#: bf16 1.35x faster. On the idle CPU (2026-12-01, ``python bench/bundled_recipe_step.py --batch 8
#: --iterations 4 --warmup 1``): the bundled_universal recipe's width-12 Hermes-R on mixed
#: OpenKBP/hippocampus batches of 8 x 64x64x48, 13.37 s -> 3.99 s per step, 0.60 -> 2.00
#: patches/s, bf16 3.35x faster. Base (32 channels) was not measured on this CPU: fp32 until it is.
CPU_TRAIN_BF16_FASTER: dict[str, bool] = {"small": True, "base": False}


def resolve_training_precision(
    amp: str, device: torch.device, model: torch.nn.Module | None = None
) -> str:
    """``fp32``, ``fp16`` or ``bf16`` for ``train.amp`` (``auto``, ``none``, ``fp16``, ``bf16``).

    ``auto``: bf16 on CUDA; on a CPU with native bf16, bf16 where
    :data:`CPU_TRAIN_BF16_FASTER` says it measured faster; fp32 otherwise. ``bf16`` is honoured
    on the CPU too; ``fp16`` needs CUDA (on the CPU it falls back to fp32, as before).
    """
    if amp == "none":
        return "fp32"
    if amp == "auto":
        if device.type == "cuda":
            return "bf16"
        native = device.type == "cpu" and cpu_native_bf16()
        return "bf16" if native and CPU_TRAIN_BF16_FASTER.get(model_size(model), False) else "fp32"
    if amp == "fp16":
        return "fp16" if device.type == "cuda" else "fp32"
    if amp == "bf16":
        if device.type == "cpu":
            _warn_if_emulated("train.amp = 'bf16'", "training")
        return "bf16" if device.type in ("cuda", "cpu") else "fp32"
    raise ConfigError(f"unknown train.amp {amp!r}; use auto, none, fp16 or bf16")


def exact_fp32_on_cuda(device: torch.device, precision: str) -> None:
    """Make ``fp32`` on CUDA mean IEEE float32: PyTorch runs float32 convolutions in TF32 (a
    10-bit mantissa) on Ampere and later GPUs by default, which moves logits by about 1e-3.
    A process-wide switch, set when an fp32 engine is made on CUDA; fp16/bf16 are unaffected.
    """
    if device.type != "cuda" or precision != "fp32":
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9: the new switches
        conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:  # older torch: the legacy flags (mixing the two APIs is an error in newer torch)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
