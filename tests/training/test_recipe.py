"""Recipes: every shipped recipe parses; bases, overrides and bad keys behave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hermes_model.errors import ConfigError
from hermes_model.training.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "train" / "recipes").glob("*.toml"))
HIPPOCAMPUS = REPO.parent / "shared" / "data" / "hippocampus"


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_parse(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.output == f"runs/{path.stem}" or path.stem.endswith("traditional")
    assert all(entry.card.is_file() for entry in recipe.datasets)
    json.dumps(recipe.to_dict())


def test_upstream_recipe_matches_the_paper() -> None:
    r = load_recipe(REPO / "train" / "recipes" / "universal7_hermes_r.toml")
    assert [e.card.stem for e in r.datasets] == [
        "bcv", "lits", "kits", "amos_ct", "structseg", "amos_mr", "chaos"
    ]  # fmt: skip
    assert r.preprocess.spacing == (1.5, 1.5, 1.5)
    assert r.preprocess.patch_size == (128, 128, 128)
    assert (r.train.batch_size, r.train.iterations) == (16, 200 * 400)
    assert (r.optimizer.name, r.optimizer.lr, r.loss.lambda_dice) == ("lamb", 0.002, 1.0)
    assert r.model.config.modality_tokens == 10
    assert r.model.config.fusion_encoder_scales == (4, 8, 16)


def test_ablations_switch_the_model_only() -> None:
    folder = REPO / "train" / "recipes"
    full = load_recipe(folder / "ablation_full.toml")
    single = load_recipe(folder / "ablation_single_scale.toml").model.config
    assert single.fusion_encoder_scales == (16,) and not single.modality_prior
    assert not load_recipe(folder / "ablation_unidirectional.toml").model.config.bidirectional
    assert not load_recipe(folder / "ablation_no_hierarchy.toml").model.config.hierarchical
    assert not load_recipe(folder / "ablation_no_modality.toml").model.config.modality_prior
    for n in (1, 5, 20):
        recipe = load_recipe(folder / f"ablation_modality_len_{n}.toml")
        assert recipe.model.config.modality_tokens == n
        assert recipe.train == full.train and recipe.datasets == full.datasets
    assert full.model.config.base_channels == 16


@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason=f"real data absent: {HIPPOCAMPUS}")
def test_transfer_subset_sizes_follow_the_paper() -> None:
    # Uses the hippocampus card (the pancreas data is not here): 1% of 188 -> 2 cases.
    path = REPO / "train" / "recipes" / "hippocampus.toml"
    for fraction, count in ((0.01, 2), (0.1, 19), (1.0, 188)):
        recipe = load_recipe(path, **{"datasets.0.subset": fraction})
        cases = recipe.datasets[0].cases()
        assert len(cases) == count
    other = load_recipe(path, **{"datasets.0.subset": 0.1, "datasets.0.subset_seed": 1})
    assert (
        other.datasets[0].cases()
        != load_recipe(path, **{"datasets.0.subset": 0.1}).datasets[0].cases()
    )


def test_generalisation_recipe_maps_segthor_labels_to_structseg_tasks() -> None:
    recipe = load_recipe(REPO / "train" / "recipes" / "segthor_generalisation.toml")
    assert recipe.train.iterations == 0 and recipe.validation.split == "all"
    card = recipe.datasets[0].load()
    assert card.tasks == ("structseg/esophagus", "structseg/heart", "structseg/trachea")
    assert card.ignore_labels == (4,)  # the aorta: StructSeg has no such task


def test_overrides_dotted_and_underscored() -> None:
    path = REPO / "train" / "recipes" / "hippocampus_smoke.toml"
    recipe = load_recipe(path, train__iterations=7, seed=3, **{"optimizer.lr": 0.01})
    assert (recipe.train.iterations, recipe.seed, recipe.optimizer.lr) == (7, 3, 0.01)
    swapped = load_recipe(path, **{"datasets.0.card": "../datasets/bcv.toml"})
    assert swapped.datasets[0].card.name == "bcv.toml"


def test_base_recipe_values_are_inherited() -> None:
    smoke = load_recipe(REPO / "train" / "recipes" / "hippocampus_smoke.toml")
    full = load_recipe(REPO / "train" / "recipes" / "hippocampus.toml")
    assert smoke.model.preset == "tiny"
    assert smoke.optimizer == full.optimizer
    assert smoke.preprocess.spacing == full.preprocess.spacing == (1.0, 1.0, 1.0)
    assert smoke.output == "runs/hippocampus_smoke"


def test_separate_recipes_differ_from_the_universal_one_only_in_their_data() -> None:
    """Issue 27 step 3: the separate v7 models take v7 as base and replace only what names data
    and the budget; the hippocampus one clears the OpenKBP BCE weights with an empty table."""
    recipes = REPO / "train" / "recipes"
    universal = load_recipe(recipes / "bundled_universal_v7.toml").to_dict()
    for name, cleared in (("openkbp", False), ("hippocampus", True)):
        separate = load_recipe(recipes / f"bundled_{name}_v7.toml").to_dict()
        assert [d["card"] for d in separate["datasets"]] == [
            d["card"] for d in universal["datasets"] if d["card"].endswith(f"{name}.toml")
        ]
        weights = separate["loss"]["pos_weight"]
        assert weights == ({} if cleared else universal["loss"]["pos_weight"])
        for key in ("model", "preprocess", "optimizer", "schedule", "augment", "ema"):
            assert separate[key] == universal[key], key
        assert separate["seed"] == universal["seed"]
        # The budget: the dataset's patches inside the universal run, its weight's share.
        share = separate["datasets"][0]["weight"] / sum(d["weight"] for d in universal["datasets"])
        assert separate["train"]["iterations"] == round(universal["train"]["iterations"] * share)
        assert {**separate["train"], "iterations": 0} == {**universal["train"], "iterations": 0}


def _recipe(tmp_path: Path, body: str) -> Path:
    card = REPO / "train" / "datasets" / "hippocampus.toml"
    path = tmp_path / "r.toml"
    path.write_text(
        f'name = "t"\n[model]\npreset = "tiny"\n[[datasets]]\ncard = "{card}"\n'
        "[preprocess]\npatch_size = [32, 32, 32]\n" + body
    )
    return path


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("[train]\nbatchsize = 2\n", "unknown key 'train.batchsize'"),
        ("[trian]\nbatch_size = 2\n", "unknown key 'trian'"),
        ("[train]\nbatch_size = 2.5\n", "'train.batch_size' must be an integer"),
        ("[optimizer]\nname = 'sgd'\n", "optimizer.name"),
        ("[loss]\ndice_reduction = 'mean'\n", "loss.dice_reduction"),
        ("[loss]\npos_weight = { 'openkbp/esophagus' = 0 }\n", "loss.pos_weight"),
        ("[loss]\npos_weight = { 'openkbp/esophagus' = 'x' }\n", "must be a number"),
        ("[augment]\nscale_range = [1.4, 0.7]\n", "augment.scale_range"),
        ("[augment]\np_intensity = { us = 0.1 }\n", "unknown modalities"),
        ("[schedule]\nwarmup_iterations = 5000\n[train]\niterations = 10\n", "exceeds"),
    ],
)
def test_bad_keys_and_values_name_key_and_file(tmp_path: Path, body: str, problem: str) -> None:
    path = _recipe(tmp_path, body)
    with pytest.raises(ConfigError, match=problem) as info:
        load_recipe(path)
    assert str(path) in str(info.value)


def test_bad_override_and_model_option(tmp_path: Path) -> None:
    path = _recipe(tmp_path, "")
    with pytest.raises(ConfigError, match="unknown key 'train.iteration'"):
        load_recipe(path, train__iteration=3)
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        load_recipe(path, **{"trian.iterations": 3})
    with pytest.raises(ConfigError, match=r"\[model\].*unknown model option"):
        load_recipe(path, **{"model.hierarchy": False})
    with pytest.raises(ConfigError, match="'seed' must be >= 0"):
        load_recipe(path, seed=-1)
    with pytest.raises(ConfigError, match="patch_size"):
        load_recipe(path, **{"preprocess.patch_size": [30, 32, 32]})


def test_missing_card_names_recipe_and_card(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('name = "t"\n[model]\npreset = "tiny"\n[[datasets]]\ncard = "nope.toml"\n')
    with pytest.raises(ConfigError, match=r"datasets\[0\].*nope.toml does not exist"):
        load_recipe(path)
