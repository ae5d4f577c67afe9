from __future__ import annotations

import copy

import pytest
import torch

from hyperp.optim import AdamH


def _spd(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    eig = torch.linspace(0.1, 1.0, n, dtype=torch.float64)
    eig[-1] = 2.0  # clear gap
    A = Q @ torch.diag(eig) @ Q.T
    _, vecs = torch.linalg.eigh(A)  # closed form: top eigenvector = last column
    return A.float(), vecs[:, -1].float()


@pytest.mark.parametrize("r", [1, 3])
def test_adamh_finds_top_eigenvector(r: int) -> None:
    """min −tr(WᵀAW) on ‖W‖_F = R is attained when every column lies along A's top eigenvector.

    Adam's per-coordinate normalization is not rotation-equivariant: with steady gradients m̂/√v̂ → sign(g), so
    sign-pattern matrices are fixed points of the fixed-norm update and the eigenvector is not reached. With
    ε ≫ √v̂ the preconditioner is scalar, the direction is the bias-corrected momentum, and the closed form holds.
    """
    A, v = _spd(12)
    W = torch.nn.Parameter(torch.randn(12, r))
    R = W.detach().norm().item()
    opt = AdamH([W], lr=0.1, eps=1e3)
    steps = 600
    for t in range(steps):
        opt.param_groups[0]["lr"] = 0.1 * (1e-2) ** (t / steps)  # geometric decay to 1e-3
        opt.zero_grad()
        (-(W.T @ A @ W).trace()).backward()
        opt.step()
    Wd = W.detach()
    off = Wd - torch.outer(v, v @ Wd)
    assert off.norm() / Wd.norm() < 2e-2
    assert abs(Wd.norm().item() / R - 1) < 1e-5
    torch.testing.assert_close((Wd.T @ A @ Wd).trace(), torch.tensor(2.0 * R**2), rtol=1e-3, atol=0)


def test_state_dict_round_trip() -> None:
    params = [torch.nn.Parameter(torch.randn(2, 5, 4)), torch.nn.Parameter(torch.randn(6, 3))]
    grads = [[torch.randn_like(p) for p in params] for _ in range(6)]
    opt = AdamH(params, lr=0.05)

    def run(o: AdamH, ps: list[torch.nn.Parameter], gs: list[list[torch.Tensor]]) -> None:
        for step_grads in gs:
            for p, g in zip(ps, step_grads, strict=True):
                p.grad = g.clone()
            o.step()

    run(opt, params, grads[:3])
    saved = copy.deepcopy(opt.state_dict())
    snapshot = [p.detach().clone() for p in params]
    run(opt, params, grads[3:])
    resumed = [torch.nn.Parameter(s) for s in snapshot]
    fresh = AdamH(resumed, lr=1.0)
    fresh.load_state_dict(saved)
    run(fresh, resumed, grads[3:])
    for a, b in zip(params, resumed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
