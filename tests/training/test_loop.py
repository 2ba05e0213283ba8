"""The training loop on small synthetic data: exact resume, mixed batches with padding, files
and metadata, refusal to clobber or to resume a different run, state without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from toy_data import MR_TASKS, train_losses, write_dataset, write_recipe

from hermes_model import create_model, save_checkpoint
from hermes_model.errors import ConfigError
from hermes_model.nets import HermesR
from hermes_model.training import trainer as trainer_module
from hermes_model.training.loop import train
from hermes_model.training.recipe import load_recipe
from hermes_model.weights.checkpoint import load_checkpoint, read_metadata

# Two cores shared with other jobs: one torch thread per test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

CT_TASKS = {1: "toyct/organ"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toy")
    return {
        "mr": write_dataset(root, "toymr", MR_TASKS, cases=4),
        "ct": write_dataset(root, "toyct", CT_TASKS, cases=3, modality="ct", seed=1),
        "cache": root / "cache",
    }


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.workers
def test_resume_gives_the_losses_and_weights_of_an_uninterrupted_run(
    toy: dict[str, Path], tmp_path: Path
) -> None:
    settings = {"iterations": 4, "batch_size": 2}
    whole = load_recipe(write_recipe(tmp_path, [toy["mr"]], toy["cache"], train=settings))
    full = train(whole, tmp_path / "full", progress=False)
    # The interrupted run reads with a worker process: the stream must not depend on it.
    (tmp_path / "w").mkdir()
    split_recipe = write_recipe(
        tmp_path / "w", [toy["mr"]], toy["cache"], train={**settings, "num_workers": 1}
    )
    parts = load_recipe(split_recipe)
    first = train(parts, tmp_path / "split", progress=False, stop_after=2)
    assert (first.iterations, first.completed) == (2, False)
    assert (tmp_path / "split" / "state.safetensors").is_file()
    second = train(parts, tmp_path / "split", progress=False, resume=True)
    assert (second.iterations, second.completed) == (4, True)

    losses = train_losses(tmp_path / "full")
    assert sorted(losses) == [1, 2, 3, 4]
    assert train_losses(tmp_path / "split") == losses  # exactly equal floats
    assert _same_weights(full.model.state_dict(), second.model.state_dict())
    assert _same_weights(
        load_file(str(tmp_path / "full" / "last.safetensors")),
        load_file(str(tmp_path / "split" / "last.safetensors")),
    )  # the EMA weights too
    assert full.best_dice == second.best_dice


def test_state_is_safetensors_and_json_and_checkpoints_carry_provenance(
    toy: dict[str, Path], tmp_path: Path
) -> None:
    recipe = load_recipe(write_recipe(tmp_path, [toy["mr"]], toy["cache"], train={"iterations": 2}))
    result = train(recipe, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("last.safetensors", "best.safetensors", "state.safetensors", "state.json",
                 "log.jsonl", "log.csv", "curves.png"):  # fmt: skip
        assert (run / name).is_file(), name
    state = json.loads((run / "state.json").read_text())
    assert state["iteration"] == 2 and state["sampler"]["position"] == 4
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.003)
    with safe_open(str(run / "state.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert any(k.startswith("optimizer/") and k.endswith("/exp_avg") for k in keys)
    assert {"rng/packed/0", "rng/numpy_keys"} <= set(keys)
    assert any(k.startswith("ema/") for k in keys) and any(k.startswith("model/") for k in keys)

    meta = read_metadata(run / "last.safetensors")
    prov = meta["provenance"]
    assert meta["task_groups"] == {"toymr": list(MR_TASKS.values())}
    assert meta["licence"] == "toymr: CC-BY-4.0 (synthetic)"
    assert prov["iteration"] == 2 and prov["seed"] == 3 and prov["weights"] == "ema"
    assert prov["datasets"][0]["cases"] == 3 and prov["datasets"][0]["validation_cases"] == 1
    assert prov["recipe"]["name"] == "toy" and prov["mode"] == "train"
    assert prov["hermes_version"] and prov["started"] and prov["training_seconds"] > 0
    assert prov["validation"]["tasks"].keys() == set(MR_TASKS.values())
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["kind"] == "val"]
    assert len(val) == 1 and val[0]["val_dice"] == pytest.approx(result.best_dice)
    assert (run / "log.csv").read_text().splitlines()[0].startswith("kind,iteration,epoch,loss")
    model = load_checkpoint(run / "best.safetensors")
    assert model.task_ids == list(MR_TASKS.values())
    best = read_metadata(run / "best.safetensors")["provenance"]  # its scores and their iteration
    assert best["validation"]["iteration"] == best["best"]["iteration"] == 2


def test_a_run_folder_is_never_overwritten_and_resume_checks_the_recipe(
    toy: dict[str, Path], tmp_path: Path
) -> None:
    path = write_recipe(tmp_path, [toy["mr"]], toy["cache"], train={"iterations": 1})
    train(load_recipe(path), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(load_recipe(path), tmp_path / "run", progress=False)
    changed = load_recipe(path, **{"optimizer.lr": 0.01})
    with pytest.raises(ConfigError, match=r"recipe differs \(optimizer.lr: saved 0.003"):
        train(changed, tmp_path / "run", progress=False, resume=True, iterations=2)


def test_mixed_batches_pad_task_slots_and_padding_gets_no_gradient(
    toy: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Task 0 of the starting weights belongs to no dataset: padded slots (-1) index it after
    # clamping, so any gradient leaking from padding would move its token.
    tasks = ["toyx/unused", *MR_TASKS.values(), *CT_TASKS.values()]
    torch.manual_seed(0)
    start = create_model("tiny", tasks=tasks)
    weights = save_checkpoint(start, tmp_path / "start.safetensors")
    masks: list[torch.Tensor] = []
    original = trainer_module.bce_dice_loss

    def recording(logits, targets, mask, *args, **kwargs):  # type: ignore[no-untyped-def]
        masks.append(mask.detach().cpu().clone())
        return original(logits, targets, mask, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "bce_dice_loss", recording)
    recipe = load_recipe(
        write_recipe(
            tmp_path, [toy["mr"], toy["ct"]], toy["cache"],
            train={"iterations": 3, "batch_size": 4}, ema={"enabled": False},
        )
    )  # fmt: skip
    result = train(recipe, tmp_path / "run", init_weights=str(weights), mode="finetune",
                   progress=False)  # fmt: skip
    counts = [sorted(set(m.sum(1).tolist())) for m in masks]
    assert [1, 2] in counts, f"no batch mixed 1-task and 2-task samples: {counts}"
    assert isinstance(result.model, HermesR) and isinstance(start, HermesR)
    for name, fusion in result.model.enc_fusion.items():
        old = start.enc_fusion[name].task_prior[0]  # type: ignore[index]
        new = fusion.task_prior[0]  # type: ignore[union-attr, index]
        assert torch.equal(new[0], old[0]), f"padding moved the unused token at scale {name}"
        assert not torch.equal(new[1:], old[1:]), "the real tasks' tokens did not train"
    groups = read_metadata(tmp_path / "run" / "last.safetensors")["task_groups"]
    assert groups["toymr"] == list(MR_TASKS.values()) and groups["toyct"] == ["toyct/organ"]


def test_recipe_pos_weight_reaches_the_loss_per_task_slot(
    toy: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heavy = MR_TASKS[2]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = trainer_module.bce_dice_loss

    def recording(logits, targets, mask, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((kwargs["task_idx"].cpu(), kwargs["pos_weight"].cpu()))
        return original(logits, targets, mask, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "bce_dice_loss", recording)
    recipe = load_recipe(
        write_recipe(
            tmp_path, [toy["mr"]], toy["cache"], train={"iterations": 2},
            loss={"pos_weight": {heavy: 7.5}},
        )
    )  # fmt: skip
    result = train(recipe, tmp_path / "run", progress=False)
    heavy_idx = result.model.task_ids.index(heavy)
    for task_idx, weight in seen:
        assert torch.equal(weight, torch.where(task_idx == heavy_idx, 7.5, 1.0))
    wrong = load_recipe(
        write_recipe(
            tmp_path / "run", [toy["mr"]], toy["cache"], loss={"pos_weight": {"toymr/nope": 2.0}}
        )
    )
    with pytest.raises(ConfigError, match=r"loss.pos_weight names task\(s\) \['toymr/nope'\]"):
        train(wrong, tmp_path / "wrong", progress=False)


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_optimizer_state_round_trips_through_safetensors_and_json(
    name: str, tmp_path: Path
) -> None:
    from hermes_model.training.optim import make_optimizer
    from hermes_model.training.resume import (
        TrainState,
        flatten_optimizer,
        load_state,
        save_state,
        unflatten_optimizer,
    )
    from hermes_model.training.settings import OptimizerSettings

    def setup() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
        return model, make_optimizer(model.parameters(), OptimizerSettings(name=name, lr=0.01))

    def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(seed))
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()

    model, optimizer = setup()
    for seed in range(3):
        step(model, optimizer, seed)
    tensors, doc = flatten_optimizer(optimizer.state_dict())
    state = TrainState(doc={"optimizer": doc})
    state.put("optimizer", tensors)
    state.put("model", model.state_dict())
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    twin, twin_optimizer = setup()
    twin.load_state_dict(loaded.section("model"))
    twin_optimizer.load_state_dict(
        unflatten_optimizer(loaded.section("optimizer"), loaded.doc["optimizer"])
    )
    step(model, optimizer, 9)
    step(twin, twin_optimizer, 9)
    assert _same_weights(model.state_dict(), twin.state_dict())
    assert "pickle" not in (tmp_path / "state.json").read_text()


def test_a_state_json_from_another_save_is_not_mixed_with_newer_tensors(tmp_path: Path) -> None:
    from hermes_model.training.resume import TrainState, load_state, save_state

    save_state(tmp_path, TrainState({"x": torch.zeros(2)}, {"iteration": 1}))
    stale = (tmp_path / "state.json").read_text()
    save_state(tmp_path, TrainState({"x": torch.ones(2)}, {"iteration": 2}))
    (tmp_path / "state.json").write_text(stale)  # as if a crash fell between the two renames
    state = load_state(tmp_path)
    assert state.doc["iteration"] == 2 and torch.equal(state.tensors["x"], torch.ones(2))
    with pytest.raises(ConfigError, match="no state.safetensors to resume from"):
        load_state(tmp_path / "elsewhere")
