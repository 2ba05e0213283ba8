"""A recipe dataset with its own spacing: cached at it, recorded per group in the checkpoint,
with what the group's training scans looked like (for segment's out-of-distribution warnings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from toy_data import MR_TASKS, SPACING, write_dataset, write_recipe

from hermes_model.errors import ConfigError
from hermes_model.io import read_image
from hermes_model.pipeline import ood
from hermes_model.training.loop import train
from hermes_model.training.recipe import load_recipe
from hermes_model.weights.checkpoint import read_metadata

CT_TASKS = {1: "openkbp/brainstem", 2: "openkbp/larynx"}


def _recipe(tmp_path: Path, ct_spacing: str) -> Path:
    mr = write_dataset(tmp_path, "toymr", MR_TASKS, cases=3)
    ct = write_dataset(tmp_path, "toyct", CT_TASKS, cases=3, modality="ct", seed=1)
    path = write_recipe(tmp_path, [mr, ct], tmp_path / "cache", train={"iterations": 1})
    text = path.read_text().replace(
        f'card = "{ct}"\nweight = 1.0', f'card = "{ct}"\nweight = 1.0\nspacing = {ct_spacing}'
    )
    path.write_text(text)
    return path


def test_each_dataset_is_cached_and_recorded_at_its_group_spacing(tmp_path: Path) -> None:
    recipe = load_recipe(_recipe(tmp_path, "[3.0, 3.0, 3.0]"))
    assert [e.spacing for e in recipe.datasets] == [None, (3.0, 3.0, 3.0)]
    train(recipe, tmp_path / "run", progress=False)
    meta = read_metadata(tmp_path / "run" / "last.safetensors")
    assert meta["group_spacing"] == {"toymr": [SPACING] * 3, "toyct": [3.0, 3.0, 3.0]}
    assert meta["preprocess"]["spacing"] == [SPACING] * 3  # the default stays
    shapes = {}
    for sidecar in (tmp_path / "cache").glob("*/*_000.json"):
        doc = json.loads(sidecar.read_text())
        shapes[doc["case_id"]] = (tuple(doc["shape"]), tuple(doc["spacing"]))
    assert shapes["toymr_000"] == ((32, 32, 32), (SPACING,) * 3)
    assert shapes["toyct_000"] == ((16, 16, 16), (3.0, 3.0, 3.0))  # 32 voxels x 1.5 mm / 3 mm
    # Each group's training scans, summarised from the cache (no second read of the images).
    stats = meta[ood.KEY]
    assert set(stats) == {"toymr", "toyct"}
    for group, modality in (("toymr", "mr"), ("toyct", "ct")):
        entry = stats[group]
        assert entry["cases"] == 2 and entry["split"] == "train" and entry["modality"] == modality
        spacing = entry["spacing_mm"]
        assert spacing["min"] == spacing["max"] == spacing["low"] == [SPACING] * 3
        assert entry["fov_mm"]["max"] == [32 * SPACING] * 3
        assert entry["intensity"]["units"] == {"mr": "z", "ct": "HU"}[modality]
        assert entry["version"] == ood.VERSION and entry["intensity"]["region"] == "body"
    # A training scan is inside its group's range; the same scan at 5x the spacing is not.
    array, image_meta = read_image(tmp_path / "toyct" / "imagesTr" / "toyct_000.nii.gz")
    assert ood.check_scan(array, image_meta, "ct", meta, list(CT_TASKS.values())) == []
    coarse = type(image_meta).from_affine(image_meta.affine @ np.diag([5, 5, 5, 1]), array.shape)
    warnings = ood.check_scan(array, coarse, "ct", meta, list(CT_TASKS.values()))
    assert len(warnings) == 1 and "toyct" in warnings[0]


def test_a_bad_dataset_spacing_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"datasets.1.spacing"):
        load_recipe(_recipe(tmp_path, "[3.0, 0.0, 3.0]"))
