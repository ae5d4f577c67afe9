"""MuonH / AdamH keep every matrix on its sphere (‖W‖_F = R, per expert or jointly) and finite for 1,000 steps at
large learning rates, for 2-D and 3-D shapes and float32 / float64 / bfloat16 parameters."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperp.optim import AdamH, MuonH
from hyperp.optim.sphere import frobenius_norm

STEPS = 1000
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-4, torch.bfloat16: 2e-2}  # bf16 keeps 8 mantissa bits

SHAPES = st.one_of(
    st.tuples(st.integers(1, 12), st.integers(1, 12)),
    st.tuples(st.integers(1, 4), st.integers(1, 8), st.integers(1, 8)),
)


@settings(max_examples=10, deadline=None)
@given(
    shape=SHAPES,
    dtype=st.sampled_from([torch.float32, torch.float32, torch.bfloat16]),  # float64: see test_float64_params
    kind=st.sampled_from(["muonh", "adamh"]),
    lr=st.floats(0.1, 0.95),  # lr = 1.0 exactly: see test_unit_lr_can_land_on_the_origin
    mode=st.sampled_from(["per_expert", "joint"]),
    grad_scale=st.sampled_from([1e-6, 1.0, 1e6]),
    seed=st.integers(0, 2**16),
)
def test_sphere_optimizers_stay_on_the_sphere(shape, dtype, kind, lr, mode, grad_scale, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter((torch.randn(shape, generator=gen) * 0.3 + 0.01).to(dtype))
    if kind == "muonh":
        opt = MuonH([weight], lr=lr, expert_sphere=mode)
    else:
        opt = AdamH([weight], lr=lr, expert_sphere=mode)
    radius = frobenius_norm(weight.detach(), mode)
    tol = TOLERANCE[dtype]
    grads = torch.randn((STEPS, *shape), generator=gen) * grad_scale
    grads[::97] = 0.0  # an occasional all-zero gradient (e.g. an expert that got no tokens)
    rel = torch.empty(STEPS)
    for step in range(STEPS):
        weight.grad = grads[step].to(dtype)
        opt.step()
        rel[step] = ((frobenius_norm(weight.detach(), mode) - radius).abs() / radius).max()  # NaN if not finite
    bad = (~(rel <= tol)).nonzero()
    assert bad.numel() == 0, (f"first off-sphere step {int(bad[0])}", rel[bad[0]].item(), kind, shape, dtype)
    assert torch.isfinite(weight).all()
    assert torch.equal(opt.state[weight]["radius"], radius)  # the radius itself never drifts


def test_unit_lr_step_through_the_origin_keeps_w() -> None:
    """With lr = 1 and an update parallel to W, W − lr·R·û = 0: the sphere has no direction there, so the step is
    skipped for that matrix (W kept) instead of collapsing W to 0 forever. Any lr < 1 keeps ‖W′‖ ≥ (1 − lr)·R."""
    weight = torch.nn.Parameter(torch.tensor([[2.0]]))
    opt = MuonH([weight], lr=1.0)
    weight.grad = torch.tensor([[1.0]])  # descent direction −û points from W straight through the origin
    opt.step()
    assert weight.detach().tolist() == [[2.0]]


@pytest.mark.parametrize("kind", [MuonH, AdamH])
def test_float64_params(kind) -> None:
    weight = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    radius = weight.detach().norm().item()
    opt = kind([weight], lr=0.5)
    for _ in range(50):
        weight.grad = torch.randn_like(weight)
        opt.step()
    assert abs(weight.detach().norm().item() - radius) <= 1e-6 * radius
