"""The self-tuning balance controller (moe.controller): its update rule, its state, and that it lands on a target
MaxVio on a synthetic skewed router (through the balance policy and an optimizer, as training uses it)."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from hyperp.errors import ConfigError
from moe.balance import BalancePolicy
from moe.config import MoEConfig
from moe.controller import BalanceController
from moe.router import Router


def test_update_rule_against_hand_computed_values() -> None:
    c = BalanceController(target=0.5, initial=0.01)
    c.update(0.55)  # first update: EMA = the value; ratio 1.1 → factor 1.1**0.05
    assert c.state.maxvio_ema == 0.55
    assert c.value == pytest.approx(0.01 * 1.1**0.05, rel=1e-12)
    c.update(0.35)  # EMA 0.9·0.55 + 0.1·0.35 = 0.53 → factor 1.06**0.05
    assert c.state.maxvio_ema == pytest.approx(0.53, rel=1e-12)
    assert c.value == pytest.approx(0.01 * 1.1**0.05 * 1.06**0.05, rel=1e-12)
    c.update(50.0)  # EMA 5.477, ratio ~11 → capped at +5 % per step
    assert c.value == pytest.approx(0.01 * 1.1**0.05 * 1.06**0.05 * 1.05, rel=1e-12)


def test_bounds_hold_for_unreachable_targets() -> None:
    high = BalanceController(target=0.01, initial=0.5)
    low = BalanceController(target=1.0, initial=0.01)
    for _ in range(400):
        high.update(2.0)
        low.update(0.0)  # perfectly balanced: the largest decrease, never a division by zero
    assert high.value == 1.0 and low.value == 1e-4
    assert BalanceController(0.2, initial=5.0).value == 1.0  # the start is clipped into the bounds


def test_state_round_trip_continues_identically() -> None:
    a = BalanceController(target=0.2, initial=0.01)
    for m in (1.5, 0.9, 0.4):
        a.update(m)
    b = BalanceController(target=0.2, initial=0.3)
    b.load_state_dict(a.state_dict())
    for m in (0.3, 0.25, 0.1):
        a.update(m)
        b.update(m)
        assert a.state == b.state  # exact: floats restored bit for bit
    with pytest.raises(ValueError, match="toward MaxVio 0.2, this run toward 0.3"):
        BalanceController(target=0.3, initial=0.01).load_state_dict(a.state_dict())


@pytest.mark.parametrize(("extra", "message"), [
    ({"aux_weight": 0.01, "balance_target": 0}, "moe.balance_target=0 must be a MaxVio > 0"),
    ({"aux_weight": 0.0, "balance_target": 0.2}, "moe.aux_weight > 0"),
    ({"balance": "bias", "balance_target": 0.2}, "no aux loss to steer"),
])
def test_config_errors(extra: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MoEConfig(num_experts=4, top_k=2, expert_hidden=8, **extra)


def _skewed_run(balance: str, pull: float, steps: int = 300, seed: int = 0) -> tuple[list[float], BalancePolicy]:
    """A router whose inputs share a mean direction and whose task loss pulls every token toward expert 0 (strength
    ``pull``); the aux loss pushes back. MaxVio per step is measured here from the routed indices."""
    torch.manual_seed(seed)
    e, hidden, tokens = 8, 16, 1024  # 256 token-slots per expert: MaxVio's sampling floor ≈ √(2 ln 8 / 256) ≈ 0.13
    holder = nn.Module()
    holder.router = Router(hidden, e, 2, selection_bias=balance == "aux+bias")
    data = torch.randn(4096, hidden) + 0.5
    cfg = MoEConfig(num_experts=e, top_k=2, expert_hidden=8, balance=balance, aux_weight=0.01, balance_target=0.3)
    policy = BalancePolicy(cfg, holder)
    optimizer = torch.optim.Adam(holder.parameters(), lr=3e-3)
    policy.attach(optimizer)
    maxvio = []
    for _ in range(steps):
        policy.start_step()
        stats = holder.router(data[torch.randint(0, len(data), (tokens,))])
        task = -pull * torch.log_softmax(stats.logits, -1)[:, 0].mean()
        policy.loss_terms(task, [stats])["total"].backward()
        optimizer.step()
        optimizer.zero_grad()
        load = torch.bincount(stats.indices.flatten(), minlength=e).double()
        maxvio.append(float((load.max() - load.mean()) / load.mean()))
    return maxvio, policy


@pytest.fixture(scope="module")
def aux_runs() -> dict[float, tuple[list[float], BalancePolicy]]:
    return {pull: _skewed_run("aux", pull) for pull in (0.01, 0.03)}


@pytest.mark.parametrize("pull", [0.01, 0.03])
def test_aux_controller_lands_on_the_target_whatever_the_pull(aux_runs, pull: float) -> None:
    maxvio, policy = aux_runs[pull]
    assert maxvio[0] > 0.9  # skewed at the start: 3× the target
    settled = statistics.fmean(maxvio[-150:])
    assert settled == pytest.approx(0.3, rel=0.15), settled
    assert 1e-4 < policy.aux_weight < 1.0  # landed inside its bounds, not pinned
    assert policy.step_metrics()["moe/balance/aux_weight"] == policy.aux_weight


def test_aux_controller_weight_follows_the_pull(aux_runs) -> None:
    """A stronger pull toward one expert needs a larger α for the same balance: the controller finds both."""
    assert aux_runs[0.03][1].aux_weight > 2 * aux_runs[0.01][1].aux_weight


def test_aux_plus_bias_controller_lands_on_the_target(aux_runs) -> None:
    """With the bias on as well (it pulls toward MaxVio 0 by itself), α settles lower than without it."""
    maxvio, policy = _skewed_run("aux+bias", 0.03)
    assert statistics.fmean(maxvio[-150:]) == pytest.approx(0.3, rel=0.15)
    assert 1e-4 < policy.aux_weight < 0.9 * aux_runs[0.03][1].aux_weight
