"""Router vs a numpy computation; dropless routing; SqrtGate RMS property (SPEC §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moe import MoEBlock, MoEConfig
from moe.router import Router


def numpy_route(x: np.ndarray, w: np.ndarray, k: int):
    z = x.astype(np.float64) @ w.astype(np.float64).T
    idx = np.argsort(-z, axis=-1, kind="stable")[:, :k]
    top = np.take_along_axis(z, idx, -1)
    g = np.exp(top - top.max(-1, keepdims=True))
    g /= g.sum(-1, keepdims=True)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return z, idx, g, p.mean(0)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_router_matches_numpy(k):
    torch.manual_seed(0)
    router = Router(hidden=12, num_experts=7, top_k=k)
    x = torch.randn(40, 12)
    stats = router(x)
    z, idx, g, p = numpy_route(x.numpy(), router.weight.detach().numpy(), k)
    assert stats.logits.dtype == torch.float32
    np.testing.assert_allclose(stats.logits.detach().numpy(), z, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(stats.indices.numpy(), idx)
    np.testing.assert_allclose(stats.weights.detach().numpy(), g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.prob_mean.detach().numpy(), p, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stats.counts.numpy(), np.bincount(idx.ravel(), minlength=7))
    assert stats.num_tokens == 40 and not stats.counts.requires_grad and stats.prob_mean.requires_grad


def test_router_weights_are_renormalized_topk_softmax():
    """softmax over the k selected logits == full softmax restricted to top-k and renormalized (norm_topk_prob)."""
    torch.manual_seed(1)
    router = Router(hidden=8, num_experts=10, top_k=3)
    stats = router(torch.randn(25, 8))
    full = torch.softmax(stats.logits, -1).gather(-1, stats.indices)
    torch.testing.assert_close(stats.weights, full / full.sum(-1, keepdim=True))


def test_router_ties_break_to_lower_expert_id_and_bf16_input_gives_fp32_logits():
    router = Router(hidden=4, num_experts=6, top_k=3)
    with torch.no_grad():
        router.weight.zero_()
        router.weight[4] = 1.0
    stats = router(torch.ones(3, 4, dtype=torch.bfloat16))
    assert stats.logits.dtype == torch.float32
    assert stats.indices.tolist() == [[4, 0, 1]] * 3


@pytest.mark.parametrize("backend", ["loop", "torch"])
def test_dropless_when_all_tokens_pick_the_same_expert(backend):
    """Every token is processed by exactly k experts even when one expert receives every token."""
    torch.manual_seed(0)
    cfg = MoEConfig(num_experts=8, top_k=2, expert_hidden=6, gate="softmax", backend=backend)
    block = MoEBlock(10, cfg)
    with torch.no_grad():
        block.router.weight.zero_()
        block.router.weight[3, 0] = 50.0  # expert 3 wins for every token with x[:, 0] > 0
        block.router.weight[6, 1] = 20.0
    x = torch.randn(64, 10)
    x[:, :2] = 1.0  # logits: expert 3 → 50, expert 6 → 20, the rest 0
    y, stats = block(x)
    assert (stats.indices[:, 0] == 3).all() and (stats.indices[:, 1] == 6).all()
    assert stats.counts[3] == 64 and stats.counts[6] == 64 and stats.counts.sum() == 64 * 2
    ref = sum(stats.weights[:, j : j + 1] * torch.stack([block.experts.expert(int(e), x[t : t + 1])[0]
              for t, e in enumerate(stats.indices[:, j])]) for j in range(2))
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


class _IidExperts(torch.nn.Module):
    """Stand-in experts: each (token, expert) output is an independent N(0, r²) vector."""


def _gated_output_rms(gate: str, k: int, r: float = 2.0, n: int = 4096, h: int = 64, e: int = 16):
    torch.manual_seed(k)
    cfg = MoEConfig(num_experts=e, top_k=k, expert_hidden=4, gate=gate, backend="loop")
    block = MoEBlock(h, cfg)
    x = torch.randn(n, h) * 3.0  # peaky router so the gates are far from uniform
    stats = block.router(x)
    outputs = torch.randn(n, e, h) * r  # iid expert outputs of RMS r
    chosen = outputs.gather(1, stats.indices.unsqueeze(-1).expand(-1, -1, h))
    gates = block.gate_weights(stats.weights).detach()
    y = (gates.unsqueeze(-1) * chosen).sum(1)
    return y.square().mean().sqrt().item(), stats.weights.detach()


def test_sqrt_gate_keeps_output_rms_across_k():
    r = 2.0
    base, _ = _gated_output_rms("sqrt", 1, r)
    assert abs(base - r) / r < 0.05
    for k in (2, 4, 8):
        rms, _ = _gated_output_rms("sqrt", k, r)
        assert abs(rms - base) / base < 0.10, (k, rms, base)


def test_standard_gate_follows_closed_form():
    r = 2.0
    for k in (1, 2, 4, 8):
        rms, g = _gated_output_rms("softmax", k, r)
        expected = r * math.sqrt(g.square().sum(-1).mean().item())  # E‖Σ g_i e_i‖² = r²·Σ g_i² per token
        assert abs(rms - expected) / expected < 0.05, (k, rms, expected)
    rms8, _ = _gated_output_rms("softmax", 8, r)
    assert rms8 < 0.7 * r  # shrinks with k, unlike SqrtGate


def test_shared_expert_mixing():
    torch.manual_seed(0)
    x = torch.randn(5, 16)
    for gate in ("sqrt", "softmax"):
        cfg = MoEConfig(num_experts=4, top_k=2, expert_hidden=8, shared_expert=True, shared_hidden=12,
                        gate=gate, shared_mix=0.3, backend="loop")
        block = MoEBlock(16, cfg)
        assert block.shared_expert.gate_proj.weight.shape == (12, 16)
        y, stats = block(x)
        gates = block.gate_weights(stats.weights)
        routed = sum(gates[:, j : j + 1] * torch.stack([block.experts.expert(int(e), x[t : t + 1])[0]
                     for t, e in enumerate(stats.indices[:, j])]) for j in range(2))
        shared = block.shared_expert(x)
        want = math.sqrt(0.7) * routed + math.sqrt(0.3) * shared if gate == "sqrt" else routed + shared
        torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)


def test_block_shapes_roles_and_init():
    from hyperp.roles import Role, collect

    cfg = MoEConfig(num_experts=4, top_k=2, expert_hidden=8, shared_expert=True)
    block = MoEBlock(16, cfg)
    roles = collect(block)
    assert roles["router.weight"] == Role.ROUTER
    assert roles["experts.w_gate"] == roles["experts.w_up"] == roles["experts.w_down"] == Role.EXPERT
    assert roles["shared_expert.down_proj.weight"] == Role.MATRIX
    assert block.experts.w_gate.shape == (4, 8, 16) and block.experts.w_down.shape == (4, 16, 8)
    for w, fan_in in ((block.experts.w_gate, 16), (block.experts.w_down, 8), (block.router.weight, 16)):
        assert w.abs().max() <= 1 / math.sqrt(fan_in) and w.abs().max() > 0.5 / math.sqrt(fan_in)
    y, stats = block(torch.randn(2, 3, 16))
    assert y.shape == (2, 3, 16) and stats.logits.shape == (6, 4) and stats.indices.shape == (6, 2)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_router_logits_are_fp32_under_bf16_autocast(x_dtype):
    """Under ``torch.autocast(bf16)`` an F.linear on fp32 inputs still runs in bf16 (~3 significant digits); the
    router must switch autocast off, so its logits match an fp64 reference to fp32 rounding (12-term dot products:
    ≲ 1e-6 relative), far inside bf16's 2^-8 ≈ 4e-3."""
    torch.manual_seed(0)
    router = Router(hidden=12, num_experts=7, top_k=2)
    x = torch.randn(40, 12).to(x_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stats = router(x)
    assert stats.logits.dtype == torch.float32 and stats.weights.dtype == torch.float32
    z, idx, g, _ = numpy_route(x.float().numpy(), router.weight.detach().numpy(), 2)
    np.testing.assert_allclose(stats.logits.detach().numpy(), z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.weights.detach().numpy(), g, rtol=1e-5, atol=1e-6)


def test_router_keeps_fp64():
    """fp64 inputs (``train.dtype = "float64"``) are routed in fp64, not rounded to fp32."""
    torch.manual_seed(0)
    router = Router(hidden=12, num_experts=7, top_k=2).double()
    x = torch.randn(40, 12, dtype=torch.float64)
    stats = router(x)
    z, *_ = numpy_route(x.numpy(), router.weight.detach().numpy(), 2)
    assert stats.logits.dtype == torch.float64
    np.testing.assert_allclose(stats.logits.detach().numpy(), z, rtol=1e-12, atol=1e-12)
