from __future__ import annotations

import copy

import pytest
import torch
from reference import TORCH_ABC, ns_reference, retract_reference

from hyperp.errors import ConfigError
from hyperp.optim import AdamH, MuonH
from hyperp.optim.sphere import fixed_norm_update


def test_fixed_norm_update_per_expert_matches_loop() -> None:
    W = torch.randn(4, 6, 5, dtype=torch.float64)
    u = torch.randn(4, 6, 5, dtype=torch.float64)
    R = W.norm(dim=(-2, -1), keepdim=True)
    expected = torch.stack([retract_reference(W[e], u[e], 0.1, float(R[e])) for e in range(4)])
    fixed_norm_update(W, u, 0.1, R.float(), "per_expert")
    torch.testing.assert_close(W, expected, rtol=1e-6, atol=1e-6)


def test_fixed_norm_update_joint_uses_one_norm() -> None:
    W = torch.randn(3, 4, 5, dtype=torch.float64)
    u = torch.randn(3, 4, 5, dtype=torch.float64)
    R = float(W.norm())
    expected = retract_reference(W.reshape(12, 5), u.reshape(12, 5), 0.2, R).reshape(3, 4, 5)
    fixed_norm_update(W, u, 0.2, torch.tensor(R).reshape(1, 1, 1), "joint")
    torch.testing.assert_close(W, expected, rtol=1e-6, atol=1e-6)


def _muon_direction(grad: torch.Tensor, buf: torch.Tensor, beta: float = 0.95, ns: bool = True) -> torch.Tensor:
    buf.mul_(beta).add_(grad, alpha=1 - beta)  # = lerp(grad, 1-β)
    nesterov = grad * (1 - beta) + buf * beta
    if not ns:
        return nesterov
    if nesterov.ndim == 2:
        return ns_reference(nesterov.double(), [TORCH_ABC] * 5)
    return torch.stack([ns_reference(m.double(), [TORCH_ABC] * 5) for m in nesterov])


def test_muonh_100_steps_stays_on_sphere_and_moves_lr_R() -> None:
    W2 = torch.nn.Parameter(torch.randn(24, 16) * 0.1)
    W3 = torch.nn.Parameter(torch.randn(3, 12, 20) * 0.1)
    R2 = W2.detach().norm().item()
    R3 = W3.detach().norm(dim=(-2, -1))
    opt = MuonH([W2, W3], lr=0.05)
    bufs = [torch.zeros_like(W2), torch.zeros_like(W3)]
    for step in range(100):
        lr = 0.05 * (1 - step / 200)
        opt.param_groups[0]["lr"] = lr
        before = [W2.detach().double().clone(), W3.detach().double().clone()]
        W2.grad, W3.grad = torch.randn_like(W2) * 10 ** (step % 3), torch.randn_like(W3)
        check = step % 10 == 0
        u = [_muon_direction(W2.grad.clone(), bufs[0], ns=check), _muon_direction(W3.grad.clone(), bufs[1], ns=check)]
        opt.step()
        assert abs(W2.norm().item() / R2 - 1) < 1e-5
        torch.testing.assert_close(W3.detach().norm(dim=(-2, -1)) / R3, torch.ones(3), rtol=0, atol=1e-5)
        if check:
            # Pre-retraction move: W' = W − lr·R·u/‖u‖ has ‖W − W'‖ = lr·R; after retraction W = R·W'/‖W'‖.
            expect2 = retract_reference(before[0], u[0], lr, R2)
            torch.testing.assert_close(W2.detach().double(), expect2, rtol=0, atol=2e-5 * R2)
            for e in range(3):
                expect = retract_reference(before[1][e], u[1][e], lr, float(R3[e]))
                torch.testing.assert_close(W3.detach()[e].double(), expect, rtol=0, atol=2e-5 * float(R3[e]))


@pytest.mark.parametrize("mode", ["per_expert", "joint"])
def test_adamh_100_steps_stays_on_sphere(mode: str) -> None:
    W = torch.nn.Parameter(torch.randn(4, 8, 6))
    R = W.detach().norm(dim=(-2, -1)) if mode == "per_expert" else W.detach().norm()
    opt = AdamH([W], lr=0.1, expert_sphere=mode)
    for _ in range(100):
        W.grad = torch.randn_like(W) * 100
        opt.step()
        now = W.detach().norm(dim=(-2, -1)) if mode == "per_expert" else W.detach().norm()
        torch.testing.assert_close(now / R, torch.ones_like(R), rtol=0, atol=1e-5)


def test_adamh_step_matches_torch_adam_direction() -> None:
    W = torch.nn.Parameter(torch.randn(10, 7))
    shadow = torch.nn.Parameter(torch.zeros(10, 7))  # torch.optim.Adam at lr=1 from 0 ⇒ shadow = −Σ directions
    R = W.detach().norm().item()
    ours, adam = AdamH([W], lr=0.03), torch.optim.Adam([shadow], lr=1.0, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(5):
        g = torch.randn(10, 7)
        before, prev = W.detach().double().clone(), shadow.detach().clone()
        W.grad, shadow.grad = g.clone(), g.clone()
        ours.step()
        adam.step()
        u = (prev - shadow.detach()).double()  # Adam's bias-corrected m̂/(√v̂+ε)
        torch.testing.assert_close(W.detach().double(), retract_reference(before, u, 0.03, R), rtol=0, atol=1e-5)


@pytest.mark.parametrize("make", [lambda p: MuonH([p]), lambda p: AdamH([p])])
def test_zero_norm_parameter_is_rejected(make) -> None:
    p = torch.nn.Parameter(torch.zeros(8, 4))
    opt = make(p)
    p.grad = torch.randn_like(p)
    with pytest.raises(ConfigError, match=r"shape \(8, 4\) has zero norm; it would stay zero forever"):
        opt.step()


def test_zero_expert_slice_is_rejected_per_expert() -> None:
    p = torch.nn.Parameter(torch.randn(3, 4, 4))
    with torch.no_grad():
        p[1].zero_()
    opt = MuonH([p])
    p.grad = torch.randn_like(p)
    with pytest.raises(ConfigError, match="zero norm"):
        opt.step()
    joint = copy.deepcopy(p)
    opt = MuonH([joint], expert_sphere="joint")  # joint radius is non-zero: accepted
    joint.grad = torch.randn_like(joint)
    opt.step()
