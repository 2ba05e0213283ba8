"""The networks: shapes, parameter counts, padding, gradients, ablations, growth, learning."""

from __future__ import annotations

import pytest
import torch

from hermes_model import create_model
from hermes_model.config import MODEL_PRESETS, ModelConfig, model_config
from hermes_model.errors import ConfigError
from hermes_model.nets import build_model

TASKS = [f"demo/t{i}" for i in range(6)]
SIZE = (32, 40, 36)


def tiny(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(model_config("tiny", **overrides), TASKS, ["ct", "mr"])


def batch(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 1, *SIZE, generator=torch.Generator().manual_seed(seed))


# Paper Table 6 and Fig. 3B (millions of parameters), 42 upstream tasks.
PAPER_PARAMS = {
    "resunet-small": 10.1,
    "resunet-base": 40.56,
    "resunet-large": 157.9,
    "hermes-r-base": 59.61,
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_parameter_counts_match_the_paper(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name, tasks=[f"x/t{i}" for i in range(42)])
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions == pytest.approx(PAPER_PARAMS[name], rel=0.05)


def test_every_preset_builds_on_meta() -> None:
    for name in MODEL_PRESETS:
        with torch.device("meta"):
            model = create_model(name, tasks=TASKS)
        assert model.task_ids == TASKS


def test_default_tasks_are_the_registry() -> None:
    from hermes_model.tasks import task_ids

    with torch.device("meta"):
        model = create_model("hermes-r-small")
    assert model.task_ids == task_ids()


@pytest.mark.parametrize("preset", ["tiny", "resunet-tiny"])
def test_forward_shapes_with_mixed_task_counts(preset: str) -> None:
    torch.manual_seed(0)
    model = build_model(model_config(preset), TASKS, ["ct", "mr"])
    task_idx = torch.tensor([[0, 1, 2], [3, -1, -1]])
    logits = model(batch(), task_idx, torch.tensor([0, 1]))
    assert logits.shape == (2, 3, *SIZE)
    assert logits.dtype == torch.float32
    assert torch.all(logits[1, 1:] == 0)  # padded slots are zeros


def test_padding_does_not_change_real_outputs() -> None:
    model = tiny().eval()
    x = batch(1)
    with torch.no_grad():
        plain = model(x, torch.tensor([[3, 4]]), torch.tensor([1]))
        padded = model(x, torch.tensor([[3, 4, -1, -1, -1]]), torch.tensor([1]))
    scale = plain.abs().max()
    torch.testing.assert_close(padded[:, :2], plain, rtol=0, atol=1e-5 * float(scale))


def test_batch_neighbours_do_not_leak() -> None:
    """A sample's output does not depend on what else is in the batch (instance norm, masks)."""
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
    for fusion in model._fusions():
        grad = fusion.task_prior[0].grad
        assert grad is not None
        touched = sorted(set(torch.nonzero(grad.abs().sum(1)).flatten().tolist()))
        assert touched == [1, 4]
        mod_grad = fusion.modality_prior.grad
        assert mod_grad[0].abs().sum() == 0 and mod_grad[1].abs().sum() > 0


def test_forward_is_deterministic() -> None:
    model = tiny().eval()
    args = (batch(2), torch.tensor([[0, 1], [2, 3]]), torch.tensor([0, 1]))
    with torch.no_grad():
        assert torch.equal(model(*args), model(*args))
    assert all(
        torch.equal(a, b)
        for a, b in zip(tiny().state_dict().values(), model.state_dict().values(), strict=True)
    )


ABLATIONS = [
    {"fusion_encoder_scales": (16,), "fusion_decoder_scales": ()},  # single scale
    {"fusion_encoder_scales": (4, 8, 16), "fusion_decoder_scales": ()},  # paper's 3 scales
    {"bidirectional": False},
    {"hierarchical": False},
    {"modality_prior": False},
    {"modality_tokens": 1},
    {"modality_tokens": 20},
]


@pytest.mark.parametrize(
    "overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
def test_ablation_switches_build_and_run(overrides: dict) -> None:
    model = tiny(**overrides)
    logits = model(batch(1), torch.tensor([[0, 2]]), torch.tensor([0]))
    logits.mean().backward()
    assert logits.shape == (1, 2, *SIZE) and torch.isfinite(logits).all()


def test_unidirectional_fusion_leaves_features_alone() -> None:
    model = tiny(bidirectional=False)
    assert not any(hasattr(b, "feat_attn") for f in model._fusions() for b in f.blocks)


def test_bad_configs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="fusion scales"):
        ModelConfig(fusion_encoder_scales=(2,))
    with pytest.raises(ConfigError, match="unknown model option"):
        model_config("tiny", nonsense=1)
    with pytest.raises(ConfigError, match="unknown model preset"):
        model_config("hermes-r-bse")


def test_too_small_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        tiny()(torch.zeros(1, 1, 15, 32, 32), torch.tensor([[0]]), torch.tensor([0]))


def test_a_16_voxel_axis_runs_as_in_the_authors_network() -> None:
    model = tiny().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 16, 32, 48), torch.tensor([[0]]), torch.tensor([0]))
    assert out.shape == (1, 1, 16, 32, 48) and torch.isfinite(out).all()


@pytest.mark.parametrize("preset", ["tiny", "resunet-tiny"])
def test_add_tasks_keeps_every_existing_parameter(preset: str) -> None:
    torch.manual_seed(0)
    model = build_model(model_config(preset), TASKS, ["ct", "mr"]).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = batch(1)
    with torch.no_grad():
        old = model(x, torch.tensor([[0, 1]]), torch.tensor([0]))
    model.add_tasks(["new/a", "new/b"])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.task_ids[-2:] == ["new/a", "new/b"] and model.task_chunks == [6, 2]
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([[0, 1]]), torch.tensor([0])), old)
        new = model(x, torch.tensor([[6, 7]]), torch.tensor([0]))
    assert new.shape == (1, 2, *SIZE)
    assert all(p.shape[0] == 2 for p in model.new_task_parameters() if p.ndim >= 1)


def _bce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over (N, D, H, W) maps of the valid tasks only."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    prob = logits.sigmoid()
    inter = (prob * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1e-5) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1e-5)
    return bce + dice.mean()


def test_tiny_model_overfits_one_batch() -> None:
    model = tiny()
    x = batch(2)
    target = torch.zeros(2, 2, *SIZE)
    target[0, 0, 8:20, 10:30, 8:24] = 1
    target[0, 1, 16:28, 4:16, 20:32] = 1
    target[1, 0, 4:14, 20:36, 10:30] = 1
    x = x + 3 * target[:, :1] - 3 * target[:, 1:]
    task_idx = torch.tensor([[0, 1], [2, -1]])
    valid = task_idx >= 0
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        logits = model(x, task_idx, torch.tensor([0, 1]))
        loss = _bce_dice(logits[valid], target[valid])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.1 * losses[0], losses[::10]
