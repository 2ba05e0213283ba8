"""Incremental learning keeps every old task bit-identical and trains only the new tokens;
fine-tuning adds the new tasks and trains everything (paper §4.3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from toy_data import MR_TASKS, SPACING, train_losses, write_dataset, write_recipe

from hermes_model import create_model, save_checkpoint
from hermes_model.config import PreprocessConfig
from hermes_model.datasets.cards import load_card
from hermes_model.errors import ConfigError
from hermes_model.pipeline.windows import WindowSettings
from hermes_model.training import prepare
from hermes_model.training.cache import build_cache
from hermes_model.training.loop import train
from hermes_model.training.recipe import Recipe, load_recipe
from hermes_model.training.validation import (
    IncrementalCheckError,
    changed_tensors,
    check_old_tasks_unchanged,
)
from hermes_model.weights.checkpoint import load_checkpoint, read_metadata

# Two cores shared with other jobs: one torch thread per test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

NEW = {1: "toyct/organ"}
OLD_GROUPS = {"toymr": list(MR_TASKS.values())}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("incremental")
    torch.manual_seed(1)
    start = create_model("tiny", tasks=list(MR_TASKS.values()))
    return {
        "new": write_dataset(root, "toyct", NEW, cases=3, modality="ct", seed=2),
        "cache": root / "cache",
        "weights": save_checkpoint(start, root / "start.safetensors", task_groups=OLD_GROUPS),
    }


def _recipe(setup: dict[str, Path], folder: Path, **train_settings: object) -> Recipe:
    path = write_recipe(
        folder, [setup["new"]], setup["cache"],
        train={"iterations": 3, **train_settings},
        optimizer={"name": "adamw", "lr": 0.01, "weight_decay": 0.05},
    )  # fmt: skip
    return load_recipe(path)


def test_incremental_trains_only_new_tokens_and_old_outputs_stay_bit_identical(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    result = train(
        _recipe(setup, tmp_path), tmp_path / "run", init_weights=str(setup["weights"]),
        mode="incremental", progress=False,
    )  # fmt: skip
    start = load_checkpoint(setup["weights"])
    for name in ("last.safetensors", "best.safetensors"):
        model = load_checkpoint(tmp_path / "run" / name)
        assert model.task_ids == [*MR_TASKS.values(), "toyct/organ"]
        assert changed_tensors(start.state_dict(), model) == []  # EMA and weight decay included
        # Old tasks, fed as their group, on an input the run never saw: identical bits.
        image = torch.randn(1, 1, 32, 32, 32)
        old = torch.tensor([[0, 1]])
        for modality in (0, 1):
            m = torch.tensor([modality])
            with torch.no_grad():
                assert torch.equal(start(image, old, m), model(image, old, m))
    # The new tokens learnt: they moved away from their seeded initialisation.
    fresh = load_checkpoint(setup["weights"])
    fresh.add_tasks(["toyct/organ"], seed=3)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(
            result.model.new_task_parameters(), fresh.new_task_parameters(), strict=True
        )
    ]
    assert all(moved)
    meta = read_metadata(tmp_path / "run" / "last.safetensors")
    assert meta["provenance"]["mode"] == "incremental"
    assert meta["task_groups"] == {"toyct": ["toyct/organ"], **OLD_GROUPS}
    assert meta["provenance"]["init_weights"]["name"] == "start"
    assert meta["provenance"]["incremental_check"] == {"old_groups": ["toymr"], "comparisons": 1}


def test_incremental_refuses_to_save_when_frozen_weights_moved(
    setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An architecture whose new_task_parameters() wrongly included shared weights.
    def leaky(model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return list(model.parameters())

    monkeypatch.setattr(prepare, "freeze_all_but_new_tasks", leaky)
    with pytest.raises(IncrementalCheckError, match="changed .* frozen tensor"):
        train(
            _recipe(setup, tmp_path), tmp_path / "run", init_weights=str(setup["weights"]),
            mode="incremental", progress=False,
        )  # fmt: skip
    assert not (tmp_path / "run" / "last.safetensors").exists()
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_output_check_names_the_group_and_case(setup: dict[str, Path]) -> None:
    card = load_card(setup["new"])
    config = PreprocessConfig(spacing=(SPACING,) * 3, patch_size=(32, 32, 32))
    cached = build_cache(
        card, config, setup["cache"], card.cases("val"), dtype="float32", workers=0,
        progress=False,
    )  # fmt: skip
    start = load_checkpoint(setup["weights"])
    model = load_checkpoint(setup["weights"])
    model.add_tasks(["toyct/organ"])
    window = WindowSettings(patch_size=(32, 32, 32), overlap=0.0)
    device = torch.device("cpu")
    assert check_old_tasks_unchanged(start, model, OLD_GROUPS, [cached], window, device) == 1
    with torch.no_grad():
        model.enc_fusion["16"].task_prior[0][1] += 1e-3  # one old token nudged
    with pytest.raises(IncrementalCheckError, match=r"'toymr' on validation case toyct/toyct_002"):
        check_old_tasks_unchanged(start, model, OLD_GROUPS, [cached], window, device)


def test_incremental_needs_new_tasks_and_weights(setup: dict[str, Path], tmp_path: Path) -> None:
    mr = write_dataset(tmp_path, "toymr", MR_TASKS, cases=2)
    recipe = load_recipe(write_recipe(tmp_path, [mr], setup["cache"], train={"iterations": 1}))
    with pytest.raises(ConfigError, match="needs new tasks"):
        train(recipe, tmp_path / "a", init_weights=str(setup["weights"]), mode="incremental",
              progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="needs starting weights"):
        train(recipe, tmp_path / "b", mode="incremental", progress=False)


def test_finetune_adds_the_new_tasks_and_they_learn(setup: dict[str, Path], tmp_path: Path) -> None:
    recipe = _recipe(setup, tmp_path, iterations=12, batch_size=2)
    result = train(
        recipe, tmp_path / "run", init_weights=str(setup["weights"]), mode="finetune",
        progress=False,
    )  # fmt: skip
    assert result.model.task_ids == [*MR_TASKS.values(), "toyct/organ"]
    start = load_checkpoint(setup["weights"])
    assert len(changed_tensors(start.state_dict(), result.model)) > 10  # the backbone trained
    losses = list(train_losses(tmp_path / "run").values())
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert result.validation.keys() == {"toyct/organ"}
