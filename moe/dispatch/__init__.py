"""Token dispatch backends, chosen by name (SPEC §4, DESIGN "moe/dispatch").

A backend is ``fn(x (N, H), indices (N, k), weights (N, k), experts) -> (N, H)`` computing
Σ_j weights[:, j] · Expert_{indices[:, j]}(x), dropless (no capacity factor, no dropped tokens). ``weights`` are
already gate-transformed (√g under SqrtGate), so backends know nothing about gate modes. Every backend returns
the output in :func:`moe.dispatch.precision.compute_dtype` (autocast's dtype under autocast, else x's); the torch and
megablocks backends cast their operands themselves because autocast does not reach their grouped matmuls.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch as _torch

from hyperp.errors import ConfigError

DispatchFn = Callable[..., _torch.Tensor]

_MODULES = {"loop": "moe.dispatch.loop", "torch": "moe.dispatch.torch", "megablocks": "moe.dispatch.megablocks"}


def get_dispatch(name: str, device: _torch.device | str = "cpu") -> DispatchFn:
    """Return the dispatch function for backend ``name`` on ``device``; "auto" → megablocks on CUDA if importable."""
    device = _torch.device(device)
    if name == "auto":
        name = "megablocks" if device.type == "cuda" and _megablocks_available() else "torch"
    if name not in _MODULES:
        raise ConfigError(f"moe.backend={name!r} must be one of auto, {', '.join(_MODULES)}")
    module = importlib.import_module(_MODULES[name])
    if name == "megablocks":
        module.require(device)
    return module.dispatch


def _megablocks_available() -> bool:
    return importlib.import_module("moe.dispatch.megablocks").available()


__all__ = ["DispatchFn", "get_dispatch"]
