from __future__ import annotations

import copy
import warnings

import pytest
import torch

from hyperp.optim import MuonH


def _run(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], grads: list[list[torch.Tensor]]) -> None:
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("adjust", [None, "original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_plain_muon_matches_torch(weight_decay: float, adjust: str | None, nesterov: bool) -> None:
    shapes = [(32, 16), (16, 48)]
    ours = [torch.nn.Parameter(torch.randn(*s) * 0.1) for s in shapes]
    theirs = copy.deepcopy(ours)
    grads = [[torch.randn(*s) for s in shapes] for _ in range(5)]
    kw = dict(lr=0.02, momentum=0.95, nesterov=nesterov, weight_decay=weight_decay, adjust_lr_fn=adjust)
    # torch.optim.Muon runs Newton–Schulz in bf16 always: ask ours for bf16 to compare like with like.
    _run(MuonH(ours, sphere=False, ns_dtype=torch.bfloat16, **kw), ours, grads)
    _run(torch.optim.Muon(theirs, **kw), theirs, grads)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_batched_expert_step_equals_separate_2d_steps() -> None:
    for sphere in (True, False):
        stacked = torch.nn.Parameter(torch.randn(4, 12, 20))
        singles = [torch.nn.Parameter(stacked.detach()[e].clone()) for e in range(4)]
        opt3 = MuonH([stacked], lr=0.05, sphere=sphere)
        opt2 = MuonH(singles, lr=0.05, sphere=sphere)
        for _ in range(3):
            g = torch.randn(4, 12, 20)
            stacked.grad = g.clone()
            for e, p in enumerate(singles):
                p.grad = g[e].clone()
            opt3.step()
            opt2.step()
        torch.testing.assert_close(stacked.detach(), torch.stack([p.detach() for p in singles]), rtol=0, atol=1e-5)


def test_joint_sphere_keeps_one_norm_not_each() -> None:
    p = torch.nn.Parameter(torch.randn(4, 8, 8) * torch.tensor([0.1, 1.0, 2.0, 3.0]).view(4, 1, 1))
    total, per = p.detach().norm(), p.detach().norm(dim=(-2, -1))
    opt = MuonH([p], lr=0.2, expert_sphere="joint")
    for _ in range(10):
        p.grad = torch.randn_like(p)
        opt.step()
    torch.testing.assert_close(p.detach().norm(), total, rtol=1e-5, atol=0)
    assert not torch.allclose(p.detach().norm(dim=(-2, -1)), per, rtol=1e-2)
    assert opt.state[p]["radius"].numel() == 1


def test_sphere_ignores_weight_decay_with_one_warning() -> None:
    a = torch.nn.Parameter(torch.randn(8, 8))
    b = copy.deepcopy(a)
    opt_wd, opt = MuonH([a], weight_decay=0.5), MuonH([b])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            g = torch.randn(8, 8)
            a.grad, b.grad = g.clone(), g.clone()
            opt_wd.step()
            opt.step()
    assert sum("weight_decay is ignored" in str(w.message) for w in caught) == 1
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sphere_does_not_apply_muon_lr_adjustment() -> None:
    a = torch.nn.Parameter(torch.randn(64, 8))
    b = copy.deepcopy(a)
    oa, ob = MuonH([a], adjust_lr_fn="match_rms_adamw"), MuonH([b], adjust_lr_fn=None)
    a.grad = torch.randn(64, 8)
    b.grad = a.grad.clone()
    oa.step()
    ob.step()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("sphere", [True, False])
def test_state_dict_round_trip(sphere: bool) -> None:
    params = [torch.nn.Parameter(torch.randn(3, 6, 5)), torch.nn.Parameter(torch.randn(7, 9))]
    grads = [[torch.randn_like(p) for p in params] for _ in range(6)]
    opt = MuonH(params, lr=0.03, sphere=sphere, weight_decay=0.0 if sphere else 0.1)
    _run(opt, params, grads[:3])
    saved = copy.deepcopy(opt.state_dict())
    snapshot = [p.detach().clone() for p in params]
    _run(opt, params, grads[3:])
    resumed = [torch.nn.Parameter(s.clone()) for s in snapshot]
    fresh = MuonH(resumed, lr=0.5, sphere=sphere)  # hyperparameters come back from the state dict
    fresh.load_state_dict(saved)
    if sphere:
        assert "radius" in fresh.state[resumed[0]]
    _run(fresh, resumed, grads[3:])
    for a, b in zip(params, resumed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
