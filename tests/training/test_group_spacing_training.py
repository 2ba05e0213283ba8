"""A recipe dataset with its own spacing: cached at it, recorded per group in the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from toy_data import MR_TASKS, SPACING, write_dataset, write_recipe

from hermes_model.errors import ConfigError
from hermes_model.training.loop import train
from hermes_model.training.recipe import load_recipe
from hermes_model.weights import read_metadata

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


def test_a_bad_dataset_spacing_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"datasets.1.spacing"):
        load_recipe(_recipe(tmp_path, "[3.0, 0.0, 3.0]"))
