"""MuonH: Muon's direction on the Frobenius hypersphere (SPEC §1; ArchScale ``lit_gpt/optim/muon.py``, ``use_muonh``).

Per step, for each 2-D matrix or stacked (E, out, in) expert tensor:

1. Nesterov momentum with ``torch.optim.Muon``'s buffer semantics: ``buf.lerp_(g, 1−β)``; direction
   ``g.lerp(buf, β)`` (nesterov) or ``buf``.
2. Batched Newton–Schulz (:mod:`hyperp.optim.newton_schulz`) over the experts; on sharded parameters each matrix is
   orthogonalized whole, once (:func:`hyperp.optim.sharded.orthogonalize`: locally for experts sharded on the
   expert dim, on a round-robin owner rank for matrices sharded on their rows).
3. ``sphere=True``: fixed-norm update + retraction (:func:`hyperp.optim.sphere.fixed_norm_update`) with the radius
   R = ‖W‖_F taken at the first step and kept in ``state["radius"]``. Base lr only: Muon's shape-based lr
   adjustment is not applied on the sphere (ArchScale passes the base lr), and weight decay is ignored (a
   first-order no-op on the sphere, HyperP's theorem) with a one-time warning.
   ``sphere=False``: plain Muon with torch semantics — decoupled decay ``W ← W·(1 − lr·wd)`` then
   ``W ← W − adjusted_lr·O`` — which also works on 3-D experts (torch.optim.Muon rejects them). The lr
   adjustment uses the last two dims, i.e. each expert's (out, in).
"""

from __future__ import annotations

import math
import typing
import warnings
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor

from hyperp.optim.base import MatrixOptimizer
from hyperp.optim.newton_schulz import Coeffs, newton_schulz, schedule
from hyperp.optim.sharded import full, is_sharded, local, local_slice, orthogonalize, owner_chunks, sharded_norm
from hyperp.optim.sphere import check_mode, fixed_norm_update, frobenius_norm, init_radius

AdjustLr = Literal["original", "match_rms_adamw", "spectral_norm", "none"]
ADJUST_LR_FNS: tuple[str, ...] = typing.get_args(AdjustLr)


def adjust_lr(lr: float, adjust_lr_fn: str | None, shape: Sequence[int]) -> float:
    """Muon's shape-based lr for the baseline (``torch.optim._muon._adjust_lr``; None means "original" as in torch).

    ``"spectral_norm"`` is ArchScale's baseline choice (``adjust_lr_spectral_norm``: √(out/in)); ``"none"``: 1.
    """
    out_dim, in_dim = shape[-2], shape[-1]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, out_dim / in_dim))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(out_dim, in_dim))
    if adjust_lr_fn == "spectral_norm":
        return lr * math.sqrt(out_dim / in_dim)
    return lr


class MuonH(MatrixOptimizer):
    """Muon on the hypersphere (``sphere=True``) or plain Muon (``sphere=False``), for 2-D and (E, out, in) params."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: str | Coeffs | Sequence[Coeffs] = "torch",
        eps: float = 1e-7,
        sphere: bool = True,
        expert_sphere: str = "per_expert",
        weight_decay: float = 0.0,
        adjust_lr_fn: str | None = None,
        ns_dtype: torch.dtype | None = None,
    ) -> None:
        # Arguments of the optimizer, checked as torch.optim checks its own; the config keys that feed them are
        # validated (and named) by hyperp.optim.config.OptimConfig.
        if not lr >= 0:
            raise ValueError(f"invalid learning rate: {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"invalid momentum: {momentum}")
        if not weight_decay >= 0:
            raise ValueError(f"invalid weight_decay: {weight_decay}")
        if adjust_lr_fn is not None and adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r} must be one of {ADJUST_LR_FNS}")
        schedule(ns_coefficients, ns_steps)  # validate early
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, ns_coefficients=ns_coefficients,
            eps=eps, sphere=sphere, expert_sphere=check_mode(expert_sphere), weight_decay=weight_decay,
            adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype,
        )
        super().__init__(params, defaults)
        self._warned_wd = False

    def _prepare_group(self, group: dict[str, Any]) -> None:
        self._warn_sphere_decay(group)

    def _warn_sphere_decay(self, group: dict[str, Any]) -> None:
        if group["sphere"] and group["weight_decay"] > 0 and not self._warned_wd:
            warnings.warn(
                "MuonH: weight_decay is ignored on the sphere (a first-order no-op, HyperP); set it to 0",
                stacklevel=4,  # the caller of step()
            )
            self._warned_wd = True

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        ns = partial(newton_schulz, steps=group["ns_steps"], coefficients=group["ns_coefficients"],
                     eps=group["eps"], dtype=group["ns_dtype"])
        for chunk in owner_chunks(params):  # one parameter, or one matrix per rank when shards must be gathered
            directions = [self._direction(p, group) for p in chunk]
            for p, ortho in zip(chunk, orthogonalize(directions, ns), strict=True):
                self._apply(p, ortho, group)

    def _direction(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        """The (Nesterov) momentum direction, sharded like ``p``; creates the state at the first step."""
        grad = p.grad
        if grad.is_sparse or torch.is_complex(p):
            raise RuntimeError("MuonH supports dense real parameters only")
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
            if group["sphere"]:
                state["radius"] = init_radius(full(p), group["expert_sphere"])  # full even when p is sharded
        buf = state["momentum_buffer"]
        momentum = group["momentum"]
        buf.lerp_(grad, 1 - momentum)
        return grad.lerp(buf, momentum) if group["nesterov"] else buf

    def _apply(self, p: Tensor, ortho: Tensor, group: dict[str, Any]) -> None:
        """The update from the orthogonalized direction ``ortho`` (this rank's part, shaped like p's local shard)."""
        lr = group["lr"]
        W = local(p)
        if group["sphere"]:
            mode = group["expert_sphere"]
            norm = sharded_norm(p, mode) if is_sharded(p) else frobenius_norm
            fixed_norm_update(W, ortho, lr, local_slice(self.state[p]["radius"], p), mode, norm=norm)
            return
        W.mul_(1 - lr * group["weight_decay"])
        W.add_(ortho.to(W.dtype), alpha=-adjust_lr(lr, group["adjust_lr_fn"], p.shape))
