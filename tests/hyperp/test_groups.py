from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hyperp import OptimConfig, build_optimizer, param_groups
from hyperp.errors import ConfigError
from hyperp.optim import AdamH, MuonH
from hyperp.roles import Role, declare


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.randn(11, 8) * 1e-2)
        self.proj = nn.Parameter(torch.randn(8, 8) * 0.3)
        self.experts = nn.Parameter(torch.randn(4, 6, 8) * 0.3)
        self.router = nn.Parameter(torch.randn(4, 8) * 0.3)
        self.norm = nn.Parameter(torch.ones(8))
        self.head = nn.Parameter(torch.randn(11, 8) * 0.02)
        declare(self, embed=Role.EMBEDDING, proj=Role.MATRIX, experts=Role.EXPERT, router=Role.ROUTER,
                norm=Role.VECTOR, head=Role.HEAD)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed[idx] * self.norm
        x = torch.tanh(x @ self.proj.T)
        gate = torch.softmax(x @ self.router.T, -1)
        x = x + torch.einsum("be,eoi,bi->bo", gate, self.experts, x).sum(-1, keepdim=True)
        return x @ self.head.T


def _where(opt, model: nn.Module) -> dict[str, tuple[str, str, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for inner in opt.optimizers:
        for g in inner.param_groups:
            for p in g["params"]:
                out[names[id(p)]] = (type(inner).__name__, g["name"], g.get("weight_decay", 0.0))
    return out


EXPECTED = {
    "muonh": {"proj": ("MuonH", "sphere", 0.0), "experts": ("MuonH", "sphere", 0.0), "router": ("MuonH", "sphere", 0.0),
              "head": ("AdamH", "head", 0.0), "embed": ("Adam", "adam", 0.0), "norm": ("Adam", "adam", 0.0)},
    "adamh": {"proj": ("AdamH", "sphere", 0.0), "experts": ("AdamH", "sphere", 0.0), "router": ("AdamH", "sphere", 0.0),
              "head": ("AdamH", "head", 0.0), "embed": ("Adam", "adam", 0.0), "norm": ("Adam", "adam", 0.0)},
    "muon": {"proj": ("MuonH", "matrix", 0.1), "experts": ("MuonH", "matrix", 0.1), "router": ("MuonH", "matrix", 0.1),
             "head": ("AdamW", "head", 0.1), "embed": ("AdamW", "adam", 0.0), "norm": ("AdamW", "adam", 0.0)},
    "adamw": {"proj": ("AdamW", "matrix", 0.1), "experts": ("AdamW", "matrix", 0.1), "router": ("AdamW", "matrix", 0.1),
              "head": ("AdamW", "head", 0.1), "embed": ("AdamW", "adam", 0.0), "norm": ("AdamW", "adam", 0.0)},
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_placement_per_role(name: str) -> None:
    model = Tiny()
    opt = build_optimizer(model, OptimConfig(name=name, lr=0.01))
    assert _where(opt, model) == EXPECTED[name]
    for g in opt.param_groups:
        assert g["base_lr"] == g["lr"] and g["name"]
    for inner in opt.optimizers:
        if isinstance(inner, MuonH):
            assert all(g["sphere"] is (name == "muonh") for g in inner.param_groups)
    loss = model(torch.tensor([1, 2, 3])).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())


def test_router_in_adam_and_lr_scales() -> None:
    cfg = OptimConfig(lr=0.02, adam_lr=0.004, router_on_sphere=False, muon_adjust_lr="original")
    groups = {g["name"]: g for g in param_groups(Tiny(), cfg, transfer_factor=0.5)}
    assert groups["sphere"]["lr"] == pytest.approx(0.01) and groups["head"]["lr"] == pytest.approx(0.01)
    assert groups["adam"]["lr"] == pytest.approx(0.002)  # Marin's own Adam lr, transferred like the matrix lr
    assert len(groups["adam"]["params"]) == 3  # embed, norm, router
    same = {g["name"]: g for g in param_groups(Tiny(), OptimConfig(lr=0.02), transfer_factor=0.5)}
    assert same["adam"]["lr"] == pytest.approx(0.01)  # ArchScale: Adam group shares the sphere lr


def test_schedule_reaches_inner_groups() -> None:
    opt = build_optimizer(Tiny(), OptimConfig())
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * 0.5
    assert all(g["lr"] == 0.5 * g["base_lr"] for inner in opt.optimizers for g in inner.param_groups)


def test_container_is_an_optimizer_hooks_and_lr_schedulers_reach_inner_groups() -> None:
    """A torch LR scheduler and step hooks on the container act on the inner optimizers (torchtitan's container)."""
    model = Tiny()
    opt = build_optimizer(model, OptimConfig(lr=0.01))
    assert isinstance(opt, torch.optim.Optimizer)
    seen: list[object] = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(o))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5**epoch)
    for expected in (0.01, 0.005, 0.0025):
        assert [g["lr"] for inner in opt.optimizers for g in inner.param_groups] == pytest.approx([expected] * 3)
        model(torch.tensor([1, 2, 3])).square().mean().backward()
        opt.step()
        opt.zero_grad()
        scheduler.step()
    assert seen == [opt] * 3
    assert "radius" in opt.state[model.proj] and "exp_avg" in opt.state[model.norm]  # MuonH's / Adam's state
    owned = [{id(p) for g in inner.param_groups for p in g["params"]} for inner in opt.optimizers]
    assert all({id(p) for p in inner.state} <= ids for inner, ids in zip(opt.optimizers, owned))  # no stray entries
    assert len(opt.state) == len(list(model.parameters()))
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # replaces the inner group dicts and state objects
    for g in opt.param_groups:
        g["lr"] = 0.125
    assert [g["lr"] for inner in opt.optimizers for g in inner.param_groups] == [0.125] * 3
    assert "exp_avg" in opt.state[model.norm]


def test_undeclared_parameter_raises() -> None:
    model = Tiny()
    model.extra = nn.Parameter(torch.randn(3))
    with pytest.raises(ConfigError, match="extra"):
        param_groups(model, OptimConfig())


def test_expert_role_needs_3d() -> None:
    model = Tiny()
    declare(model, proj=Role.EXPERT)
    with pytest.raises(ConfigError, match="role expert"):
        param_groups(model, OptimConfig())


@pytest.mark.parametrize("name", ["muonh", "adamh", "muon", "adamw"])
def test_composite_state_dict_round_trip(name: str) -> None:
    cfg = OptimConfig(name=name, lr=0.01)
    model = Tiny()
    opt = build_optimizer(model, cfg)
    batches = [torch.randint(0, 11, (5,)) for _ in range(6)]

    def run(m: nn.Module, o, bs) -> None:
        for b in bs:
            o.zero_grad()
            m(b).square().mean().backward()
            o.step()

    run(model, opt, batches[:3])
    saved = copy.deepcopy(opt.state_dict())
    clone = copy.deepcopy(model)
    run(model, opt, batches[3:])
    fresh = build_optimizer(clone, cfg)
    fresh.load_state_dict(saved)
    run(clone, fresh, batches[3:])
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if name == "muonh":
        assert any(isinstance(o, AdamH) for o in fresh.optimizers)


def _one_step(model: nn.Module, cfg: OptimConfig, depth: int | None = None, lr_mult: float = 1.0,
              zero_grad: bool = False) -> dict[str, torch.Tensor]:
    """Parameters after one step of ``build_optimizer(cfg)`` with the schedule at ``lr_mult`` of peak."""
    opt = build_optimizer(model, cfg, depth=depth)
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * lr_mult
    model(torch.tensor([1, 2, 3])).square().mean().backward()
    if zero_grad:
        for p in model.parameters():
            p.grad.zero_()
    opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_adam_lr_reaches_the_adam_group_and_its_update() -> None:
    """optim.adam_lr drives the embedding/norm update: equal to torch.optim.Adam at that lr, not at the sphere lr."""
    torch.manual_seed(0)
    model = Tiny()
    ref = copy.deepcopy(model)
    init_norm = model.norm.detach().clone()
    cfg = OptimConfig(lr=0.05, adam_lr=0.003)
    groups = {g["name"]: g for g in build_optimizer(copy.deepcopy(model), cfg).param_groups}
    assert groups["adam"]["lr"] == groups["adam"]["base_lr"] == 0.003 and groups["sphere"]["lr"] == 0.05
    after = _one_step(model, cfg)
    ref(torch.tensor([1, 2, 3])).square().mean().backward()
    torch.optim.Adam([ref.embed, ref.norm], lr=0.003, betas=(0.9, 0.95), eps=1e-8).step()
    for name in ("embed", "norm"):
        torch.testing.assert_close(after[name], getattr(ref, name).detach(), rtol=0, atol=1e-7)
    # Closed form of Adam's first step: |Δ| = lr·|g|/(|g| + eps), with lr = adam_lr (the sphere lr would be 0.05).
    g = model.norm.grad.abs()
    torch.testing.assert_close((after["norm"] - init_norm).abs(), 0.003 * g / (g + 1e-8), rtol=1e-4, atol=0)


def test_head_off_the_sphere_is_plain_adam_at_the_sphere_lr() -> None:
    model = Tiny()
    cfg = OptimConfig(lr=0.02, adam_lr=0.004, head_on_sphere=False)
    opt = build_optimizer(model, cfg)
    assert _where(opt, model)["head"] == ("Adam", "head", 0.0)
    head = next(g for g in opt.param_groups if g["name"] == "head")
    assert head["lr"] == 0.02  # the sphere lr, not adam_lr: only the head's geometry changes
    before = model.head.detach().norm()
    _one_step(model, cfg)
    assert abs(float(model.head.detach().norm() - before)) > 1e-6  # free norm (AdamH would pin it)


@pytest.mark.parametrize("mode", ["coupled", "independent"])
@pytest.mark.parametrize("name", ["muon", "adamw"])
def test_weight_decay_modes_depth_scale_and_head(mode: str, name: str) -> None:
    """With zero gradients a step is pure decay: W ← W·(1 − f). Coupled (torch): f = lr_t·wd; independent
    (ArchScale v2scale): f = wd·lr_t/η_peak; both × d₀/L with wd_base_depth; the head keeps its norm when
    decay_head is false."""
    torch.manual_seed(1)
    model = Tiny()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr, wd, mult, d0, depth = 0.02, 0.05, 0.5, 8, 2
    cfg = OptimConfig(name=name, lr=lr, weight_decay=wd, weight_decay_mode=mode, wd_base_depth=d0, decay_head=False)
    after = _one_step(model, cfg, depth=depth, lr_mult=mult, zero_grad=True)
    per_step = wd * d0 / depth * (mult if mode == "independent" else lr * mult)
    for n in ("proj", "experts", "router"):
        torch.testing.assert_close(after[n], init[n] * (1 - per_step), rtol=1e-6, atol=0)
    for n in ("head", "embed", "norm"):
        torch.testing.assert_close(after[n], init[n], rtol=0, atol=0)


def test_wd_base_depth_needs_the_model_depth() -> None:
    with pytest.raises(ConfigError, match="depth"):
        param_groups(Tiny(), OptimConfig(name="muon", wd_base_depth=8))
