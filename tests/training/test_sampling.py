"""Preprocessing cache and mixed-batch sampling: foreground share, padding, exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from hermes_model.config import PreprocessConfig
from hermes_model.datasets.cards import load_card
from hermes_model.errors import ConfigError
from hermes_model.training.cache import CachedCase, CachedDataset, build_cache
from hermes_model.training.sampling import MixedBatchSampler, collate, make_loader

REPO = Path(__file__).resolve().parents[2]
HIPPOCAMPUS = REPO.parent / "shared" / "data" / "hippocampus"
TASKS = ["hippocampus/anterior", "hippocampus/posterior", "kits/kidney"]


def _dataset(
    folder: Path, name: str, volumes: list[tuple[np.ndarray, np.ndarray]], labels: dict[int, str]
) -> CachedDataset:
    """A cached dataset written directly (the cache's file format, without preprocessing)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, (image, label) in enumerate(volumes):
        case_id = f"{name}_{i}"
        values = [int(v) for v in np.unique(label) if v]  # every value, mapped or not
        rows = [np.c_[np.full((label == v).sum(), v), np.argwhere(label == v)] for v in values]
        table = np.concatenate(rows).astype(np.int32) if rows else np.zeros((0, 4), np.int32)
        for suffix, array in (("", image), ("_label", label), ("_fg", table)):
            np.save(folder / f"{case_id}{suffix}.npy", array)
        counts = {v: int((label == v).sum()) for v in values}
        cases.append(
            CachedCase(
                case_id, folder / f"{case_id}.npy", folder / f"{case_id}_label.npy",
                folder / f"{case_id}_fg.npy", image.shape, float(image.min()), counts,
            )
        )  # fmt: skip
    return CachedDataset(name, "mr", labels, tuple(cases), folder)


def _sparse(seed: int, shape: tuple[int, int, int] = (40, 36, 32)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 1, shape).astype(np.float16)
    label = np.zeros(shape, np.uint8)
    label[30:33, 3:6, 25:28] = 1  # a small structure far from the centre
    label[5:7, 28:30, 3:5] = 2
    return image, label


@pytest.fixture()
def two_datasets(tmp_path: Path) -> list[CachedDataset]:
    hippo = {1: TASKS[0], 2: TASKS[1]}
    a = _dataset(tmp_path / "a", "a", [_sparse(i) for i in range(3)], hippo)
    b = _dataset(tmp_path / "b", "b", [_sparse(9, (20, 24, 28))], {1: TASKS[2]})
    return [a, b]


def test_foreground_fraction_holds(two_datasets: list[CachedDataset]) -> None:
    a = two_datasets[:1]
    n, patch = 300, (8, 8, 8)
    sampler = MixedBatchSampler(a, TASKS, patch, foreground_fraction=0.33, seed=1)
    requests = [sampler.draw() for _ in range(n)]
    assert sum(r.fg_row >= 0 for r in requests) == math.floor(n * 0.33)
    centred = sum(bool(sampler.load(r).targets[:, 4, 4, 4].any()) for r in requests)
    assert centred >= math.floor(n * 0.33)
    random_only = MixedBatchSampler(a, TASKS, patch, foreground_fraction=0.0, seed=1)
    hits = sum(bool(random_only.sample().targets.any()) for _ in range(n))
    assert hits < 0.15 * n  # the structures are small: random patches rarely touch them


def test_foreground_patches_centre_only_on_mapped_labels(tmp_path: Path) -> None:
    # Label 2 is present but not mapped (as after a recipe's label override): never a centre.
    data = _dataset(tmp_path, "m", [_sparse(i) for i in range(2)], {1: TASKS[2]})
    sampler = MixedBatchSampler([data], TASKS, (4, 4, 4), foreground_fraction=1.0, seed=3)
    assert all(bool(sampler.sample().targets[0, 2, 2, 2]) for _ in range(40))


def test_foreground_weights_oversample_a_structure(two_datasets: list[CachedDataset]) -> None:
    a, n, patch = two_datasets[:1], 400, (4, 4, 4)

    def posterior_share(**weights: float) -> float:
        sampler = MixedBatchSampler(
            a, TASKS, patch, foreground_fraction=1.0, seed=2, foreground_weights=weights
        )
        centres = [sampler.sample().targets[:, 2, 2, 2] for _ in range(n)]
        assert all(bool(c.any()) for c in centres)  # still centred on a structure
        return sum(bool(c[1]) for c in centres) / n

    assert abs(posterior_share() - 0.5) < 0.08  # uniform over the two structures
    assert abs(posterior_share(**{TASKS[1]: 4.0}) - 0.8) < 0.08  # 4 : 1
    with pytest.raises(ConfigError, match="foreground_weights"):
        MixedBatchSampler(a, TASKS, patch, foreground_weights={"openkbp/larynx": 2.0})


def test_small_image_is_padded_with_its_minimum(tmp_path: Path) -> None:
    image = np.arange(5 * 6 * 4, dtype=np.float32).reshape(5, 6, 4) + 10.0
    label = np.zeros((5, 6, 4), np.uint8)
    label[2, 3, 1] = 1
    data = _dataset(tmp_path, "s", [(image, label)], {1: TASKS[2]})
    sampler = MixedBatchSampler([data], TASKS, (8, 8, 8), foreground_fraction=0.5)
    for _ in range(6):
        sample = sampler.sample()
        assert sample.image.shape == (1, 8, 8, 8) and sample.targets.shape == (1, 8, 8, 8)
        inside = sample.image[0] != 10.0  # the minimum (10) is also the padding value
        assert int(inside.sum()) == image.size - 1  # the whole image fits, nothing cut off
        assert float(sample.image.sum()) == pytest.approx(image.sum() + 10.0 * (512 - image.size))
        assert int(sample.targets.sum()) == 1


def test_batches_pad_tasks_and_weights_pick_datasets(two_datasets: list[CachedDataset]) -> None:
    sampler = MixedBatchSampler(two_datasets, TASKS, (8, 8, 8), weights=[3.0, 1.0], seed=2)
    picks = [sampler.draw().dataset for _ in range(600)]
    assert picks.count(0) / 600 == pytest.approx(0.75, abs=0.06)
    samples = [sampler.sample() for _ in range(40)]
    batch = collate([s for s in samples if s.dataset == "a"][:2] + [
        next(s for s in samples if s.dataset == "b")
    ])  # fmt: skip
    assert batch.image.shape == (3, 1, 8, 8, 8) and batch.targets.shape == (3, 2, 8, 8, 8)
    assert batch.task_idx.tolist() == [[0, 1], [0, 1], [2, -1]]
    assert batch.task_mask.tolist() == [[True, True], [True, True], [True, False]]
    assert int(batch.targets[2, 1].sum()) == 0
    assert batch.modality_idx.tolist() == [5, 5, 5]  # the registry's mr row (no model rows given)
    rows = MixedBatchSampler(two_datasets, TASKS, (8, 8, 8), seed=2, modalities=["ct", "mr"])
    assert {rows.sample().modality for _ in range(5)} == {1}  # a ct/mr model's own mr row


def test_state_round_trip_gives_identical_next_batches(two_datasets: list[CachedDataset]) -> None:
    def make(rank: int = 0) -> MixedBatchSampler:
        return MixedBatchSampler(two_datasets, TASKS, (8, 8, 8), seed=5, rank=rank, world_size=2)

    first = make()
    for _ in range(3):
        first.next_batch(4)
    state = json.loads(json.dumps(first.state_dict()))
    expected = [first.next_batch(4) for _ in range(2)]
    resumed = make()
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.next_batch(4)
        assert got.case_ids == want.case_ids
        assert torch.equal(got.image, want.image) and torch.equal(got.targets, want.targets)
        assert torch.equal(got.task_idx, want.task_idx)
    other_rank = make(rank=1)
    other_rank.load_state_dict(state)
    assert not torch.equal(other_rank.next_batch(4).image, expected[0].image)
    with pytest.raises(ConfigError, match="cannot resume"):
        MixedBatchSampler(two_datasets[:1], TASKS, (8, 8, 8), seed=5).load_state_dict(state)


@pytest.mark.workers
def test_loader_workers_give_the_in_process_stream(two_datasets: list[CachedDataset]) -> None:
    reference = MixedBatchSampler(two_datasets, TASKS, (8, 8, 8), seed=4)
    want = [reference.next_batch(3) for _ in range(3)]
    loader = make_loader(MixedBatchSampler(two_datasets, TASKS, (8, 8, 8), seed=4), 3, 2)
    for batch, expected in zip(loader, want, strict=False):
        assert batch.next_position == expected.next_position
        assert torch.equal(batch.image, expected.image)
        assert torch.equal(batch.targets, expected.targets)


# --- the cache ------------------------------------------------------------------------------

AFFINE = np.array(  # flipped, permuted and anisotropic: (i, j, k) -> (-y, z, x), 1/2/1.5 mm
    [[0.0, 0.0, 1.5, -20.0], [-1.0, 0.0, 0.0, 30.0], [0.0, 2.0, 0.0, -10.0], [0, 0, 0, 1.0]]
)


def _msd_folder(root: Path, n: int) -> Path:
    entries = []
    for i in range(n):
        rng = np.random.default_rng(i)
        label = np.zeros((20, 14, 16), np.uint8)
        label[4:12, 3:9, 5:11] = 1
        label[13:16, 9:12, 2:5] = 2
        image = 100 + 80 * (label == 1) + 160 * (label == 2) + rng.normal(0, 5, label.shape)
        for kind, array in (("imagesTr", image.astype(np.int16)), ("labelsTr", label)):
            (root / kind).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, AFFINE), str(root / kind / f"c_{i}.nii.gz"))
        entries.append({"image": f"./imagesTr/c_{i}.nii.gz", "label": f"./labelsTr/c_{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"training": entries}))
    card = root / "card.toml"
    card.write_text(
        'name = "hippocampus"\nroot = "."\nlayout = "msd"\nmodality = "ct"\n'
        f'[labels]\n1 = "{TASKS[0]}"\n2 = "{TASKS[1]}"\n[split]\nfractions = {{ all = 1.0 }}\n'
    )
    return card


def test_cache_prepares_aligned_arrays_and_resumes(tmp_path: Path) -> None:
    card = load_card(_msd_folder(tmp_path / "data", 3))
    config = PreprocessConfig(spacing=(1.5, 1.5, 1.5), patch_size=(16, 16, 16))
    cached = build_cache(card, config, tmp_path / "cache", progress=False)
    assert [c.case_id for c in cached.cases] == ["c_0", "c_1", "c_2"]
    case = cached.cases[0]
    image, label = np.load(case.image, mmap_mode="r"), np.load(case.label, mmap_mode="r")
    assert image.dtype == np.float16 and label.dtype == np.uint8
    assert image.shape == label.shape == case.shape == (16, 13, 19)  # RAS at 1.5 mm
    # Same voxels: the label-1 region is bright, the label-2 region brighter, background dark.
    means = [float(image[label == v].astype(np.float32).mean()) for v in (0, 1, 2)]
    assert means[0] < means[1] - 1.0 and means[1] < means[2] - 0.5
    assert set(case.foreground_counts) == {1, 2}
    sidecar = json.loads((cached.folder / "c_0.json").read_text())
    assert sidecar["spacing"] == pytest.approx([1.5, 1.5, 1.5], abs=0.1)
    stamp = case.image.stat().st_mtime_ns
    again = build_cache(card, config, tmp_path / "cache", progress=False)  # all skipped
    assert again.cases == cached.cases and case.image.stat().st_mtime_ns == stamp
    other = build_cache(card, PreprocessConfig(spacing=(2.0, 2.0, 2.0)), tmp_path / "cache",
                        progress=False)  # fmt: skip
    assert other.folder != cached.folder and other.cases[0].shape != case.shape
    sampler = MixedBatchSampler([cached], TASKS, (16, 16, 16), foreground_fraction=1.0)
    batch = sampler.next_batch(2)
    assert batch.targets.shape == (2, 2, 16, 16, 16) and bool(batch.targets.any())


def test_cache_names_failed_cases_and_keeps_the_others(tmp_path: Path) -> None:
    root = tmp_path / "data"
    card = load_card(_msd_folder(root, 3))
    nib.save(
        nib.Nifti1Image(np.zeros((20, 14, 15), np.uint8), AFFINE), str(root / "labelsTr/c_1.nii.gz")
    )
    config = PreprocessConfig(spacing=(1.5, 1.5, 1.5))
    with pytest.raises(ConfigError, match="1 of 3 cases.*case c_1: image .* not on the same grid"):
        build_cache(card, config, tmp_path / "cache", progress=False)
    finished = sorted(p.name for p in (tmp_path / "cache").glob("*/*.json"))
    assert finished == ["c_0.json", "c_2.json", "settings.json"]
    assert not list((tmp_path / "cache").glob("*/.*.tmp"))


@pytest.mark.slow  # two spawned workers import torch: several seconds
def test_cache_in_parallel_worker_processes(tmp_path: Path) -> None:
    card = load_card(_msd_folder(tmp_path / "data", 4))
    config = PreprocessConfig(spacing=(1.5, 1.5, 1.5))
    serial = build_cache(card, config, tmp_path / "serial", progress=False)
    parallel = build_cache(card, config, tmp_path / "parallel", workers=2, progress=False)
    for a, b in zip(serial.cases, parallel.cases, strict=True):
        assert np.array_equal(np.load(a.image), np.load(b.image))
        assert np.array_equal(np.load(a.label), np.load(b.label))


@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason=f"real data absent: {HIPPOCAMPUS}")
def test_real_hippocampus_cases_cache_and_sample(tmp_path: Path) -> None:
    card = load_card(REPO / "train" / "datasets" / "hippocampus.toml")
    cases = card.cases("val")[:3]
    config = PreprocessConfig(spacing=(1.0, 1.0, 1.0), patch_size=(32, 48, 32))
    cached = build_cache(card, config, tmp_path, cases, dtype="float32", progress=False)
    for case, source in zip(cached.cases, cases, strict=True):
        label = nib.load(str(source.label)).get_fdata()
        assert case.shape == label.shape  # 1 mm RAS in, 1 mm RAS out
        assert np.array_equal(np.load(case.label), label.astype(np.uint8))
    sampler = MixedBatchSampler([cached], TASKS, (32, 48, 32), foreground_fraction=1.0, seed=0)
    batch = sampler.next_batch(2)
    assert batch.task_idx.tolist() == [[0, 1], [0, 1]]
    assert bool(batch.targets[:, 0].any()) and bool(batch.targets[:, 1].any())
