"""LAMB against a hand-computed step, schedules, and the weight EMA."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from hermes_model.training.optim import Lamb, ModelEMA, WarmupDecay, make_optimizer, make_scheduler
from hermes_model.training.settings import OptimizerSettings, ScheduleSettings


def _lamb_by_hand(
    w: list[float], grads: list[list[float]], lr: float, b1: float, b2: float, eps: float, wd: float
) -> list[float]:
    """LAMB (bias-corrected Adam direction + weight decay, scaled by ||w|| / ||u||) in floats."""
    m = [0.0] * len(w)
    v = [0.0] * len(w)
    for t, g in enumerate(grads, start=1):
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g, strict=True)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g, strict=True)]
        u = [
            (mi / (1 - b1**t)) / (math.sqrt(vi / (1 - b2**t)) + eps) + wd * wi
            for mi, vi, wi in zip(m, v, w, strict=True)
        ]
        w_norm = math.sqrt(sum(x * x for x in w))
        u_norm = math.sqrt(sum(x * x for x in u))
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        w = [wi - lr * ratio * ui for wi, ui in zip(w, u, strict=True)]
    return w


def test_lamb_first_step_by_hand() -> None:
    # Step 1 written out: m_hat = g, v_hat = g^2, so the Adam direction is g / (|g| + eps).
    w0, g = [3.0, 4.0], [0.1, -0.2]
    lr, eps, wd = 0.1, 1e-6, 0.1
    u = [g[0] / (abs(g[0]) + eps) + wd * w0[0], g[1] / (abs(g[1]) + eps) + wd * w0[1]]
    ratio = 5.0 / math.hypot(*u)  # ||w0|| = 5
    expected = [w0[0] - lr * ratio * u[0], w0[1] - lr * ratio * u[1]]
    w = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = Lamb([w], lr=lr, betas=(0.9, 0.999), eps=eps, weight_decay=wd)
    w.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
    assert w.detach().tolist() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(_lamb_by_hand(w0, [g], lr, 0.9, 0.999, eps, wd), rel=1e-12)


def test_lamb_three_steps_with_bias_correction() -> None:
    w0 = [0.5, -1.0, 2.0]
    grads = [[0.3, 0.1, -0.2], [-0.1, 0.4, 0.05], [0.2, -0.3, 0.1]]
    w = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = Lamb([w], lr=0.05, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.01)
    for g in grads:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    expected = _lamb_by_hand(w0, grads, 0.05, 0.8, 0.95, 1e-8, 0.01)
    assert w.detach().tolist() == pytest.approx(expected, rel=1e-10)


def test_lamb_zero_weights_use_a_unit_trust_ratio() -> None:
    w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = Lamb([w], lr=0.1, eps=1e-6, weight_decay=0.0)
    w.grad = torch.tensor([0.5, -0.5], dtype=torch.float64)
    opt.step()
    step = 0.5 / (0.5 + 1e-6)
    assert w.detach().tolist() == pytest.approx([-0.1 * step, 0.1 * step], rel=1e-12)


def test_make_optimizer_picks_lamb_or_adamw() -> None:
    params = [nn.Parameter(torch.ones(3))]
    assert isinstance(make_optimizer(params, OptimizerSettings(name="lamb")), Lamb)
    adamw = make_optimizer(params, OptimizerSettings(name="adamw", lr=1e-3, weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["weight_decay"] == 0.05


def test_warmup_then_decay_values() -> None:
    linear = WarmupDecay(total=110, warmup=10, warmup_shape="linear", decay="poly", power=0.9)
    assert linear(0) == pytest.approx(0.1) and linear(9) == pytest.approx(1.0)
    assert linear(10) == 1.0 and linear(60) == pytest.approx(0.5**0.9) and linear(110) == 0.0
    expo = WarmupDecay(total=110, warmup=10, warmup_shape="exponential", decay="exponential")
    assert expo(0) == pytest.approx(math.exp(-10)) and expo(5) == pytest.approx(math.exp(-5))
    assert expo(110) == pytest.approx(0.01) and expo(60) == pytest.approx(0.1)
    assert WarmupDecay(total=5, decay="constant")(4) == 1.0


def test_scheduler_state_is_plain_numbers_and_resumes() -> None:
    settings = ScheduleSettings(decay="poly", warmup_iterations=3, power=1.0)

    def run(steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        opt = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.2)
        sched = make_scheduler(opt, settings, total=13)
        for _ in range(steps):
            opt.step()
            sched.step()
        return opt, sched

    opt, sched = run(8)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * (1 - 5 / 10))
    state = json.loads(json.dumps(sched.state_dict()))
    opt2, sched2 = run(0)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_model_ema_average_and_state_round_trip() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema.update(model)  # first update: d = min(0.9, 1 - 1/1) = 0, a copy
    assert torch.equal(ema.module[0].weight, model[0].weight)
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[1].running_mean.fill_(7.0)
    ema.update(model)  # d = min(0.9, 1 - 1/2) = 0.5
    assert torch.allclose(ema.module[0].weight, torch.full((2, 3), 2.0))
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    state = ema.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    other = ModelEMA(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), decay=0.9)
    other.load_state_dict(state)
    assert other.num_updates == 2
    assert torch.equal(other.module[0].weight, ema.module[0].weight)
    assert not any(p.requires_grad for p in other.module.parameters())
