"""Mixed batches across datasets (paper Algorithm 1), reproducible and resumable.

For each sample the sampler picks a dataset by weight, a case of it, and a patch; at least
``foreground_fraction`` of the patches are centred on a labelled voxel (of a label value chosen
uniformly among those present, so small structures are seen). A patch that reaches beyond the
image is padded with the image minimum (label 0). Each sample carries the binary targets of its
own dataset's tasks; :func:`collate` pads the task axis with -1 / a False mask. A task that the
sample's case does not annotate (card ``[annotated]``) keeps its slot and token but is False in
``Batch.annotated``, so ``Batch.loss_mask`` drops it from the loss like a padded slot.

Reproducibility without pickled RNG state: draw number ``n`` of rank ``r`` uses a fresh
``numpy.random.Generator`` seeded with ``(seed, r, n)``, so the whole state is ``position`` (how
many draws were consumed) plus a fingerprint of the data. Different ranks draw different
streams; all ranks consume the same number of draws, so one saved state resumes every rank.
A draw (:meth:`MixedBatchSampler.draw`) is cheap metadata work; reading the arrays
(:meth:`MixedBatchSampler.load`) is a pure function of the draw and can run in DataLoader
workers. Each :class:`Batch` records ``next_position``: save
``sampler.state_dict(position=batch.next_position)`` to resume exactly after that batch even
though a DataLoader draws ahead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hermes_model.datasets.annotation import is_annotated
from hermes_model.errors import ConfigError
from hermes_model.training.cache import CachedDataset

__all__ = ["PatchRequest", "Sample", "Batch", "MixedBatchSampler", "collate", "make_loader"]


@dataclass(frozen=True)
class PatchRequest:
    """What to read for one sample. ``fg_row`` >= 0: centre on that row of the case's foreground
    table; else place the patch at ``offset`` (fractions in [0, 1) of the free range per axis)."""

    position: int
    dataset: int
    case: int
    fg_row: int
    offset: tuple[float, float, float]


@dataclass
class Sample:
    """One training patch.

    Attributes:
        image: (1, *patch) float32.
        targets: (T_k, *patch) uint8 in {0, 1}, one channel per task of the dataset.
        task_idx: (T_k,) int64, the tasks' indices in the model's task list.
        modality: modality id: the row of the model's modalities (``model.modalities``).
        annotated: (T_k,) bool, whether the case annotates each task (card ``[annotated]``).
    """

    image: torch.Tensor
    targets: torch.Tensor
    task_idx: torch.Tensor
    modality: int
    dataset: str
    case_id: str
    position: int
    annotated: torch.Tensor | None = None


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        image: (B, 1, *patch) float32.
        targets: (B, Tmax, *patch) uint8; zero in padded task slots.
        task_idx: (B, Tmax) int64, -1 in padded slots (the model's key-padding convention).
        task_mask: (B, Tmax) bool, True for real tasks (what the model attends to).
        modality_idx: (B,) int64.
        next_position: sampler position just after this batch's draws (for ``state_dict``).
        annotated: (B, Tmax) bool, True where the sample's case annotates the task (False in
            padded slots); see :attr:`loss_mask`.
    """

    image: torch.Tensor
    targets: torch.Tensor
    task_idx: torch.Tensor
    task_mask: torch.Tensor
    modality_idx: torch.Tensor
    datasets: list[str]
    case_ids: list[str]
    next_position: int
    annotated: torch.Tensor

    @property
    def loss_mask(self) -> torch.Tensor:
        """(B, Tmax) bool: the (sample, task) pairs the loss counts: real and annotated."""
        return self.task_mask & self.annotated

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        """A copy with ``fn`` applied to every tensor field."""
        return dataclasses.replace(
            self, image=fn(self.image), targets=fn(self.targets), task_idx=fn(self.task_idx),
            task_mask=fn(self.task_mask), modality_idx=fn(self.modality_idx),
            annotated=fn(self.annotated),
        )  # fmt: skip

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True)."""
        return self._map(lambda t: t.pin_memory())


class MixedBatchSampler:
    """Draws patches from several cached datasets.

    Args:
        datasets: cached datasets (``cache.build_cache``).
        task_ids: the model's ordered task ids; every dataset task must be among them.
        patch_size: patch (D, H, W) in voxels; include any augmentation crop margin.
        weights: per-dataset sampling weights (normalised); None = proportional to the number
            of cases, i.e. a uniformly random training case (Algorithm 1).
        foreground_fraction: share of draws centred on a labelled voxel (exactly
            floor(n * fraction) of the first n draws).
        foreground_weights: task id -> relative chance that a foreground draw centres on that
            structure rather than another one the case has (default 1 each, i.e. uniform): a
            weight of 4 on a rare structure oversamples it where it is contoured.
        seed: base seed. rank / world_size: DDP process; each rank draws its own stream.
    """

    def __init__(
        self,
        datasets: Sequence[CachedDataset],
        task_ids: Sequence[str],
        patch_size: Sequence[int],
        *,
        weights: Sequence[float] | None = None,
        foreground_fraction: float = 0.33,
        foreground_weights: Mapping[str, float] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        modalities: Sequence[str] | None = None,
    ) -> None:
        from hermes_model.tasks import MODALITIES

        if not datasets or any(not d.cases for d in datasets):
            raise ConfigError("every dataset given to the sampler needs at least one cached case")
        if weights is None:
            weights = [float(len(d.cases)) for d in datasets]
        if len(weights) != len(datasets) or min(weights) <= 0:
            raise ConfigError(f"need one positive weight per dataset, got {list(weights)}")
        if not 0 <= foreground_fraction <= 1 or not 0 <= rank < world_size:
            raise ConfigError(
                f"foreground_fraction must lie in [0, 1] and 0 <= rank < world_size; got "
                f"{foreground_fraction}, rank {rank}, world size {world_size}"
            )
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise ConfigError(f"patch_size must be 3 positive sizes, got {tuple(patch_size)}")
        index = {t: i for i, t in enumerate(task_ids)}
        self.foreground_weights = dict(foreground_weights or {})
        if bad := {t: w for t, w in self.foreground_weights.items() if t not in index or w <= 0}:
            raise ConfigError(
                f"train.foreground_weights {bad}: each must name one of the model's tasks "
                f"({list(task_ids)}) with a positive weight"
            )
        self._task_idx, self._task_values = [], []
        for d in datasets:
            missing = [t for t in d.tasks if t not in index]
            if missing:
                raise ConfigError(
                    f"dataset {d.name}: task(s) {missing} are not among the model's tasks; "
                    "create the model with them (or drop the dataset)"
                )
            self._task_idx.append(torch.tensor([index[t] for t in d.tasks], dtype=torch.int64))
            self._task_values.append([[v for v in d.labels if d.labels[v] == t] for t in d.tasks])
        self.datasets = list(datasets)
        self.patch_size = (int(patch_size[0]), int(patch_size[1]), int(patch_size[2]))
        total = float(sum(weights))
        self.probabilities = np.array([w / total for w in weights])
        self.foreground_fraction = float(foreground_fraction)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.position = 0
        self._modality = [_modality_row(d.modality, modalities or MODALITIES) for d in datasets]
        self._fingerprint = self._make_fingerprint(list(task_ids))

    def _make_fingerprint(self, task_ids: list[str]) -> str:
        blob = json.dumps(
            {
                "datasets": [[d.name, [c.case_id for c in d.cases]] for d in self.datasets],
                "probabilities": [round(float(p), 12) for p in self.probabilities],
                "tasks": task_ids,
                "patch": self.patch_size,
                "foreground_fraction": self.foreground_fraction,
                **(
                    {"foreground_weights": self.foreground_weights}
                    if self.foreground_weights
                    else {}
                ),
            }
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _is_foreground(self, n: int) -> bool:
        f = self.foreground_fraction
        return math.floor((n + 1) * f + 1e-9) > math.floor(n * f + 1e-9)

    def draw(self) -> PatchRequest:
        """Decide the next sample (cheap: no array is read) and advance ``position``."""
        n = self.position
        self.position += 1
        rng = np.random.default_rng([self.seed, self.rank, n])
        k = int(rng.choice(len(self.datasets), p=self.probabilities))
        i = int(rng.integers(len(self.datasets[k].cases)))
        case = self.datasets[k].cases[i]
        counts, labels = case.foreground_counts, self.datasets[k].labels
        values = sorted(
            v for v in counts if v in labels and is_annotated(case.annotated, labels[v])
        )
        fg_row = -1
        if values and self._is_foreground(n):
            value = values[self._pick_structure(rng, [labels[v] for v in values])]
            first = sum(c for v, c in counts.items() if v < value)  # rows are sorted by value
            fg_row = first + int(rng.integers(counts[value]))
        u = rng.random(3)
        return PatchRequest(n, k, i, fg_row, (float(u[0]), float(u[1]), float(u[2])))

    def _pick_structure(self, rng: np.random.Generator, tasks: list[str]) -> int:
        """Which of a case's structures a foreground draw centres on (``foreground_weights``)."""
        if not self.foreground_weights:
            return int(rng.integers(len(tasks)))  # the stream of runs before the weights
        weights = np.array([self.foreground_weights.get(t, 1.0) for t in tasks])
        return int(rng.choice(len(tasks), p=weights / weights.sum()))

    def load(self, request: PatchRequest) -> Sample:
        """Read the patch of ``request`` (memory-mapped) and build its targets."""
        dataset = self.datasets[request.dataset]
        case = dataset.cases[request.case]
        if request.fg_row >= 0:
            row = np.load(case.foreground, mmap_mode="r")[request.fg_row]
            start = [int(c) - p // 2 for c, p in zip(row[1:], self.patch_size, strict=True)]
            start = [
                min(max(s, min(0, n - p)), max(0, n - p))
                for s, n, p in zip(start, case.shape, self.patch_size, strict=True)
            ]
        else:
            start = [
                int(u * (n - p + 1)) if n >= p else -int(u * (p - n + 1))
                for u, n, p in zip(request.offset, case.shape, self.patch_size, strict=True)
            ]
        image = _crop(np.load(case.image, mmap_mode="r"), start, self.patch_size, case.image_min)
        label = _crop(np.load(case.label, mmap_mode="r"), start, self.patch_size, 0)
        values = self._task_values[request.dataset]
        targets = np.stack([np.isin(label, v) for v in values]).astype(np.uint8)
        annotated = [is_annotated(case.annotated, t) for t in dataset.tasks]
        return Sample(
            image=torch.from_numpy(image.astype(np.float32))[None],
            targets=torch.from_numpy(targets),
            task_idx=self._task_idx[request.dataset].clone(),
            modality=self._modality[request.dataset],
            dataset=dataset.name,
            case_id=case.case_id,
            position=request.position,
            annotated=torch.tensor(annotated, dtype=torch.bool),
        )

    def sample(self) -> Sample:
        return self.load(self.draw())

    def next_batch(self, batch_size: int) -> Batch:
        """Draw, read and collate ``batch_size`` samples in this process."""
        return collate([self.sample() for _ in range(batch_size)])

    def request_batches(self, batch_size: int) -> Iterator[list[PatchRequest]]:
        """Endless lists of ``batch_size`` requests (a DataLoader ``batch_sampler``)."""
        while True:
            yield [self.draw() for _ in range(batch_size)]

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """Plain-JSON state; ``position`` defaults to the draws made so far."""
        return {
            "version": 1,
            "seed": self.seed,
            "position": self.position if position is None else int(position),
            "fingerprint": self._fingerprint,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after ``state['position']`` draws (from any rank's saved state)."""
        if state.get("seed") != self.seed or state.get("fingerprint") != self._fingerprint:
            raise ConfigError(
                "cannot resume the sampler: its seed, datasets, cases, weights, tasks or patch "
                "size differ from the checkpoint's; resume with the same recipe and cache"
            )
        self.position = int(state["position"])


def _crop(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float) -> np.ndarray:
    """``array[start : start + size]`` per axis, padded with ``fill`` where out of bounds."""
    out = np.full(tuple(size), fill, dtype=array.dtype)
    src, dst = [], []
    for s, p, n in zip(start, size, array.shape, strict=True):
        lo, hi = max(s, 0), min(s + p, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples; pad task slots to the batch's largest task count (-1 ids, False mask)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    t_max = max(len(s.task_idx) for s in samples)
    batch, patch = len(samples), tuple(samples[0].image.shape[1:])
    targets = torch.zeros((batch, t_max, *patch), dtype=torch.uint8)
    task_idx = torch.full((batch, t_max), -1, dtype=torch.int64)
    mask = torch.zeros((batch, t_max), dtype=torch.bool)
    annotated = torch.zeros((batch, t_max), dtype=torch.bool)
    for b, s in enumerate(samples):
        t = len(s.task_idx)
        targets[b, :t] = s.targets
        task_idx[b, :t] = s.task_idx
        mask[b, :t] = True
        annotated[b, :t] = True if s.annotated is None else s.annotated
    return Batch(
        image=torch.stack([s.image for s in samples]),
        targets=targets,
        task_idx=task_idx,
        task_mask=mask,
        modality_idx=torch.tensor([s.modality for s in samples], dtype=torch.int64),
        datasets=[s.dataset for s in samples],
        case_ids=[s.case_id for s in samples],
        next_position=max(s.position for s in samples) + 1,
        annotated=annotated,
    )


class _PatchDataset(Dataset[Sample]):
    def __init__(self, sampler: MixedBatchSampler) -> None:
        self.sampler = sampler

    def __getitem__(self, request: PatchRequest) -> Sample:  # type: ignore[override]
        return self.sampler.load(request)


class _RequestBatches:
    def __init__(self, sampler: MixedBatchSampler, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size

    def __iter__(self) -> Iterator[list[PatchRequest]]:
        return self.sampler.request_batches(self.batch_size)


def make_loader(
    sampler: MixedBatchSampler, batch_size: int, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader[Sample]:
    """An endless DataLoader of :class:`Batch` whose reads run in ``num_workers`` processes.

    Draws happen in the main process, in order, so the stream is the same for any number of
    workers; resume from ``batch.next_position`` (the loader draws ahead).
    """
    return DataLoader(
        _PatchDataset(sampler),
        batch_sampler=_RequestBatches(sampler, batch_size),  # type: ignore[arg-type]
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def _modality_row(modality: str, rows: Sequence[str]) -> int:
    """The row of ``modality`` among a model's modality rows; an MR sequence the model lacks
    uses its generic ``mr`` row (weights saved with the rows ``ct``, ``mr``)."""
    from hermes_model.tasks import modality_row

    row = modality_row(modality, rows)
    if row is not None:
        return list(rows).index(row)
    raise ConfigError(f"modality {modality!r} is not among the model's rows {list(rows)}")
