"""The sliding window: where windows go, how they are weighted, which are skipped, stitching.

Choices, documented once:
- Windows: the checkpoint's ``patch_size`` (at least ``MIN_WINDOW`` per axis); start positions
  evenly spaced so that neighbours overlap by at least ``overlap`` of the window (nnU-Net's rule);
  a scan smaller than the window is padded symmetrically with its minimum (background) value and
  the padding is cropped away after stitching.
- Importance weights: a separable 3D Gaussian centred in the window with sigma = 1/8 of the
  window edge per axis, scaled to a maximum of 1 (as nnU-Net), so window borders count little.
- Probabilities: the Gaussian-weighted average of the *logits* over windows (and over mirror
  flips with ``tta``), then one sigmoid (nnU-Net v2's order).
- Skipping: a window whose every voxel is at or below ``background`` (the clip floor: CT air at
  or below the -990 HU clip, MR at its 1st percentile, zero padding; see
  :func:`background_threshold`) is not run. It gets the logits the network gives a window
  filled with the scan's minimum, computed once per task group: a window that is all clip floor
  is that window, so the masks are those of running every window.
- Test-time augmentation: every combination of mirroring along the left-right axis and the axes
  the model trained mirrored along, paired tasks swapped on left-right flips (``predictor``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hermes_model import tasks as registry
from hermes_model.engines import PRECISIONS, Engine, TorchEngine
from hermes_model.errors import OptionError
from hermes_model.pipeline.predictor import Predictor

__all__ = [
    "CT_BACKGROUND_HU",
    "GroupRun",
    "WindowSettings",
    "WindowStats",
    "background_threshold",
    "gaussian_importance",
    "plan_groups",
    "sliding_window",
    "window_grid",
    "window_starts",
]

#: Smallest window edge. The network accepts 16 (``nets.hermes.MIN_SIZE``), but a window of 32
#: keeps two voxels per axis at the bottleneck, which every shipped model's patches assume; a
#: scan smaller than the window is padded, so this changes only the padding of tiny scans.
MIN_WINDOW = 32

Progress = Callable[[int, int], None]
#: CT air: a clip floor at or below it is air, and windows entirely at that floor are skipped.
CT_BACKGROUND_HU = -900.0
#: MR windows entirely at or below this percentile of the normalised scan need no network.
MR_BACKGROUND_PERCENTILE = 1.0


@dataclass(frozen=True)
class WindowSettings:
    """How the sliding window runs.

    Attributes:
        patch_size: window edge in voxels (D, H, W of the canonical grid).
        overlap: fraction of the window shared by neighbouring windows, in [0, 1).
        batch_size: windows per forward pass.
        tta: average over mirror flips (``predictor``: up to 8x slower; smoother masks).
        precision: ``auto``, ``fp32``, ``fp16``, ``bf16`` or ``int8``
            (``engines.resolve_precision``).
        skip_background: do not run windows that hold only background (module docstring).
    """

    patch_size: tuple[int, int, int] = (128, 128, 128)
    overlap: float = 0.5
    batch_size: int = 1
    tta: bool = False
    precision: str = "auto"
    skip_background: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise OptionError(f"overlap must be in [0, 1), got {self.overlap}; 0.5 is the default")
        if self.batch_size < 1:
            raise OptionError(f"batch size must be at least 1, got {self.batch_size}")
        if self.precision not in ("auto", *PRECISIONS):
            raise OptionError(
                f"unknown precision {self.precision!r}; use auto, fp32, fp16, bf16 or int8"
            )

    @property
    def window(self) -> tuple[int, int, int]:
        """The window actually used: ``patch_size`` raised to ``MIN_WINDOW`` per axis."""
        d, h, w = (max(int(p), MIN_WINDOW) for p in self.patch_size)
        return d, h, w


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
        family = registry.modality_family(modality)
        same = [h for h in holders if _family_of(dataset_modality.get(h[0])) == family]
        name, ids = (same or holders or [(task, [task])])[0]
        chosen.setdefault(name, [t for t in ids if t in index])
        members.setdefault(name, []).append((row, task))
    runs = []
    for name, ids in chosen.items():
        keep = tuple(ids.index(task) for _, task in members[name])
        rows = tuple(row for row, _ in members[name])
        runs.append(GroupRun(name, tuple(index[t] for t in ids), keep, rows))
    return runs


def window_grid(
    shape: Sequence[int], window: tuple[int, int, int], overlap: float
) -> list[tuple[int, int, int]]:
    """(z, y, x) start of every window over a (padded) grid of ``shape``, in raster order."""
    per_axis = [window_starts(n, w, overlap) for n, w in zip(shape, window, strict=True)]
    return [(z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2]]


def background_threshold(
    image: torch.Tensor, modality: str, low: float, mean: float, std: float
) -> float | None:
    """Normalised intensity at or below which a window is certainly background; None: never.

    A window is skipped when every voxel is at or below it, which is when every voxel sits at the
    clip floor of normalisation, so that the skipped window is the constant window whose logits
    stand in for it (exactly what running it would give):

    - CT: the clip floor ``low`` through the z-score, ``(low - mean) / std``, when that floor is
      air (``low <= CT_BACKGROUND_HU``, -900 HU; the default clip is -990 HU). Windows of
      noisy air between the floor and -900 HU are *not* skipped: on the TotalSegmentator CT the
      network's output there differed from its output on the floor and masks changed.
    - MR (any sequence): the ``MR_BACKGROUND_PERCENTILE`` of the normalised image
      ``(1, D, H, W)``: the clip floor, as the 2nd-percentile clip puts >= 2% of voxels there.
    - Other modalities (PET): None.
    """
    from hermes_model.pipeline.preprocess import percentiles

    if modality == "ct":
        if low > CT_BACKGROUND_HU:
            return None
        return (low - mean) / std + 1e-5  # float32 rounding of the floor itself
    if modality.startswith("mr"):
        return percentiles(image, (MR_BACKGROUND_PERCENTILE,))[0]
    return None


@dataclass
class WindowStats:
    """What :func:`sliding_window` did, per window position (not counting groups and flips)."""

    total: int = 0
    skipped: int = 0
    passes: int = 1  # network passes per position: task groups x mirror flips

    @property
    def skipped_fraction(self) -> float:
        return self.skipped / self.total if self.total else 0.0


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


def _cut(padded: torch.Tensor, chunk: Sequence[tuple[int, int, int]], window) -> torch.Tensor:
    """(B, 1, *window) windows of a (1, D, H, W) tensor at ``chunk`` starts."""
    d, h, w = window
    return torch.stack([padded[:, z : z + d, y : y + h, x : x + w] for z, y, x in chunk])


def _is_background(
    padded: torch.Tensor, starts: Sequence[tuple[int, int, int]], window, threshold: float
) -> list[bool]:
    """Per window: is every voxel at or below ``threshold``? One host sync for all windows."""
    d, h, w = window
    peaks = torch.stack([padded[:, z : z + d, y : y + h, x : x + w].amax() for z, y, x in starts])
    return (peaks <= threshold).tolist()


def sliding_window(
    model: torch.nn.Module | Engine,
    image: torch.Tensor,
    runs: Sequence[GroupRun],
    modality_index: int,
    settings: WindowSettings,
    stitch_device: torch.device | None = None,
    progress: Progress | None = None,
    background: float | None = None,
    stats: WindowStats | None = None,
    left_right_axis: int = 0,
    tta_axes: Sequence[int] = (0, 1, 2),
) -> torch.Tensor:
    """Probabilities of the requested tasks on the image's grid.

    Args:
        model: an engine (``hermes_model.engines``), or a network in eval mode on
            ``image.device`` (then run by the torch engine at ``settings.precision``).
        image: (1, D, H, W) float32 normalised image (``Prepared.image``).
        runs: task groups to run (:func:`plan_groups`); rows cover 0..T-1.
        modality_index: row of ``model.modalities``.
        settings: window, overlap, batch, TTA, precision and skipping.
        stitch_device: where the (T, D, H, W) accumulator lives (default ``image.device``).
        progress: called with (windows done, windows total) after each batch.
        background: windows at or below it everywhere are skipped when
            ``settings.skip_background`` (:func:`background_threshold`); None runs every window.
        stats: filled with the number of window positions, of those skipped, and the network
            passes per position.
        left_right_axis: the image's axis along the body's left-right direction, on which
            ``tta`` swaps paired tasks (``predictor``).
        tta_axes: canonical axes ``tta`` mirrors along (``Segmenter`` passes the model's).

    Returns:
        (T, D, H, W) float32 probabilities (sigmoid of the Gaussian-weighted mean logits) on
        ``stitch_device``.
    """
    device = image.device
    engine = model if isinstance(model, Engine) else TorchEngine(model, device, settings.precision)
    stitch_device = stitch_device or device
    window = settings.window
    padded, crop = _pad_to(image, window)
    grid = tuple(int(n) for n in padded.shape[1:])
    starts = window_grid(grid, window, settings.overlap)
    skip = [False] * len(starts)
    if settings.skip_background and background is not None:
        skip = _is_background(padded, starts, window, background)
    run_starts = [s for s, k in zip(starts, skip, strict=True) if not k]
    skipped = [s for s, k in zip(starts, skip, strict=True) if k]
    if stats is not None:
        stats.total, stats.skipped = len(starts), len(skipped)
    n_out = sum(len(r.rows) for r in runs)
    gauss = gaussian_importance(window, device=device)
    gauss_stitch = gauss.to(stitch_device)
    acc = torch.zeros((n_out, *grid), dtype=torch.float32, device=stitch_device)
    weight = torch.zeros(grid, dtype=torch.float32, device=stitch_device)
    for z, y, x in starts:
        weight[z : z + window[0], y : y + window[1], x : x + window[2]] += gauss_stitch
    predict = Predictor(
        engine, runs, modality_index, settings.tta, gauss, device, left_right_axis, tta_axes
    )
    if stats is not None:
        stats.passes = predict.passes
    if skipped:
        floor = torch.full((1, 1, *window), float(padded.min()), device=device)
        for run, weighted in zip(runs, predict(floor), strict=True):
            weighted = weighted.to(stitch_device)
            _accumulate(acc, weighted.expand(len(skipped), *weighted.shape[1:]), skipped, window,
                        run.rows)  # fmt: skip
    done = len(skipped)
    for first in range(0, len(run_starts), settings.batch_size):
        chunk = run_starts[first : first + settings.batch_size]
        for run, weighted in zip(runs, predict(_cut(padded, chunk, window)), strict=True):
            _accumulate(acc, weighted.to(stitch_device), chunk, window, run.rows)
        done += len(chunk)
        if progress is not None:
            progress(done, len(starts))
    acc.div_(weight).sigmoid_()
    return acc[:, crop[0], crop[1], crop[2]]


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


def _family_of(modality: str | None) -> str | None:
    return None if modality is None else registry.modality_family(modality)
