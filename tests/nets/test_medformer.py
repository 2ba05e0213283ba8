"""MedFormer and Hermes-M: parameter counts, padding, gradients, growth, checkpoints, learning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from hermes_model import create_model
from hermes_model.config import model_config
from hermes_model.nets import build_model
from hermes_model.nets.medformer import HermesM, MedFormer
from hermes_model.weights.checkpoint import load_checkpoint, save_checkpoint

TASKS = [f"demo/t{i}" for i in range(6)]
SIZE = (32, 40, 36)  # odd sizes at 8x and 16x: patch merging pads, the decoder crops back


def tiny(name: str = "hermes-m-tiny", **overrides) -> Any:
    torch.manual_seed(0)
    return build_model(model_config(name, **overrides), TASKS, ["ct", "mr"])


def batch(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 1, *SIZE, generator=torch.Generator().manual_seed(seed))


# Paper Table 6 (millions of parameters), 42 upstream tasks, 2 modalities.
@pytest.mark.parametrize(
    ("name", "millions"), [("medformer-base", 43.20), ("hermes-m-base", 44.50)]
)
def test_parameter_counts_match_the_paper(name: str, millions: float) -> None:
    with torch.device("meta"):
        model = create_model(name, tasks=[f"x/t{i}" for i in range(42)], modalities=["ct", "mr"])
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, rel=0.05)


@pytest.mark.parametrize("name", ["medformer-tiny", "hermes-m-tiny"])
def test_forward_shapes_with_mixed_task_counts_and_aux(name: str) -> None:
    model = tiny(name)
    assert isinstance(model, MedFormer | HermesM)
    task_idx = torch.tensor([[0, 1, 2], [3, -1, -1]])
    logits, aux = model.forward_with_aux(batch(), task_idx, torch.tensor([0, 1]))
    assert logits.shape == (2, 3, *SIZE) and logits.dtype == torch.float32
    assert [a.shape for a in aux] == [(2, 3, 8, 10, 9)]  # the 4x decoder scale
    assert torch.all(logits[1, 1:] == 0) and torch.all(aux[0][1, 1:] == 0)
    (logits.square().mean() + aux[0].square().mean()).backward()
    assert all(p.grad is not None for p in model.backbone.stem.parameters())


def test_padding_does_not_change_real_outputs() -> None:
    model = tiny().eval()
    x = batch(1)
    with torch.no_grad():
        plain = model(x, torch.tensor([[3, 4]]), torch.tensor([1]))
        padded = model(x, torch.tensor([[3, 4, -1, -1, -1]]), torch.tensor([1]))
    torch.testing.assert_close(padded[:, :2], plain, rtol=0, atol=1e-5 * float(plain.abs().max()))
    assert torch.all(padded[:, 2:] == 0)


def test_batch_neighbours_do_not_leak() -> None:
    model = tiny().eval()
    x = batch(2)
    with torch.no_grad():
        both = model(x, torch.tensor([[0, 1, 2], [3, -1, -1]]), torch.tensor([0, 1]))
        alone = model(x[1:], torch.tensor([[3]]), torch.tensor([1]))
    torch.testing.assert_close(both[1, :1], alone[0], rtol=0, atol=1e-5 * float(alone.abs().max()))


def test_gradients_reach_only_selected_tokens() -> None:
    model = tiny()
    logits = model(batch(1), torch.tensor([[1, 4, -1]]), torch.tensor([1]))
    logits.square().mean().backward()
    pools = list(model.priors.values())
    assert [*model.priors] == ["enc4", "enc8", "enc16", "dec8", "dec4"]
    for pool in pools:
        touched = torch.nonzero(pool.task_prior[0].grad.abs().sum(1)).flatten().tolist()
        assert touched == [1, 4]
        assert pool.modality_prior.grad[0].abs().sum() == 0
        assert pool.modality_prior.grad[1].abs().sum() > 0


def test_features_read_the_priors_only_when_bidirectional() -> None:
    """Task 0's output depends on which other tasks are requested only through the features,
    which read every requested token in bidirectional B-MHA and none in the unidirectional one."""
    x = batch(1)
    for bidirectional in (True, False):
        model = tiny(bidirectional=bidirectional).eval()
        with torch.no_grad():
            alone = model(x, torch.tensor([[0]]), torch.tensor([0]))
            paired = model(x, torch.tensor([[0, 5]]), torch.tensor([0]))
        same = torch.allclose(
            alone[0, 0], paired[0, 0], rtol=0, atol=1e-5 * float(alone.abs().max())
        )
        assert same is not bidirectional


@pytest.mark.parametrize(
    "overrides",
    [{"hierarchical": False}, {"modality_prior": False}, {"fusion_decoder_scales": ()}],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_ablation_switches_build_and_run(overrides: dict) -> None:
    model = tiny(**overrides)
    logits = model(batch(1), torch.tensor([[0, 2]]), torch.tensor([0]))
    assert logits.shape == (1, 2, *SIZE) and torch.isfinite(logits).all()
    if "fusion_decoder_scales" in overrides:
        assert [*model.priors] == ["enc4", "enc8", "enc16"]


@pytest.mark.parametrize("name", ["medformer-tiny", "hermes-m-tiny"])
def test_add_tasks_keeps_every_existing_parameter(name: str) -> None:
    model = tiny(name).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = batch(1)
    with torch.no_grad():
        old = model(x, torch.tensor([[0, 1]]), torch.tensor([0]))
    model.add_tasks(["new/a", "new/b"], seed=3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.task_ids[-2:] == ["new/a", "new/b"] and model.task_chunks == [6, 2]
    new_params = model.new_task_parameters()
    assert new_params and all(p.shape[0] == 2 for p in new_params)
    old_ids = {id(p) for k, p in model.named_parameters() if k in before}
    assert not any(id(p) in old_ids for p in new_params)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([[0, 1]]), torch.tensor([0])), old)
        assert model(x, torch.tensor([[6, 7]]), torch.tensor([0])).shape == (1, 2, *SIZE)


@pytest.mark.parametrize("name", ["medformer-tiny", "hermes-m-tiny"])
def test_checkpoint_round_trip_is_bit_exact(name: str, tmp_path: Path) -> None:
    model = tiny(name)
    model.add_tasks(["new/a"], seed=1)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.task_ids == model.task_ids
    assert loaded.task_chunks == [6, 1]
    state = model.state_dict()
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    args = (batch(1), torch.tensor([[2, 6]]), torch.tensor([1]))
    with torch.no_grad():
        assert torch.equal(loaded(*args), model.eval()(*args))


def _bce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    prob = logits.sigmoid()
    inter = (prob * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1e-5) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1e-5)
    return bce + dice.mean()


def test_tiny_hermes_m_overfits_one_batch() -> None:
    """Boxes marked by intensity (+3 for task slot 0, -3 for slot 1) are learnable in 40 steps
    (the loss is ~0.03 of its start there); the 4x auxiliary output is trained too."""
    model = tiny()
    target = torch.zeros(2, 2, *SIZE)
    target[0, 0, 8:20, 10:30, 8:24] = 1
    target[0, 1, 16:28, 4:16, 20:32] = 1
    target[1, 0, 4:14, 20:36, 10:30] = 1
    x = batch(2) + 3 * target[:, :1] - 3 * target[:, 1:]
    task_idx = torch.tensor([[0, 1], [2, -1]])
    valid = task_idx >= 0
    aux_target = torch.nn.functional.avg_pool3d(target, 4, ceil_mode=True)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-3)
    losses = []
    for _ in range(40):
        logits, (aux,) = model.forward_with_aux(x, task_idx, torch.tensor([0, 1]))
        loss = _bce_dice(logits[valid], target[valid])
        total = loss + 0.5 * _bce_dice(aux[valid], aux_target[valid])
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.1 * losses[0], losses[::10]
