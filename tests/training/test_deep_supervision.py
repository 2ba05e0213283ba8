"""Deep supervision (issue 27 lever): auxiliary predictions at 1/2 and 1/4 scale, trained and
resumed with the run, never exported; the network itself is unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy_data import MR_TASKS, train_losses, write_dataset, write_recipe

from hermes_model import create_model
from hermes_model.errors import ConfigError
from hermes_model.training.deep_supervision import (
    DeepSupervised,
    deep_supervision_loss,
    downsample_targets,
)
from hermes_model.training.loop import train
from hermes_model.training.losses import LossTerms
from hermes_model.training.recipe import load_recipe

# Two cores shared with other jobs: one torch thread per test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = ["hippocampus/anterior", "hippocampus/posterior", "openkbp/larynx"]


def test_auxiliary_predictions_at_half_and_quarter_scale_leave_the_network_as_it_was() -> None:
    torch.manual_seed(0)
    model = create_model("tiny", TASKS, ["mr", "ct"])
    keys = set(model.state_dict())
    wrapped = DeepSupervised(model, [0.5, 0.25])
    image = torch.randn(2, 1, 32, 32, 32)
    task_idx = torch.tensor([[0, 1, 2], [2, 0, -1]])  # the second sample has a padded slot
    modality = torch.tensor([0, 1])
    logits, aux = wrapped(image, task_idx, modality)
    assert [(f, tuple(a.shape)) for f, a in aux] == [(2, (2, 3, 16, 16, 16)), (4, (2, 3, 8, 8, 8))]
    assert all(float(a.abs().max()) == 0.0 for _, a in aux)  # zero-initialised projections
    for conv in wrapped.project:  # as after some training
        torch.nn.init.normal_(conv.weight)
    logits, aux = wrapped(image, task_idx, modality)
    assert all(float(a[0].abs().max()) > 0.0 for _, a in aux)
    assert all(float(a[1, 2].abs().max()) == 0.0 for _, a in aux)  # padding: no prediction
    torch.testing.assert_close(logits, model(image, task_idx, modality))  # same network
    assert set(model.state_dict()) == keys  # the projections are the wrapper's, not exported
    assert not wrapped._features and not wrapped._prototypes  # validation calls keep nothing
    with pytest.raises(ConfigError, match="Hermes-R"):
        DeepSupervised(create_model("resunet-tiny", TASKS, ["mr", "ct"]), [0.5])
    with pytest.raises(ConfigError, match="give 1 to 3"):
        DeepSupervised(model, [0.5, 0.25, 0.1, 0.05])


def test_pooled_targets_keep_small_structures_and_the_loss_is_the_weighted_mean() -> None:
    targets = torch.zeros(1, 1, 8, 8, 8, dtype=torch.uint8)
    targets[0, 0, 5, 2, 7] = 1  # one voxel
    pooled = downsample_targets(targets, 4)
    assert pooled.shape == (1, 1, 2, 2, 2) and pooled.dtype == torch.uint8
    assert pooled.nonzero().tolist() == [[0, 0, 1, 0, 1]]

    def loss(logits: torch.Tensor, truth: torch.Tensor) -> LossTerms:
        # A stand-in that says which grid it saw: the loss is the grid's edge.
        edge = torch.tensor(float(truth.shape[-1]))
        assert logits.shape == truth.shape
        return LossTerms(edge, edge / 2, edge / 4)

    aux = [(2, torch.zeros(1, 1, 4, 4, 4)), (4, torch.zeros(1, 1, 2, 2, 2))]
    terms = deep_supervision_loss(torch.zeros(1, 1, 8, 8, 8), aux, [0.5, 0.25], targets, loss)
    expected = (8 + 0.5 * 4 + 0.25 * 2) / 1.75
    torch.testing.assert_close(terms.total, torch.tensor(expected))
    torch.testing.assert_close(terms.dice, torch.tensor(expected / 4))


def test_training_with_deep_supervision_resumes_exactly_and_exports_the_plain_network(
    tmp_path: Path,
) -> None:
    card = write_dataset(tmp_path, "toymr", MR_TASKS, cases=3)
    recipe = load_recipe(
        write_recipe(tmp_path, [card], tmp_path / "cache", loss={"deep_supervision": [0.5, 0.25]})
    )
    full = train(recipe, tmp_path / "full", progress=False)
    first = train(recipe, tmp_path / "split", progress=False, stop_after=2)
    assert not first.completed
    train(recipe, tmp_path / "split", progress=False, resume=True)
    assert train_losses(tmp_path / "split") == train_losses(tmp_path / "full")  # exact floats
    exported = load_file(str(tmp_path / "full" / "last.safetensors"))
    assert set(exported) == set(full.model.state_dict())  # no auxiliary projection
    state = load_file(str(tmp_path / "full" / "state.safetensors"))
    assert any(k.startswith("deep_supervision/") for k in state)  # but resumable


@pytest.mark.slow  # compiling the step takes a minute or more on two shared cores
def test_compiled_training_step_learns_as_the_eager_one_and_exports_the_same_keys(
    tmp_path: Path,
) -> None:
    """``train.compile`` (with deep supervision's forward hooks, the hardest case for the
    compiler): the same losses as eager within float reordering, plain exported keys."""
    card = write_dataset(tmp_path, "toymr", MR_TASKS, cases=3)
    cache = tmp_path / "cache"
    runs = {}
    for compiled in (False, True):
        folder = tmp_path / f"recipe-{compiled}"
        folder.mkdir()
        train_table = {"compile": compiled, "iterations": 3, "cache_dir": str(cache)}
        recipe = load_recipe(
            write_recipe(folder, [card], cache, loss={"deep_supervision": [0.5, 0.25]},
                         train=train_table)
        )  # fmt: skip
        runs[compiled] = train(recipe, tmp_path / f"run-{compiled}", progress=False)
    eager, compiled_losses = (train_losses(tmp_path / f"run-{c}") for c in (False, True))
    assert eager.keys() == compiled_losses.keys()
    for iteration, loss in eager.items():
        assert compiled_losses[iteration] == pytest.approx(loss, rel=1e-3, abs=1e-4)
    exported = load_file(str(tmp_path / "run-True" / "last.safetensors"))
    assert set(exported) == set(runs[False].model.state_dict())
