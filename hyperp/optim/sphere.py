"""The one retraction shared by MuonH and AdamH (SPEC §1, "Update with fixed norm, then retraction").

    W' = W − η · R · u / ‖u‖_F          (every step moves W by exactly η·R: angular step ≈ η radians)
    W  ← R · W' / ‖W'‖_F                (back onto the sphere of radius R = ‖W_init‖_F)

Norms are taken over the last two dims in one pass, so a stacked (E, out, in) expert tensor is E matrices with E
radii (``"per_expert"``, Marin's choice) — or, with ``"joint"``, one norm over the whole tensor as ArchScale's 3-D
expert path does (``lit_gpt/optim/muon.py``: ``muonh_apply_scaled_update_and_local_sq_norms`` normalizes each
parameter tensor as a whole).

Why per-expert is the default: an expert is a matrix like any dense one, and per expert the sphere's two
guarantees hold for each of them — its norm never leaves its init value, and it turns by exactly η radians a step.
A joint norm fixes only the sum: individual experts' norms drift (SqrtGate's output-RMS argument and the
norm-drift monitor assume each expert keeps its own), and with AdamH, whose directions are not normalized per expert,
busy experts take most of the step budget from rarely routed ones. Per-expert norms are also independent of how the
experts are stored or sharded (expert parallelism needs no cross-rank norm). With MuonH the two nearly coincide at
init, since Newton–Schulz gives every expert a direction of the same norm.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from hyperp.dtypes import at_least_fp32
from hyperp.errors import ConfigError

ExpertSphere = Literal["per_expert", "joint"]
EXPERT_SPHERE_MODES: tuple[str, ...] = typing.get_args(ExpertSphere)


def check_mode(mode: str) -> str:
    if mode not in EXPERT_SPHERE_MODES:
        raise ValueError(f"expert_sphere={mode!r} must be one of {EXPERT_SPHERE_MODES}")
    return mode


def frobenius_norm(x: Tensor, mode: str = "per_expert") -> Tensor:
    """‖x‖_F per trailing matrix (keepdim), or over the whole tensor for ``mode="joint"``; fp32 accumulation."""
    dims = tuple(range(x.ndim)) if mode == "joint" else (-2, -1)
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=_acc_dtype(x))


def _acc_dtype(x: Tensor) -> torch.dtype:
    """fp32 accumulation for low-precision parameters, fp64 kept for fp64 ones."""
    return at_least_fp32(x.dtype)


def init_radius(param: Tensor, mode: str = "per_expert") -> Tensor:
    """R = ‖W‖_F now (at the first step = at init); a zero radius would pin W at zero forever."""
    if param.ndim not in (2, 3):
        raise ConfigError(f"sphere parameter of shape {tuple(param.shape)} must be 2-D or 3-D (E, out, in)")
    radius = frobenius_norm(param.detach(), mode)
    if not bool((radius > 0).all()):
        raise ConfigError(
            f"sphere parameter of shape {tuple(param.shape)} has zero norm; it would stay zero forever "
            "(initialize it non-zero, e.g. kaiming-uniform)"
        )
    return radius


@torch.no_grad()
def fixed_norm_update(
    W: Tensor, u: Tensor, lr: float | Tensor, R: Tensor, mode: str = "per_expert", eps: float = 1e-12,
    norm: Callable[[Tensor, str], Tensor] = frobenius_norm,
) -> None:
    """In place: W ← R·(W − lr·R·u/‖u‖)/‖W − lr·R·u/‖u‖‖, batched over experts (no Python loop).

    ``norm`` is :func:`frobenius_norm` unless W and u are shards of a matrix (:mod:`hyperp.optim.sharded`).
    """
    acc = _acc_dtype(W)
    u = u.to(acc)
    scale = (lr * R) / norm(u, mode).clamp(min=eps)
    stepped = W.to(acc) - u * scale
    n = norm(stepped, mode)
    # A step exactly opposite to W (possible only when lr ≥ 1 and u ∥ W) lands on 0, where the sphere has no
    # direction: keep W rather than pin it at zero forever.
    W.copy_(torch.where(n > 0, stepped * (R / n.clamp(min=eps)), W.to(acc)))
