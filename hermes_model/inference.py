"""Sliding-window inference and the ``Segmenter``: load weights once, segment many scans.

The data's way through (DESIGN.md, "Segmenting a scan"): the scan is decoded once on the host;
``preprocess.prepare`` copies it to the inference device and reorients, resamples and normalises
it there; windows are cut, batched and run there; stitching happens there too unless the
accumulator does not fit (see :func:`plan_memory`); ``postprocess.finalise`` maps probabilities
back to the input grid, thresholds them and builds the label map, still on the device.

Choices, documented once:
- Windows: the checkpoint's ``patch_size`` (at least ``MIN_SIZE`` per axis); start positions
  evenly spaced so that neighbours overlap by at least ``overlap`` of the window (nnU-Net's rule);
  a scan smaller than the window is padded symmetrically with its minimum (background) value and
  the padding is cropped away after stitching.
- Importance weights: a separable 3D Gaussian centred in the window with sigma = 1/8 of the
  window edge per axis, scaled to a maximum of 1 (as nnU-Net), so window borders count little.
- Probabilities: the Gaussian-weighted average of the *logits* over windows (and over mirror
  flips with ``tta``), then one sigmoid. This is nnU-Net v2's order (average, then the output
  non-linearity): one sigmoid per voxel instead of one per window, and no extra host of [0, 1]
  maps. Probabilities are then resampled trilinearly to the input grid and thresholded at 0.5.
- Test-time augmentation: all 8 combinations of mirroring along the 3 axes (8x the network time).
- Precision: the network runs under autocast (fp16 by default on CUDA, the fastest measured;
  bf16 on request); fp32 on CPU and MPS unless asked otherwise. Accumulation is always float32.
- Task groups: each requested task is fed with the whole group it was trained with (checkpoint
  metadata ``task_groups``; the group of the scan's modality where a task is in several), one
  forward per group needed; only the requested outputs are accumulated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hermes_model import tasks as registry
from hermes_model.config import PreprocessConfig
from hermes_model.errors import ConfigError, TaskError, WeightsError
from hermes_model.io import ImageMeta, read_image
from hermes_model.nets.hermes import MIN_SIZE
from hermes_model.preprocess import check_image, detect_modality, prepare

__all__ = [
    "WindowSettings",
    "GroupRun",
    "MemoryPlan",
    "SegmentationResult",
    "Segmenter",
    "resolve_device",
    "autocast_dtype",
    "window_starts",
    "gaussian_importance",
    "plan_groups",
    "plan_memory",
    "sliding_window",
]

Progress = Callable[[int, int], None]
_PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class WindowSettings:
    """How the sliding window runs.

    Attributes:
        patch_size: window edge in voxels (D, H, W of the canonical grid).
        overlap: fraction of the window shared by neighbouring windows, in [0, 1).
        batch_size: windows per forward pass.
        tta: average over the 8 mirror flips (8x slower; smoother, slightly better masks).
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16`` (see :func:`autocast_dtype`).
    """

    patch_size: tuple[int, int, int] = (128, 128, 128)
    overlap: float = 0.5
    batch_size: int = 1
    tta: bool = False
    precision: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"overlap must be in [0, 1), got {self.overlap}; 0.5 is the default")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.precision not in ("auto", *_PRECISIONS):
            raise ConfigError(f"unknown precision {self.precision!r}; use auto, fp32, fp16 or bf16")

    @property
    def window(self) -> tuple[int, int, int]:
        """The window actually used: ``patch_size`` raised to ``MIN_SIZE`` per axis."""
        d, h, w = (max(int(p), MIN_SIZE) for p in self.patch_size)
        return d, h, w


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
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from error
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
        raise ConfigError(f"unsupported device {spec!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain float32.

    ``auto`` is fp16 on CUDA (fastest measured; bf16 was 20% slower) and fp32 elsewhere. fp16 on
    the CPU is refused (no fast CPU kernels); bf16 works everywhere torch has autocast for it.
    """
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision not in _PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("precision fp16 needs a GPU; use fp32 or bf16 on the CPU")
    return _PRECISIONS[precision]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start indices of windows of ``window`` voxels covering ``size >= window`` voxels.

    The fewest evenly spaced windows whose step is at most ``window * (1 - overlap)``; the first
    starts at 0 and the last ends at ``size``.
    """
    if size <= window:
        return [0]
    step = window * (1.0 - overlap)
    count = math.ceil((size - window) / step) + 1
    return [round(i * (size - window) / (count - 1)) for i in range(count)]


def gaussian_importance(
    window: tuple[int, int, int], sigma_scale: float = 1.0 / 8.0, device: Any = "cpu"
) -> torch.Tensor:
    """(D, H, W) float32 Gaussian weights: sigma = ``sigma_scale`` x edge per axis, max 1.

    Computed in float64 on the CPU (MPS has no float64), then moved to ``device``.
    """
    axes = []
    for n in window:
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0
        axes.append(torch.exp(-(x**2) / (2.0 * (n * sigma_scale) ** 2)))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights = weights / weights.max()
    weights = weights.clamp_(min=float(weights[weights > 0].min()))
    return weights.to(device=device, dtype=torch.float32)


@dataclass(frozen=True)
class GroupRun:
    """One task group fed to the network, and which of its outputs are kept.

    Attributes:
        group: group name (checkpoint ``task_groups`` key).
        task_indices: model indices of the whole group, in the group's order.
        keep: positions within the group of the requested tasks.
        rows: output rows (index into the requested tasks) of the kept outputs, same order.
    """

    group: str
    task_indices: tuple[int, ...]
    keep: tuple[int, ...]
    rows: tuple[int, ...]


def plan_groups(
    requested: Sequence[str],
    modality: str,
    task_groups: dict[str, list[str]],
    model_tasks: Sequence[str],
) -> list[GroupRun]:
    """The forward passes needed for ``requested`` tasks: one per task group, in first-use order.

    A task in several groups (``amos/liver`` in AMOS CT and AMOS MR) uses the group of a
    registered dataset of ``modality``, else the first group holding it; a task in no group runs
    alone.
    """
    index = {t: i for i, t in enumerate(model_tasks)}
    dataset_modality = {d.name: d.modality for d in registry.all_datasets()}
    chosen: dict[str, list[str]] = {}
    members: dict[str, list[tuple[int, str]]] = {}
    for row, task in enumerate(requested):
        holders = [(name, ids) for name, ids in task_groups.items() if task in ids]
        same = [h for h in holders if dataset_modality.get(h[0]) == modality]
        name, ids = (same or holders or [(task, [task])])[0]
        chosen.setdefault(name, [t for t in ids if t in index])
        members.setdefault(name, []).append((row, task))
    runs = []
    for name, ids in chosen.items():
        keep = tuple(ids.index(task) for _, task in members[name])
        rows = tuple(row for row, _ in members[name])
        runs.append(GroupRun(name, tuple(index[t] for t in ids), keep, rows))
    return runs


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


def _flip_sets(tta: bool) -> list[tuple[int, ...]]:
    """Spatial dims of a (B, C, D, H, W) tensor to mirror: none, or all 8 combinations."""
    if not tta:
        return [()]
    return [c for r in range(4) for c in itertools.combinations((2, 3, 4), r)]


def _pad_to(image: torch.Tensor, window: tuple[int, int, int]) -> tuple[torch.Tensor, list[slice]]:
    """Pad (1, D, H, W) symmetrically with its minimum to at least ``window``; crop slices back."""
    pads, crop = [], []
    for n, w in zip(image.shape[1:], window, strict=True):
        total = max(0, w - n)
        pads.append((total // 2, total - total // 2))
        crop.append(slice(total // 2, total // 2 + n))
    if not any(total for pair in pads for total in pair):
        return image, crop
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants the last dim first
    padded = torch.nn.functional.pad(image, flat, mode="constant", value=float(image.min()))
    return padded, crop


def sliding_window(
    model: torch.nn.Module,
    image: torch.Tensor,
    runs: Sequence[GroupRun],
    modality_index: int,
    settings: WindowSettings,
    stitch_device: torch.device | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Probabilities of the requested tasks on the image's grid.

    Args:
        model: a Hermes network in eval mode on ``image.device``.
        image: (1, D, H, W) float32 normalised image (``Prepared.image``).
        runs: task groups to run (:func:`plan_groups`); rows cover 0..T-1.
        modality_index: row of ``model.modalities``.
        settings: window, overlap, batch, TTA and precision.
        stitch_device: where the (T, D, H, W) accumulator lives (default ``image.device``).
        progress: called with (windows done, windows total) after each batch.

    Returns:
        (T, D, H, W) float32 probabilities (sigmoid of the Gaussian-weighted mean logits) on
        ``stitch_device``.
    """
    device = image.device
    stitch_device = stitch_device or device
    window = settings.window
    padded, crop = _pad_to(image, window)
    grid = tuple(int(n) for n in padded.shape[1:])
    per_axis = [window_starts(n, w, settings.overlap) for n, w in zip(grid, window, strict=True)]
    starts = [(z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2]]
    n_out = sum(len(r.rows) for r in runs)
    gauss = gaussian_importance(window, device=device)
    gauss_stitch = gauss.to(stitch_device)
    acc = torch.zeros((n_out, *grid), dtype=torch.float32, device=stitch_device)
    weight = torch.zeros(grid, dtype=torch.float32, device=stitch_device)
    for z, y, x in starts:
        weight[z : z + window[0], y : y + window[1], x : x + window[2]] += gauss_stitch
    flips = _flip_sets(settings.tta)
    dtype = autocast_dtype(device, settings.precision)
    task_tensors = [torch.tensor(r.task_indices, device=device) for r in runs]
    keep_tensors = [torch.tensor(r.keep, device=device) for r in runs]
    done = 0
    for first in range(0, len(starts), settings.batch_size):
        chunk = starts[first : first + settings.batch_size]
        batch = torch.stack(
            [
                padded[:, z : z + window[0], y : y + window[1], x : x + window[2]]
                for z, y, x in chunk
            ]
        )
        modalities = torch.full((len(chunk),), modality_index, dtype=torch.long, device=device)
        for run, task_idx, keep in zip(runs, task_tensors, keep_tensors, strict=True):
            summed: torch.Tensor | None = None
            for dims in flips:
                inputs = batch.flip(dims) if dims else batch
                with _autocast(device, dtype):
                    logits = model(inputs, task_idx.expand(len(chunk), -1), modalities)
                logits = logits.index_select(1, keep).float()
                logits = logits.flip(dims) if dims else logits
                summed = logits if summed is None else summed.add_(logits)
            assert summed is not None  # flips is never empty
            weighted = summed.mul_(gauss / len(flips)).to(stitch_device)
            _accumulate(acc, weighted, chunk, window, run.rows)
        done += len(chunk)
        if progress is not None:
            progress(done, len(starts))
    acc.div_(weight).sigmoid_()
    return acc[:, crop[0], crop[1], crop[2]]


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Autocast to ``dtype`` on ``device``, or nothing for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _accumulate(
    acc: torch.Tensor,
    weighted: torch.Tensor,
    starts: Sequence[tuple[int, int, int]],
    window: tuple[int, int, int],
    rows: Sequence[int],
) -> None:
    """Add (B, K, *window) predictions into ``acc`` rows ``rows`` at the window positions."""
    contiguous = list(rows) == list(range(rows[0], rows[0] + len(rows)))
    for b, (z, y, x) in enumerate(starts):
        space = (slice(z, z + window[0]), slice(y, y + window[1]), slice(x, x + window[2]))
        if contiguous:
            acc[(slice(rows[0], rows[0] + len(rows)), *space)] += weighted[b]
        else:
            for k, row in enumerate(rows):
                acc[(row, *space)] += weighted[b, k]


@dataclass
class SegmentationResult:
    """Everything one scan's segmentation produced, on the input grid.

    Tensors stay on the device they were computed on (see :func:`plan_memory`) until written;
    the ``mask``, ``probability`` and ``labels`` methods give numpy arrays.

    Attributes:
        task_ids: the requested tasks; label value ``i + 1`` is ``task_ids[i]``.
        masks: (T, I, J, K) bool, probabilities >= 0.5 after restoring to the input grid.
        label_map: (I, J, K) uint8 (uint16 beyond 255 tasks); precedence in ``postprocess``.
        probabilities: (T, I, J, K) float16, or None when not kept.
        volumes_ml: task id -> mask volume in mL (voxel count x voxel volume).
        voxel_counts: task id -> voxels in the mask.
        modality, modality_confidence: the modality used and how sure detection was (1.0 when
            given or read from a DICOM tag).
        meta: the input's geometry.
        warnings: one line each (image checks, tasks not trained on this modality).
        timings: seconds per stage: read, prepare, network, restore.
        weights: name, sha256 and source of the checkpoint.
        windows: number of windows run (per group and flip).
    """

    task_ids: list[str]
    masks: torch.Tensor
    label_map: torch.Tensor
    probabilities: torch.Tensor | None
    volumes_ml: dict[str, float]
    voxel_counts: dict[str, int]
    modality: str
    modality_confidence: float
    meta: ImageMeta
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    windows: int = 0

    def to(self, device: str | torch.device) -> SegmentationResult:
        """A copy whose tensors are on ``device`` (e.g. ``"cpu"`` before writing in a thread)."""
        probabilities = None if self.probabilities is None else self.probabilities.to(device)
        return dataclasses.replace(
            self, masks=self.masks.to(device), label_map=self.label_map.to(device),
            probabilities=probabilities,
        )  # fmt: skip

    def _row(self, task: str) -> int:
        if task not in self.task_ids:
            raise TaskError(f"task {task!r} was not segmented; this result has {self.task_ids}")
        return self.task_ids.index(task)

    def mask(self, task: str) -> np.ndarray:
        """(I, J, K) bool mask of ``task`` on the input grid."""
        return self.masks[self._row(task)].cpu().numpy()

    def probability(self, task: str) -> np.ndarray:
        """(I, J, K) float32 probability of ``task``; TaskError when they were not kept."""
        if self.probabilities is None:
            raise TaskError("probabilities were not kept; call segment(..., probabilities=True)")
        return self.probabilities[self._row(task)].float().cpu().numpy()

    def labels(self) -> np.ndarray:
        """(I, J, K) label map (0 background, ``i + 1`` for ``task_ids[i]``), smallest uint."""
        from hermes_model.postprocess import label_dtype

        return self.label_map.cpu().numpy().astype(label_dtype(len(self.task_ids)), copy=False)


ImageInput = str | Path | tuple[np.ndarray, ImageMeta]


class Segmenter:
    """Load weights once, segment many scans.

    >>> segmenter = Segmenter("model.safetensors", device="cuda")      # doctest: +SKIP
    >>> result = segmenter.segment("ct.nii.gz", tasks=["liver"])        # doctest: +SKIP
    >>> result.volumes_ml["amos/liver"]                                 # doctest: +SKIP

    Args:
        weights: registry name, local ``.safetensors`` file, ``hf://org/repo@rev/file`` or None
            for the default weights (``hermes_model.hub.resolve_weights``).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        overlap: window overlap in [0, 1): more is smoother and slower (0.5: ~8x the windows of 0).
        batch_size: windows per forward; None = 4 on a GPU, 1 on the CPU.
        tta: mirror test-time augmentation (8x slower).
        precision: ``auto`` (fp16 on CUDA, fp32 elsewhere), ``fp32``, ``fp16``, ``bf16``.
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str | torch.device = "auto",
        overlap: float = 0.5,
        batch_size: int | None = None,
        tta: bool = False,
        precision: str = "auto",
    ) -> None:
        from hermes_model.hub import resolve_weights
        from hermes_model.weights import load_checkpoint

        self.device = resolve_device(device)
        resolved = resolve_weights(None if weights is None else str(weights))
        self.model = load_checkpoint(resolved.path, device=self.device)
        metadata: dict[str, Any] = self.model.metadata
        self.weights = {"name": resolved.name, "sha256": resolved.sha256, "source": resolved.source}
        try:
            self.preprocess = PreprocessConfig.from_dict(metadata.get("preprocess", {}))
        except (TypeError, ConfigError) as error:
            raise WeightsError(f"{resolved.path}: bad preprocessing metadata ({error})") from error
        self.task_groups: dict[str, list[str]] = dict(metadata.get("task_groups", {}))
        default_batch = 1 if self.device.type == "cpu" else 4
        self.settings = WindowSettings(
            patch_size=self.preprocess.patch_size,
            overlap=overlap,
            batch_size=batch_size or default_batch,
            tta=tta,
            precision=precision,
        )
        autocast_dtype(self.device, precision)  # refuse fp16 on the CPU now, not per scan

    @property
    def task_ids(self) -> list[str]:
        """Every task the weights segment, in output order."""
        return list(self.model.task_ids)

    def select_tasks(
        self, names: Sequence[str] | None, modality: str | None
    ) -> tuple[list[str], list[str]]:
        """(task ids, warnings) for requested names (ids or aliases) on a scan of ``modality``.

        Without names: every task of the weights trained on ``modality`` (tasks outside the
        registry count as trained on every modality). A requested task never trained on the
        modality gives a warning. Unknown names raise TaskError listing the closest names.
        """
        available = self.task_ids
        if isinstance(names, str):
            names = [names]  # "liver,spleen" is one comma-separated name list
        if not names:
            if modality is None:
                return available, []
            chosen = [t for t in available if modality in _trained_modalities(t)]
            if not chosen:
                raise TaskError(
                    f"these weights have no task trained on {modality.upper()} (they segment "
                    f"{', '.join(available)}); name tasks with --tasks, or set --modality"
                )
            return chosen, []
        chosen = registry.resolve(names, modality=modality, available=available)
        warnings = [
            f"task {t} was not trained on {modality.upper()} (only on "
            f"{', '.join(m.upper() for m in _trained_modalities(t))}); expect poor masks"
            for t in chosen
            if modality is not None and modality not in _trained_modalities(t)
        ]
        return chosen, warnings

    def segment(
        self,
        image: ImageInput,
        tasks: Sequence[str] | None = None,
        modality: str | None = None,
        *,
        probabilities: bool = True,
        progress: Progress | None = None,
    ) -> SegmentationResult:
        """Segment one scan.

        Args:
            image: a path (any format ``io.read_image`` reads) or ``(array, meta)`` from it.
            tasks: task ids or aliases; None = every task of the weights for the modality.
            modality: ``ct`` or ``mr`` to override detection.
            probabilities: keep the float16 probability maps in the result.
            progress: called with (windows done, windows total).

        Raises InputError (unusable image), TaskError (unknown task or modality).
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        array, meta = read_image(image) if isinstance(image, str | Path) else image
        timings["read"] = time.perf_counter() - start
        if modality is not None:
            modality, confidence = registry.normalize_modality(modality), 1.0
        else:
            modality, confidence = detect_modality(array, meta)
        if modality not in self.model.modalities:
            raise TaskError(
                f"{meta.source}: the weights know {', '.join(self.model.modalities)}, not "
                f"{modality}; pass --modality to force one"
            )
        warnings = check_image(array, meta, modality)
        task_ids, task_warnings = self.select_tasks(tasks, modality)
        with torch.inference_mode():
            result = self._run(array, meta, task_ids, modality, probabilities, progress, timings)
        result.modality_confidence = confidence
        result.warnings = warnings + task_warnings
        return result

    def _run(
        self,
        array: np.ndarray,
        meta: ImageMeta,
        task_ids: list[str],
        modality: str,
        keep_probabilities: bool,
        progress: Progress | None,
        timings: dict[str, float],
    ) -> SegmentationResult:
        from hermes_model import postprocess
        from hermes_model.group_spacing import preprocess_for_groups

        clock = _Clock(self.device, timings)
        runs = plan_groups(task_ids, modality, self.task_groups, self.model.task_ids)
        # Each task group at the spacing it was trained at (checkpoint "group_spacing").
        config = preprocess_for_groups(
            self.preprocess, self.model.metadata, [r.group for r in runs]
        )
        prepared = prepare(array, meta, config, modality, self.device)
        clock.lap("prepare")
        grid = [
            max(n, w) for n, w in zip(prepared.image.shape[1:], self.settings.window, strict=True)
        ]
        window_voxels = math.prod(self.settings.window)
        forward = self.settings.batch_size * window_voxels * self.model.config.base_channels * 20
        plan = plan_memory(
            self.device, math.prod(grid), math.prod(meta.shape), len(task_ids), forward,
            keep_probabilities,
        )  # fmt: skip
        index = self.model.modalities.index(modality)
        probs = sliding_window(
            self.model, prepared.image, runs, index, self.settings, plan.stitch_device, progress
        )
        clock.lap("network")
        outputs = postprocess.finalise(
            probs, prepared, task_ids, keep_probabilities=keep_probabilities,
            device=plan.output_device,
        )  # fmt: skip
        del probs
        clock.lap("restore")
        voxel_ml = float(np.prod(meta.spacing)) / 1000.0
        windows = len(runs) * len(_flip_sets(self.settings.tta))
        windows *= math.prod(
            len(window_starts(n, w, self.settings.overlap))
            for n, w in zip(grid, self.settings.window, strict=True)
        )
        return SegmentationResult(
            task_ids=task_ids,
            masks=outputs.masks,
            label_map=outputs.label_map,
            probabilities=outputs.probabilities,
            volumes_ml={t: outputs.voxel_counts[t] * voxel_ml for t in task_ids},
            voxel_counts=outputs.voxel_counts,
            modality=modality,
            modality_confidence=1.0,
            meta=meta,
            timings=timings,
            weights=dict(self.weights),
            windows=windows,
        )


def _trained_modalities(task_id: str) -> tuple[str, ...]:
    """Modalities a task has training data in; all of them for tasks outside the registry."""
    known = {t.id: t for t in registry.all_tasks()}
    return known[task_id].modalities if task_id in known else registry.MODALITIES


class _Clock:
    """Stage timer that waits for the device, so each stage is charged its own GPU work."""

    def __init__(self, device: torch.device, timings: dict[str, float]) -> None:
        self.device, self.timings, self.last = device, timings, time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()
        now = time.perf_counter()
        self.timings[stage] = now - self.last
        self.last = now
