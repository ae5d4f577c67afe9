"""AdamH: Adam's direction on the Frobenius hypersphere (SPEC §1; ArchScale ``lit_gpt/optim/scalar_opts.py``
``adamw_update_foreach_async(use_hyperball=True)``, used there for the untied lm_head).

Direction u = m̂ / (√v̂ + ε) with bias-corrected moments (as ``torch.optim.Adam``), then the shared fixed-norm
update + retraction of :mod:`hyperp.optim.sphere` with R = ‖W‖_F at the first step (``state["radius"]``).
No weight decay: on the sphere it is a first-order no-op.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from hyperp.dtypes import at_least_fp32
from hyperp.optim.base import MatrixOptimizer
from hyperp.optim.sharded import full, is_sharded, local, local_slice, sharded_norm
from hyperp.optim.sphere import check_mode, fixed_norm_update, frobenius_norm, init_radius


class AdamH(MatrixOptimizer):
    """Adam direction, fixed-norm step of size lr·R, retraction to radius R; 2-D or (E, out, in) params."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        expert_sphere: str = "per_expert",
    ) -> None:
        if not lr >= 0:  # as torch.optim.Adam; the config keys are named by OptimConfig
            raise ValueError(f"invalid learning rate: {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid betas: {betas}")
        if not eps >= 0:
            raise ValueError(f"invalid epsilon: {eps}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, expert_sphere=check_mode(expert_sphere))
        super().__init__(params, defaults)

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError("AdamH does not support sparse gradients")
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=at_least_fp32(p.dtype))
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=at_least_fp32(p.dtype))
            state["radius"] = init_radius(full(p), group["expert_sphere"])  # full even when p is sharded
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = float(state["step"])
        # Element-wise on this rank's shard (moments stay sharded like p); only the norms are global.
        g = local(grad).to(state["exp_avg"].dtype)
        exp_avg, exp_avg_sq = local(state["exp_avg"]), local(state["exp_avg_sq"])
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias1 = 1 - beta1**step
        denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(group["eps"])
        direction = exp_avg / bias1 / denom
        mode = group["expert_sphere"]
        norm = sharded_norm(p, mode) if is_sharded(p) else frobenius_norm
        fixed_norm_update(local(p), direction, group["lr"], local_slice(state["radius"], p), mode, norm=norm)


