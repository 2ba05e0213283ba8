"""The ``Segmenter``: load weights once, segment many scans.

The data's way through (DESIGN.md, "Segmenting a scan"): the scan is decoded once on the host;
``preprocess.prepare`` copies it to the inference device and reorients, resamples and normalises
it there; ``windows.sliding_window`` cuts, batches and runs the windows through an engine
(``engines``), skipping those that hold only background, and stitches there too unless the
accumulator does not fit (``device.plan_memory``); ``postprocess.finalise`` maps probabilities
back to the input grid, thresholds them and builds the label map, still on the device.

Task groups: each requested task is fed with the whole group it was trained with (checkpoint
metadata ``task_groups``; the group of the scan's modality where a task is in several), one
forward per group needed; only the requested outputs are accumulated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hermes_model import tasks as registry
from hermes_model.config import PreprocessConfig
from hermes_model.device import StageClock, plan_memory, resolve_device
from hermes_model.engines import (
    Calibration,
    Engine,
    choose_engine,
    int8_possible,
    make_engine,
)
from hermes_model.errors import (
    ConfigError,
    OptionError,
    OutOfDistributionError,
    TaskError,
    WeightsError,
)
from hermes_model.io import ImageMeta, read_image
from hermes_model.pipeline import components, postprocess
from hermes_model.pipeline.checks import check_image, detect_modality
from hermes_model.pipeline.ood import assess, withhold
from hermes_model.pipeline.preprocess import prepare
from hermes_model.pipeline.result import SegmentationResult
from hermes_model.pipeline.windows import (
    WindowSettings,
    WindowStats,
    background_threshold,
    plan_groups,
    sliding_window,
)
from hermes_model.tasks.pairs import left_right_axis
from hermes_model.weights.checkpoint import MIRROR_AXES_KEY

__all__ = ["ImageInput", "Segmenter", "load_scan"]

Progress = Callable[[int, int], None]

ImageInput = str | Path | tuple[np.ndarray, ImageMeta]


class Segmenter:
    """Load weights once, segment many scans.

    >>> segmenter = Segmenter("model.safetensors", device="cuda")      # doctest: +SKIP
    >>> result = segmenter.segment("ct.nii.gz", tasks=["liver"])        # doctest: +SKIP
    >>> result.volumes_ml["amos/liver"]                                 # doctest: +SKIP

    Args:
        weights: registry name, local ``.safetensors`` file, ``hf://org/repo@rev/file`` or None
            for the default weights (``hermes_model.weights.hub.resolve_weights``).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        overlap: window overlap in [0, 1): more is smoother and slower (0.5: ~8x the windows of 0).
        batch_size: windows per forward; None = 4 on a GPU, 2 on the CPU.
        tta: mirror test-time augmentation: left-right (paired tasks swapped) and the axes the
            weights trained mirrored along (2x to 8x slower; ``pipeline.predictor``).
        precision: ``auto`` (``engines.precision``: fp16 on CUDA; bf16 on CPUs with native bf16
            where it measured faster for the engine and model size; int8 on CPUs without it where
            int8 passed the guard for these weights and measured faster; else fp32), ``fp32``,
            ``fp16``, ``bf16``, ``int8`` (engine openvino; calibrated on the training cases of
            the weights' own datasets, ``pipeline.calibration``).
        engine: ``auto``, ``torch``, ``openvino`` or ``compile`` (``engines``).
        skip_background: do not run windows holding only background (``windows``); the masks
            are the same, the time is not.
        norm_region: override the weights' z-score region (``volume`` or ``body``; see
            ``PreprocessConfig.norm_region``); None keeps what the weights were trained with.
        largest_component: tasks whose mask keeps only its largest connected component
            (``components``): ``auto`` (those the weights record as chosen on validation),
            ``all``, ``none`` or a list of task ids.
        calibration: int8 calibration windows; None finds the training cases of the weights'
            own datasets (``pipeline.calibration``; ``calibration_from_scans`` for weights
            whose training data is not here).
        force: keep the masks of a task group even for a scan far outside its training data
            (``ood``: such groups are withheld by default, and said so in the warnings).
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str | torch.device = "auto",
        overlap: float = 0.5,
        batch_size: int | None = None,
        tta: bool = False,
        precision: str = "auto",
        engine: str = "auto",
        skip_background: bool = True,
        norm_region: str | None = None,
        largest_component: str | Sequence[str] = "auto",
        calibration: Calibration | None = None,
        force: bool = False,
    ) -> None:
        from hermes_model.weights.checkpoint import load_checkpoint
        from hermes_model.weights.hub import resolve_weights

        self.device = resolve_device(device)
        self.force = force
        resolved = resolve_weights(None if weights is None else str(weights))
        self.model = load_checkpoint(resolved.path, device=self.device)
        metadata: dict[str, Any] = self.model.metadata
        self.weights = {"name": resolved.name, "sha256": resolved.sha256, "source": resolved.source}
        try:
            self.preprocess = PreprocessConfig.from_dict(metadata.get("preprocess", {}))
        except (TypeError, ConfigError) as error:
            raise WeightsError(f"{resolved.path}: bad preprocessing metadata ({error})") from error
        if norm_region not in (None, "volume", "body"):
            raise OptionError(f"--norm-region must be volume or body, got {norm_region!r}")
        if norm_region is not None:
            changed = {**self.preprocess.to_dict(), "norm_region": norm_region}
            self.preprocess = PreprocessConfig.from_dict(changed)  # refuses a bad value
        self.task_groups: dict[str, list[str]] = dict(metadata.get("task_groups", {}))
        if isinstance(largest_component, str) and largest_component not in components.CHOICES:
            largest_component = registry.resolve([largest_component], available=self.task_ids)
        self.keep_largest = components.resolve_tasks(largest_component, self.task_ids, metadata)
        # CPU: 2, because torch picks its slow reference conv3d (not oneDNN) for a batch of one
        # whenever N*C*D*H <= 20480 (deep stages, small windows): 3.3x slower per window for
        # the bundled model's 32x48x32 windows (measured, torch 2.13, one thread).
        if batch_size is not None and batch_size < 1:
            raise OptionError(f"batch size must be at least 1, got {batch_size}")
        batch = batch_size if batch_size is not None else (2 if self.device.type == "cpu" else 4)
        chosen = choose_engine(self.device) if engine == "auto" else engine  # resolved once
        if calibration is None and int8_possible(precision, self.device, chosen, self.model):
            from hermes_model.pipeline.calibration import calibration_for

            calibration = calibration_for(self.model, self.preprocess)  # reads no image yet
        self.engine: Engine = make_engine(
            chosen, self.model, self.device, precision, batch, calibration
        )
        self.settings = WindowSettings(
            patch_size=self.preprocess.patch_size,
            overlap=overlap,
            batch_size=batch,
            tta=tta,
            precision=self.engine.precision,
            skip_background=skip_background,
        )

    @property
    def task_ids(self) -> list[str]:
        """Every task the weights segment, in output order."""
        return list(self.model.task_ids)

    @property
    def runtime(self) -> dict[str, str]:
        """What computes the masks: engine, precision and device (recorded in every legend)."""
        return {
            "engine": self.engine.name,
            "precision": self.engine.precision,
            "device": str(self.device),
        }

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
            family = registry.modality_family(modality)
            chosen = [t for t in available if family in _trained_modalities(t)]
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
            if modality is not None
            and registry.modality_family(modality) not in _trained_modalities(t)
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

        Raises InputError (unusable image), OutOfDistributionError (an InputError: the scan is far
        outside the training data of every task group asked for, and not ``force``), TaskError
        (unknown task or modality).
        """
        array, meta, modality, confidence, read = load_scan(image, modality)
        timings = {"read": read}
        modality, row_warnings = self._modality_row(modality, meta.source)
        warnings = row_warnings + check_image(array, meta, modality)
        task_ids, task_warnings = self.select_tasks(tasks, modality)
        verdicts = assess(array, meta, modality, self.model.metadata, task_ids)
        kept, withheld, unlike = withhold(verdicts, task_ids, meta.source, self.force)
        if not kept:
            raise OutOfDistributionError(unlike, withheld)
        with torch.inference_mode():
            result = self._run(array, meta, kept, modality, probabilities, progress, timings)
        result.modality_confidence = confidence
        result.warnings = warnings + task_warnings + unlike
        result.out_of_distribution, result.withheld = unlike, withheld
        return result

    def _mirroring(self, orientation: str) -> tuple[int, list[int]]:
        """The left-right axis and the axes ``--tta`` mirrors along (``predictor``)."""
        axis = left_right_axis(orientation)
        return axis, _tta_axes(getattr(self.model, "metadata", {}), axis)

    def _modality_row(self, modality: str, source: str) -> tuple[str, list[str]]:
        """The weights' modality row for ``modality``: itself, else (for an MR sequence the
        weights lack, such as ``mr-t2`` on ct/mr weights) the generic ``mr`` row, with a note."""
        known = self.model.modalities
        row = registry.modality_row(modality, known)
        if row == modality:
            return modality, []
        if row is not None:
            return row, [f"{source}: these weights have no {modality} row; using their {row} row"]
        raise TaskError(
            f"{source}: the weights know {', '.join(known)}, not {modality}; pass --modality "
            "to force one"
        )

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
        from hermes_model.pipeline.group_spacing import preprocess_for_groups

        clock = StageClock(self.device, timings)
        runs = plan_groups(task_ids, modality, self.task_groups, self.model.task_ids)
        # Each task group at the spacing it was trained at (checkpoint "group_spacing").
        groups = [r.group for r in runs]
        config = preprocess_for_groups(self.preprocess, self.model.metadata, groups)
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
        intensity = prepared.intensity
        background = background_threshold(
            prepared.image, modality, intensity.low, intensity.mean, intensity.std
        )
        stats = WindowStats()
        probs = sliding_window(
            self.engine, prepared.image, runs, index, self.settings, plan.stitch_device,
            progress, background, stats, *self._mirroring(config.orientation),
        )  # fmt: skip
        clock.lap("network")
        outputs = postprocess.finalise(
            probs, prepared, task_ids, keep_probabilities=keep_probabilities,
            device=plan.output_device, keep_largest=self.keep_largest,
        )  # fmt: skip
        del probs
        clock.lap("restore")
        voxel_ml = float(np.prod(meta.spacing)) / 1000.0
        windows = stats.passes * stats.total
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
            skipped_windows=stats.passes * stats.skipped,
            largest_component=[t for t in task_ids if t in self.keep_largest],
            sources=[{**self.weights, **self.runtime, "tasks": list(task_ids)}],
        )


def _tta_axes(metadata: dict[str, Any], left_right: int) -> list[int]:
    """Axes ``--tta`` mirrors along: those the weights trained mirrored along, and left-right."""
    return sorted({*(int(a) for a in metadata.get(MIRROR_AXES_KEY, [])), left_right})


def load_scan(
    image: ImageInput, modality: str | None
) -> tuple[np.ndarray, ImageMeta, str, float, float]:
    """``(array, meta, modality, confidence, read seconds)``: ``image`` read if it is a path,
    ``modality`` normalised when given (confidence 1), else detected from the intensities."""
    start = time.perf_counter()
    array, meta = read_image(image) if isinstance(image, str | Path) else image
    read = time.perf_counter() - start
    if modality is not None:
        return array, meta, registry.normalize_modality(modality), 1.0, read
    return array, meta, *detect_modality(array, meta), read


def _trained_modalities(task_id: str) -> tuple[str, ...]:
    """Modalities a task has training data in; all of them for tasks outside the registry."""
    known = {t.id: t for t in registry.all_tasks()}
    return known[task_id].modalities if task_id in known else registry.FAMILIES
