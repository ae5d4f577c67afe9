"""Aux-loss-free balancing (DeepSeek-V3 selection bias) and the shared balance metrics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moe.balance import balance_metrics, update_selection_bias
from moe.config import MoEConfig
from moe.router import Router


class _Two(nn.Module):
    def __init__(self, e: int = 4) -> None:
        super().__init__()
        self.a = Router(8, e, 2, selection_bias=True)
        self.plain = Router(8, e, 2)  # no bias: skipped by the update
        self.b = Router(8, e, 2, selection_bias=True)


def test_bias_update_closed_form() -> None:
    model = _Two()
    counts = torch.tensor([[10.0, 0.0, 5.0, 5.0], [1.0, 2.0, 3.0, 2.0]])  # means 5 and 2
    update_selection_bias(model, counts, rate=0.01)
    assert model.a.selection_bias.tolist() == pytest.approx([-0.01, 0.01, 0.0, 0.0])
    assert model.b.selection_bias.tolist() == pytest.approx([0.01, 0.0, -0.01, 0.0])
    update_selection_bias(model, counts, rate=0.01)
    assert model.a.selection_bias.tolist() == pytest.approx([-0.02, 0.02, 0.0, 0.0])
    with pytest.raises(ValueError, match="2 biased routers"):
        update_selection_bias(model, counts[:1], rate=0.01)


def test_bias_changes_selection_not_gates() -> None:
    torch.manual_seed(0)
    router = Router(8, 4, 2, selection_bias=True)
    x = torch.randn(64, 8)
    before = router(x)
    router.selection_bias[:] = torch.tensor([-10.0, -10.0, 0.0, 0.0])  # forbid experts 0 and 1
    after = router(x)
    assert torch.equal(after.logits, before.logits)
    assert set(after.indices.unique().tolist()) == {2, 3}
    # gates: softmax over the *unbiased* logits of the selected experts
    picked = after.logits.gather(-1, after.indices)
    assert torch.allclose(after.weights, torch.softmax(picked, -1))
    assert not torch.equal(after.indices, before.indices)


def test_bias_drives_maxvio_down_on_a_skewed_router() -> None:
    torch.manual_seed(1)
    e = 8
    holder = nn.Module()
    holder.router = Router(16, e, 2, selection_bias=True)
    with torch.no_grad():
        holder.router.weight.normal_(std=0.1)
        holder.router.weight[0] += 0.5  # expert 0 favoured by every token with a positive mean
    x = torch.randn(512, 16) + 1.0

    def maxvio() -> float:
        return balance_metrics(holder.router(x).counts)["maxvio"].item()

    start = maxvio()
    for _ in range(300):
        update_selection_bias(holder, holder.router(x).counts[None], rate=5e-2)
    assert start > 1.0
    assert maxvio() < 0.25 * start


def test_balance_metrics_closed_form() -> None:
    counts = torch.tensor([[4.0, 0.0, 2.0, 2.0]])
    m = {k: v.item() for k, v in balance_metrics(counts).items()}
    assert m["maxvio"] == pytest.approx(1.0)
    assert m["max_mean"] == pytest.approx(2.0)
    assert m["cv"] == pytest.approx((2.0**0.5) / 2.0)  # std = √2 (population), mean 2
    assert m["dead"] == 1


def test_bias_is_a_saved_buffer_not_a_parameter() -> None:
    from models.config import ModelConfig
    from models.qwen3 import Qwen3

    moe = MoEConfig(num_experts=4, top_k=2, expert_hidden=16, balance="bias")
    cfg = ModelConfig(vocab_size=50, hidden=32, n_layers=2, n_heads=2, n_kv_heads=1, mlp_hidden=64, moe=moe,
                      max_seq_len=16)
    model = Qwen3(cfg)
    names = [n for n, _ in model.named_parameters()]
    assert not any("selection_bias" in n for n in names)
    model.layers[1].mlp.router.selection_bias.fill_(0.5)
    fresh = Qwen3(cfg)
    fresh.load_state_dict(model.state_dict())
    assert fresh.layers[1].mlp.router.selection_bias.tolist() == [0.5] * 4


@pytest.mark.parametrize("field", ["balance", "bias_rate"])
def test_bad_balance_config(field: str) -> None:
    from hyperp.errors import ConfigError

    bad = {"balance": "magic", "bias_rate": -1.0}[field]
    with pytest.raises(ConfigError, match=f"moe.{field}"):
        MoEConfig(num_experts=4, top_k=2, expert_hidden=8, **{field: bad})


def test_balance_policy_terms_bias_hook_and_metrics() -> None:
    """The policy the loop calls, against closed forms: "bias" logs the aux loss without training on it, adds the
    z-loss with its weight, and moves the biases only when the optimizer steps (a skipped step leaves them)."""
    from moe.balance import BalancePolicy

    torch.manual_seed(3)
    model = _Two(e=4)
    cfg = MoEConfig(num_experts=4, top_k=2, expert_hidden=8, balance="bias", bias_rate=0.01, aux_weight=0.5,
                    z_weight=0.1)
    policy = BalancePolicy(cfg, model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    policy.attach(optimizer)
    x = torch.randn(16, 8)
    policy.start_step()
    routing = [model.a(x), model.b(x)]
    ce = torch.tensor(2.0)
    terms = policy.loss_terms(ce, routing)
    counts = torch.stack([torch.bincount(s.indices.reshape(-1), minlength=4).float() for s in routing])
    probs = torch.stack([torch.softmax(s.logits, -1).mean(0) for s in routing])
    aux = (4 * (counts / counts.sum(-1, keepdim=True)) * probs).sum()  # E·Σ f·P per layer, summed
    z = sum(torch.logsumexp(s.logits, -1).square().mean() for s in routing)
    torch.testing.assert_close(terms["aux"], aux)
    torch.testing.assert_close(terms["total"], ce + 0.1 * z)  # balance = "bias": aux logged, not trained on
    metrics = policy.step_metrics()
    assert metrics["moe/aux_loss"] == pytest.approx(aux.item(), rel=1e-6) and "moe/maxvio" in metrics
    assert model.a.selection_bias.abs().sum() == 0  # no optimizer step yet (a skipped step never calls it)
    optimizer.step()
    expected = 0.01 * torch.sign(counts.mean(-1, keepdim=True) - counts)
    torch.testing.assert_close(torch.stack([model.a.selection_bias, model.b.selection_bias]), expected)
