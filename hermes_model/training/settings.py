"""The sections of a training recipe, as frozen dataclasses (``recipe`` reads the TOML into
them; its docstring shows the file). Torch-free."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hermes_model.config import ModelConfig, PreprocessConfig
from hermes_model.datasets.cards import Case, DatasetCard, load_card

__all__ = [
    "ModelSpec",
    "DatasetEntry",
    "TrainSettings",
    "OptimizerSettings",
    "ScheduleSettings",
    "LossSettings",
    "AugmentConfig",
    "EMASettings",
    "ValidationSettings",
]


@dataclass(frozen=True)
class ModelSpec:
    """A model preset plus overrides; ``config`` is the resolved ModelConfig."""

    preset: str
    overrides: Mapping[str, Any]
    config: ModelConfig


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a recipe.

    Attributes:
        card: absolute path of the dataset card.
        weight: sampling weight; dataset k is drawn with probability weight_k / sum(weights).
        split: card split to train on.
        subset: fraction of that split to use (at least one case), chosen with ``subset_seed``.
        labels: optional label value -> task id map that replaces the card's; label values of
            the card left out of it count as background (evaluation on shared classes).
        spacing: optional voxel size (mm, canonical R, A, S) for this dataset instead of
            ``[preprocess] spacing``: its task group is trained at it, the checkpoint records
            it (``group_spacing``) and inference prepares that group's scans at it.
    """

    card: Path
    weight: float = 1.0
    split: str = "train"
    subset: float = 1.0
    subset_seed: int = 0
    labels: Mapping[int, str] | None = None
    spacing: tuple[float, float, float] | None = None

    def preprocess_for(self, base: PreprocessConfig) -> PreprocessConfig:
        """``base`` (the recipe's [preprocess]) with this dataset's ``spacing``, if it has one."""
        return base if self.spacing is None else dataclasses.replace(base, spacing=self.spacing)

    def load(self) -> DatasetCard:
        """The card, with ``labels`` applied."""
        card = load_card(self.card)
        if self.labels is None:
            return card
        dropped = tuple(v for v in card.labels if v not in self.labels)
        return dataclasses.replace(
            card, labels=dict(self.labels), ignore_labels=card.ignore_labels + dropped
        )

    def cases(self, card: DatasetCard | None = None, split: str | None = None) -> list[Case]:
        """Cases of ``split`` (default: the entry's), reduced to ``subset`` of them."""
        card = card or self.load()
        cases = card.cases(split or self.split)
        if self.subset >= 1.0:
            return cases
        count = max(1, round(self.subset * len(cases)))
        order = np.random.default_rng(self.subset_seed).permutation(len(cases))
        return sorted((cases[i] for i in order[:count]), key=lambda c: c.case_id)


@dataclass(frozen=True)
class TrainSettings:
    """Attributes:
    batch_size: the global batch; with N DDP ranks each rank draws batch_size / N samples.
    iterations: optimiser steps in total (0 = evaluate only).
    iterations_per_epoch: reporting unit; the paper's epoch is 400 iterations.
    amp: ``auto``, ``none``, ``fp16`` or ``bf16`` autocast. ``auto``: bf16 on CUDA, and on CPUs
        with native bf16 where it measured faster (``engines.precision``); fp32 elsewhere.
    grad_clip: max global gradient norm; 0 = no clipping.
    foreground_fraction: share of patches centred on a labelled voxel.
    foreground_weights: task id -> relative chance that a foreground patch centres on that
        structure rather than another one its case has (default 1 each): oversamples rare ones.
    cache_dir / cache_dtype / cache_workers: preprocessing cache (see ``cache.py``).
    init_from: checkpoint to start from (path or weights name); empty = random init.
    trainable: ``all``, or ``new_tasks``: freeze everything but the prior tokens of tasks that
        the initial checkpoint lacks (incremental learning).
    compile: run the training step's network through ``torch.compile`` (fused element-wise
        kernels around the convolutions). The first iteration then takes minutes (compiling;
        again after each ``--resume``), every later one less: 1.16x and 1.32x in two runs on the
        two-core AMD EPYC in fp32 (``bench/train_width.py --compile``: width 16, batch 8,
        48 x 48 x 32, deep supervision).
        Off by default: worth it for long runs. Validation and the exported weights are not
        affected.
    """

    batch_size: int = 2
    iterations: int = 1000
    iterations_per_epoch: int = 400
    num_workers: int = 2
    amp: str = "auto"
    grad_clip: float = 0.0
    foreground_fraction: float = 0.33
    foreground_weights: Mapping[str, float] = field(default_factory=dict)
    cache_dir: str = "cache"
    cache_dtype: str = "float16"
    cache_workers: int = 2
    init_from: str = ""
    trainable: str = "all"
    checkpoint_every: int = 1000
    log_every: int = 20
    device: str = "auto"
    compile: bool = False


@dataclass(frozen=True)
class OptimizerSettings:
    name: str = "lamb"
    lr: float = 0.002
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-5
    eps: float = 1e-6


@dataclass(frozen=True)
class ScheduleSettings:
    """Warm-up (``linear`` or ``exponential``: lr * e^(10 (t/W - 1))) over ``warmup_iterations``,
    then ``poly`` ((1 - p)^power), ``exponential`` (final_ratio^p) or ``constant`` decay, with
    p the fraction of post-warm-up iterations done."""

    decay: str = "poly"
    warmup_iterations: int = 0
    warmup_shape: str = "linear"
    power: float = 0.9
    final_ratio: float = 0.01


@dataclass(frozen=True)
class LossSettings:
    """``dice_reduction``: "sample" (Dice per sample and task, the paper's equation) or "batch"
    (per task over the whole batch, nnU-Net's batch Dice; see ``losses.py``). ``pos_weight``:
    task id -> weight of that task's foreground voxels in the BCE term (default 1 for every
    task; ``losses.py`` says when to raise it). ``deep_supervision``: loss weights of
    auxiliary predictions at the decoder's 1/2, 1/4, ... scales (e.g. ``[0.5, 0.25]``; empty =
    off; Hermes-R only; ``deep_supervision.py``)."""

    lambda_dice: float = 1.0
    dice_smooth: float = 1e-5
    dice_reduction: str = "sample"
    pos_weight: Mapping[str, float] = field(default_factory=dict)
    deep_supervision: tuple[float, ...] = ()


@dataclass(frozen=True)
class AugmentConfig:
    """On-the-fly augmentation (``augment.py``); probabilities are per sample.

    Attributes:
        p_spatial: probability of a random rotation + scaling of a sample.
        rotation_deg: rotation about each axis, uniform in [-rotation_deg, rotation_deg].
        scale_range: zoom factor range (one factor per sample; > 1 zooms in).
        crop_margin: voxels drawn around each side of the patch so that rotated corners hold
            image, not padding; the augmenter crops them off.
        p_intensity: per modality, the probability of each intensity transform.
        mirror_axes: canonical axes (0 R-L, 1 A-P, 2 S-I) to mirror with ``p_mirror``. Mirroring
            R-L swaps left and right organs: leave it off for datasets with sided tasks.
    """

    enabled: bool = True
    p_spatial: float = 0.5
    rotation_deg: float = 30.0
    scale_range: tuple[float, float] = (0.7, 1.4)
    crop_margin: int = 0
    p_intensity: Mapping[str, float] = field(default_factory=lambda: {"ct": 0.1, "mr": 0.2})
    brightness_range: tuple[float, float] = (0.7, 1.3)
    brightness_shift_std: float = 0.1
    contrast_range: tuple[float, float] = (0.7, 1.3)
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_std_max: float = 0.1
    blur_sigma_range: tuple[float, float] = (0.5, 1.0)
    mirror_axes: tuple[int, ...] = ()
    p_mirror: float = 0.5


@dataclass(frozen=True)
class EMASettings:
    enabled: bool = True
    decay: float = 0.99


@dataclass(frozen=True)
class ValidationSettings:
    """``every`` iterations (0 = only at the end) on ``split`` of every dataset, with
    sliding-window ``overlap``; ``max_cases`` per dataset (0 = all)."""

    every: int = 1000
    split: str = "val"
    overlap: float = 0.5
    max_cases: int = 0
