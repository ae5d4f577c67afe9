"""Role → optimizer group (SPEC §1–§2). Decided from the roles models declare, never from parameter names.

| optimizer | MATRIX, EXPERT        | ROUTER                      | HEAD            | EMBEDDING, VECTOR |
|-----------|-----------------------|-----------------------------|-----------------|-------------------|
| muonh     | MuonH "sphere"        | sphere, or Adam if !router_on_sphere | AdamH "head" (Adam if !head_on_sphere) | Adam "adam", no decay |
| adamh     | AdamH "sphere"        | AdamH "sphere"              | AdamH "head" (Adam if !head_on_sphere) | Adam "adam"       |
| muon      | Muon "matrix" (+wd)   | Muon "matrix"               | AdamW "head" (+wd if decay_head) | AdamW "adam", wd 0|
| adamw     | AdamW "matrix" (+wd)  | AdamW "matrix"              | AdamW "head" (+wd if decay_head) | AdamW "adam", wd 0|

ArchScale ``pretrain.py:get_param_groups`` gives the Adam group the same lr as the matrices; Marin gives it its own
``adam_lr``: both via :class:`OptimConfig`. ``transfer_factor`` is the run's HyperP lr factor
(:func:`hyperp.transfer.transfer_factor`); :func:`hyperp.transfer.peak_lrs` turns it into the groups' peak lrs.
Decayed groups get ``weight_decay`` × d₀/L (``wd_base_depth``; needs the model ``depth``) and, in the
"independent" mode, ÷ the group's peak lr, so that torch's per-step ``lr_t·wd`` becomes ``wd·lr_t/η_peak``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hyperp.errors import ConfigError
from hyperp.optim.adamh import AdamH
from hyperp.optim.composite import CompositeOptimizer
from hyperp.optim.config import OptimConfig
from hyperp.optim.muonh import MuonH
from hyperp.roles import Role, collect
from hyperp.transfer import peak_lrs

_SPHERE_ROLES = (Role.MATRIX, Role.EXPERT, Role.ROUTER)
# (group name, inner optimizer kind) per (optimizer name, role).
_PLACEMENT: dict[str, dict[Role, tuple[str, str]]] = {
    "muonh": {
        Role.MATRIX: ("sphere", "muonh"), Role.EXPERT: ("sphere", "muonh"), Role.ROUTER: ("sphere", "muonh"),
        Role.HEAD: ("head", "adamh"), Role.EMBEDDING: ("adam", "adam"), Role.VECTOR: ("adam", "adam"),
    },
    "adamh": {
        Role.MATRIX: ("sphere", "adamh"), Role.EXPERT: ("sphere", "adamh"), Role.ROUTER: ("sphere", "adamh"),
        Role.HEAD: ("head", "adamh"), Role.EMBEDDING: ("adam", "adam"), Role.VECTOR: ("adam", "adam"),
    },
    "muon": {
        Role.MATRIX: ("matrix", "muon"), Role.EXPERT: ("matrix", "muon"), Role.ROUTER: ("matrix", "muon"),
        Role.HEAD: ("head", "adamw"), Role.EMBEDDING: ("adam", "adamw"), Role.VECTOR: ("adam", "adamw"),
    },
    "adamw": {
        Role.MATRIX: ("matrix", "adamw"), Role.EXPERT: ("matrix", "adamw"), Role.ROUTER: ("matrix", "adamw"),
        Role.HEAD: ("head", "adamw"), Role.EMBEDDING: ("adam", "adamw"), Role.VECTOR: ("adam", "adamw"),
    },
}
_ORDER = ("sphere", "matrix", "head", "adam")


def _placement(cfg: OptimConfig, role: Role) -> tuple[str, str]:
    if cfg.name == "muonh" and role is Role.ROUTER and not cfg.router_on_sphere:
        return "adam", "adam"  # Marin's MoE MuonH recipe keeps the router in plain Adam
    if cfg.name in ("muonh", "adamh") and role is Role.HEAD and not cfg.head_on_sphere:
        return "head", "adam"
    return _PLACEMENT[cfg.name][role]


def _decay(name: str, cfg: OptimConfig, lr: float, depth: int | None) -> float:
    """The group's torch ``weight_decay``: 0 for the Adam group (and the head unless ``decay_head``), else scaled."""
    if name == "adam" or (name == "head" and not cfg.decay_head):
        return 0.0
    wd = cfg.weight_decay
    if cfg.wd_base_depth is not None:
        if depth is None:
            raise ConfigError("optim.wd_base_depth is set but the model depth was not given to build the optimizer")
        wd *= cfg.wd_base_depth / depth
    return wd / lr if cfg.weight_decay_mode == "independent" else wd


def _group_settings(name: str, kind: str, cfg: OptimConfig, transfer_factor: float, depth: int | None
                    ) -> dict[str, Any]:
    matrix_lr, adam_lr = peak_lrs(cfg.lr, cfg.adam_lr, transfer_factor)
    lr = adam_lr if name == "adam" else matrix_lr
    settings: dict[str, Any] = {"name": name, "kind": kind, "lr": lr, "base_lr": lr}
    if kind in ("adam", "adamw", "adamh"):
        settings.update(betas=tuple(cfg.betas), eps=cfg.eps)
    if kind == "adamw":
        settings["weight_decay"] = _decay(name, cfg, lr, depth)
    if kind in ("adam",):
        settings["weight_decay"] = 0.0
    if kind in ("muonh", "adamh"):
        settings["expert_sphere"] = cfg.expert_sphere
    if kind in ("muonh", "muon"):
        settings.update(momentum=cfg.momentum, ns_steps=cfg.ns_steps, ns_coefficients=cfg.ns_coefficients)
    if kind == "muonh":
        settings.update(sphere=True, weight_decay=0.0)
    if kind == "muon":
        settings.update(sphere=False, weight_decay=_decay(name, cfg, lr, depth), adjust_lr_fn=cfg.muon_adjust_lr)
    return settings


def param_groups(
    model: nn.Module, cfg: OptimConfig, transfer_factor: float = 1.0, depth: int | None = None
) -> list[dict[str, Any]]:
    """Parameter groups by declared role; each dict has ``params``, ``name``, ``kind``, ``lr``, ``base_lr`` (the
    peak lr that the schedule multiplies).

    ``depth`` (the model's layer count) is needed only for ``optim.wd_base_depth``.
    """
    if not transfer_factor > 0:
        raise ConfigError(f"HyperP transfer factor {transfer_factor} must be > 0")
    try:
        roles = collect(model)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    params = dict(model.named_parameters())
    groups: dict[str, dict[str, Any]] = {}
    for fqn, role in roles.items():
        p = params.get(fqn)
        if p is None or not p.requires_grad:
            continue
        name, kind = _placement(cfg, role)
        _check_shape(fqn, p, role, kind)
        if name not in groups:
            groups[name] = _group_settings(name, kind, cfg, transfer_factor, depth) | {"params": [], "param_names": []}
        groups[name]["params"].append(p)
        groups[name]["param_names"].append(fqn)
    return [groups[n] for n in _ORDER if n in groups]


def _check_shape(fqn: str, p: torch.Tensor, role: Role, kind: str) -> None:
    if kind in ("muonh", "adamh", "muon") and p.ndim not in (2, 3):
        raise ConfigError(f"parameter {fqn!r} (role {role}) has shape {tuple(p.shape)}; matrix roles need 2-D/3-D")
    if role is Role.EXPERT and p.ndim != 3:
        raise ConfigError(f"parameter {fqn!r} has role expert but shape {tuple(p.shape)}; expected (E, out, in)")


def _make(kind: str, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if kind in ("muonh", "muon"):
        return MuonH(groups)
    if kind == "adamh":
        return AdamH(groups)
    if kind == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.AdamW(groups)


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, transfer_factor: float = 1.0, depth: int | None = None
) -> CompositeOptimizer:
    """One :class:`CompositeOptimizer` over one inner optimizer per kind, groups in a fixed order."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for group in param_groups(model, cfg, transfer_factor, depth):
        by_kind.setdefault(group["kind"], []).append(group)
    if not by_kind:
        raise ConfigError("model has no trainable parameters to optimize")
    return CompositeOptimizer([_make(kind, groups) for kind, groups in by_kind.items()])
