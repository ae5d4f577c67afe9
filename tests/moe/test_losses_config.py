"""Balance losses on hand-built routings, GlobalBalance exactness, z-loss, config errors (SPEC §4)."""

from __future__ import annotations

import math

import pytest
import torch

from hyperp.errors import ConfigError
from moe import GlobalBalance, MoEConfig, RoutingStats, micro_batch_aux, switch_aux, z_loss


def _stats(logits: torch.Tensor, indices: torch.Tensor) -> RoutingStats:
    e = logits.shape[-1]
    return RoutingStats(
        logits=logits,
        indices=indices,
        weights=torch.ones(indices.shape) / indices.shape[1],
        counts=torch.bincount(indices.reshape(-1), minlength=e).float(),
        prob_mean=torch.softmax(logits, -1).mean(0),
        num_tokens=logits.shape[0],
    )


def test_switch_aux_hand_computed():
    # E=2: counts (3, 1) → f = (0.75, 0.25); P = (0.6, 0.4) → 2·(0.45 + 0.1) = 1.1
    assert switch_aux(torch.tensor([3.0, 1.0]), torch.tensor([0.6, 0.4])).item() == pytest.approx(1.1)
    # E=3, tokens routed k=2 times: counts (2, 2, 0) → f = (.5, .5, 0); P = (.2, .3, .5) → 3·.25 = .75
    assert switch_aux(torch.tensor([2.0, 2.0, 0.0]), torch.tensor([0.2, 0.3, 0.5])).item() == pytest.approx(0.75)
    # balanced routing and uniform P give exactly 1
    assert switch_aux(torch.ones(8), torch.full((8,), 1 / 8)).item() == pytest.approx(1.0)


def test_micro_batch_aux_sums_layers_and_is_differentiable_in_p():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]], requires_grad=True)
    s1 = _stats(logits, torch.tensor([[0], [1]]))
    s2 = _stats(logits * 2, torch.tensor([[0], [0]]))
    total = micro_batch_aux([s1, s2])
    want = switch_aux(s1.counts, s1.prob_mean) + switch_aux(s2.counts, s2.prob_mean)
    assert total.item() == pytest.approx(want.item())
    total.backward()
    assert logits.grad.abs().sum() > 0


def test_z_loss_closed_form():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # lse = log 2, log 4 → mean(log²2, log²4) = (1 + 4)·log²2 / 2
    assert z_loss(logits).item() == pytest.approx(2.5 * math.log(2.0) ** 2)


def _random_micro_batches(layers=2, e=4, k=2, sizes=(5, 9, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for n in sizes:
        layer_stats = []
        for layer in range(layers):
            logits = torch.randn(n, e, generator=g) * (1 + layer)
            # skewed routing so micro-batches differ strongly in their counts
            indices = torch.stack([torch.randint(0, e, (n,), generator=g) % (1 + len(batches) + layer),
                                   torch.randint(0, e, (n,), generator=g)], -1)[:, :k]
            layer_stats.append(_stats(logits.requires_grad_(), indices))
        batches.append(layer_stats)
    return batches


def test_global_balance_value_equals_concatenated_batch():
    batches = _random_micro_batches()
    balance = GlobalBalance()
    balance.reset()
    running = []
    for stats in batches:
        running.append(balance.aux(stats))
    concatenated = [
        _stats(torch.cat([b[layer].logits for b in batches]), torch.cat([b[layer].indices for b in batches]))
        for layer in range(2)
    ]
    want = micro_batch_aux(concatenated).item()
    assert balance.value().item() == pytest.approx(want, rel=1e-6)
    mean_of_micro = sum(micro_batch_aux(s).item() for s in batches) / len(batches)
    assert abs(mean_of_micro - want) > 1e-3
    # the last micro-batch's loss uses the full-step counts (its gradient is exact)
    last = sum(switch_aux(c.counts, s.prob_mean) for c, s in zip(concatenated, batches[-1]))
    assert running[-1].item() == pytest.approx(last.item(), rel=1e-6)
    # the first uses only its own counts
    assert running[0].item() == pytest.approx(micro_batch_aux(batches[0]).item(), rel=1e-6)
    running[0].backward()
    assert batches[0][0].logits.grad is not None


def test_global_balance_reset():
    batches = _random_micro_batches()
    balance = GlobalBalance()
    balance.aux(batches[0])
    balance.reset()
    balance.aux(batches[1])
    assert balance.value().item() == pytest.approx(micro_batch_aux(batches[1]).item(), rel=1e-6)
    assert balance.counts.shape == (2, 4)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(top_k=9), "moe.top_k=9 must be <= moe.num_experts=8"),
        (dict(top_k=0), "moe.top_k"),
        (dict(num_experts=0), "moe.num_experts"),
        (dict(expert_hidden=-3), "moe.expert_hidden"),
        (dict(shared_hidden=0), "moe.shared_hidden"),
        (dict(gate="relu"), "moe.gate"),
        (dict(backend="cuda"), "moe.backend"),
        (dict(shared_mix=1.5), "moe.shared_mix"),
        (dict(aux_weight=-0.1), "moe.aux_weight"),
        (dict(z_weight=float("nan")), "moe.z_weight"),
        (dict(global_aux="yes"), "moe.global_aux"),
        (dict(shared_expert=1), "moe.shared_expert"),
    ],
)
def test_bad_config_raises_config_error_naming_field(kwargs, field):
    base = dict(num_experts=8, top_k=2, expert_hidden=16)
    with pytest.raises(ConfigError, match=field.replace("(", r"\(")) as info:
        MoEConfig(**{**base, **kwargs})
    assert "\n" not in str(info.value)


def test_config_defaults():
    cfg = MoEConfig(num_experts=8, top_k=2, expert_hidden=16)
    assert cfg.shared_hidden == 16 and cfg.gate == "sqrt" and cfg.backend == "auto" and cfg.global_aux
