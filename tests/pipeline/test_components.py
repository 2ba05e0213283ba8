"""hermes_model.pipeline.components:
keep the largest connected component, chosen per task on validation,
recorded in the weights, applied by the Segmenter and named in the legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from hermes_model import create_model, save_checkpoint
from hermes_model.config import PreprocessConfig
from hermes_model.errors import ConfigError
from hermes_model.io import ImageMeta
from hermes_model.pipeline import components, postprocess
from hermes_model.pipeline.preprocess import prepare
from hermes_model.pipeline.segmenter import Segmenter
from hermes_model.weights.checkpoint import read_metadata, replace_metadata, tensor_digest

TASKS = ["hippocampus/anterior", "hippocampus/posterior"]


def _two_blobs(shape: tuple[int, int, int] = (20, 16, 12)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[2:8, 2:8, 2:8] = True  # 216 voxels: the organ
    mask[14:17, 10:13, 8:11] = True  # 27 voxels: a stray island
    return mask


def test_only_the_largest_component_is_kept() -> None:
    mask = _two_blobs()
    kept = components.largest_component(mask)
    assert kept.sum() == 216 and kept[2:8, 2:8, 2:8].all() and not kept[14:17].any()
    assert mask.sum() == 216 + 27  # the input is not changed


def test_voxels_touching_at_a_corner_are_one_component() -> None:
    mask = np.zeros((6, 6, 6), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = mask[3, 3, 3] = True  # a diagonal thin structure
    mask[5, 0, 5] = True
    assert components.largest_component(mask).sum() == 3


def test_empty_and_single_component_masks_come_back_unchanged() -> None:
    empty = np.zeros((4, 4, 4), bool)
    assert components.largest_component(empty) is empty
    one = np.zeros((4, 4, 4), bool)
    one[1:3, 1:3, 1:3] = True
    assert components.largest_component(one) is one
    with pytest.raises(ValueError, match="boolean"):
        components.largest_component(one.astype(np.uint8))


def test_a_task_is_chosen_only_when_its_mean_dice_rises() -> None:
    raw = {"a": [0.70, 0.80], "b": [0.90, 0.90], "c": [0.5, 0.6]}
    filtered = {"a": [0.85, 0.80], "b": [0.90, 0.90], "c": [0.5, 0.55]}
    assert components.choose_tasks(raw, filtered) == ["a"]  # b ties, c falls
    with pytest.raises(ValueError, match="2 cases without the filter, 1 with"):
        components.choose_tasks({"a": [0.1, 0.2]}, {"a": [0.1]})


def test_choices_resolve_against_the_weights_record() -> None:
    metadata = {components.METADATA_KEY: ["x/a", "x/gone"]}
    tasks = ["x/a", "x/b"]
    assert components.resolve_tasks("auto", tasks, metadata) == {"x/a"}
    assert components.resolve_tasks("auto", tasks, {}) == set()
    assert components.resolve_tasks("all", tasks, metadata) == {"x/a", "x/b"}
    assert components.resolve_tasks("none", tasks, metadata) == set()
    assert components.resolve_tasks(["x/b"], tasks, metadata) == {"x/b"}
    with pytest.raises(ConfigError, match="not auto, all, none"):
        components.resolve_tasks("some", tasks, metadata)
    with pytest.raises(ConfigError, match="must list task ids"):
        components.resolve_tasks("auto", tasks, {components.METADATA_KEY: "x/a"})


def test_finalise_filters_the_chosen_tasks_masks_but_not_their_probabilities() -> None:
    shape = (20, 16, 12)
    meta = ImageMeta.from_affine(np.eye(4), shape)
    prepared = prepare(np.zeros(shape, np.float32) + np.arange(12, dtype=np.float32), meta,
                       PreprocessConfig(spacing=(1.0, 1.0, 1.0)), "mr")  # fmt: skip
    blobs = torch.from_numpy(_two_blobs(shape)).float() * 0.9
    probs = torch.stack([blobs, blobs])
    out = postprocess.finalise(probs, prepared, TASKS, keep_largest={TASKS[0]})
    assert int(out.masks[0].sum()) == 216 and int(out.masks[1].sum()) == 243
    assert out.voxel_counts == {TASKS[0]: 216, TASKS[1]: 243}
    island = (slice(14, 17), slice(10, 13), slice(8, 11))
    assert (out.label_map[island] == 2).all()  # the unfiltered task takes the island
    assert out.probabilities is not None and float(out.probabilities[0][island].min()) > 0.89


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    plain = save_checkpoint(create_model("tiny", tasks=TASKS), folder / "plain.safetensors",
                            preprocess=PreprocessConfig(spacing=(1.0, 1.0, 1.0),
                                                        patch_size=(16, 16, 16)))  # fmt: skip
    doc = {**read_metadata(plain), components.METADATA_KEY: [TASKS[1]]}
    out = replace_metadata(plain, folder / "recorded.safetensors", doc)
    assert tensor_digest(out) == tensor_digest(plain)
    return out


def test_the_segmenter_applies_what_the_weights_record(recorded: Path) -> None:
    rng = np.random.default_rng(0)
    array = ndimage.gaussian_filter(rng.normal(size=(24, 20, 18)), 1.0).astype(np.float32)
    meta = ImageMeta.from_affine(np.diag([1.0, 1.0, 1.0, 1.0]), array.shape, source="mr")
    auto = Segmenter(recorded, device="cpu").segment((array, meta), modality="mr")
    assert auto.largest_component == [TASKS[1]]
    assert ndimage.label(auto.mask(TASKS[1]), np.ones((3, 3, 3)))[1] <= 1
    legend = postprocess.legend(auto, "mr.nii.gz")
    assert [e.get("largest_component_only", False) for e in legend["labels"]] == [False, True]
    none = Segmenter(recorded, device="cpu", largest_component="none")
    plain = none.segment((array, meta), modality="mr")
    assert plain.largest_component == []
    assert ndimage.label(plain.mask(TASKS[1]), np.ones((3, 3, 3)))[1] > 1  # there was an island
    assert auto.mask(TASKS[1]).sum() < plain.mask(TASKS[1]).sum()
    assert not (auto.mask(TASKS[1]) & ~plain.mask(TASKS[1])).any()
    assert (auto.mask(TASKS[0]) == plain.mask(TASKS[0])).all()
    named = Segmenter(recorded, device="cpu", largest_component="hippocampus/anterior")
    assert named.keep_largest == {TASKS[0]}
