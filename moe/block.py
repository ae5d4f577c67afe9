"""The MoE block: router + stacked experts + optional shared expert + gate mode (SPEC §4, ArchScale `lit_gpt/moe.py`).

SqrtGate: y = Σ √g_i·E_i(x). With Σg_i = 1 the squared gates sum to 1, so for roughly orthogonal expert outputs the
output RMS does not depend on k — granularity transfers without retuning (HyperP). The shared expert is mixed
variance-preservingly under SqrtGate (√(1−p)·routed + √p·shared) and added under the standard gate.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import Tensor, nn

from moe import expert_parallel
from moe.config import MoEConfig
from moe.dispatch import DispatchFn, get_dispatch
from moe.experts import Experts, SwiGLU
from moe.router import Router, RoutingStats

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

# √g has an infinite slope at g = 0; a softmax weight that underflowed must not give inf·0 = NaN (ArchScale adds 1e-30).
_SQRT_EPS = 1e-30


class MoEBlock(nn.Module):
    def __init__(self, hidden: int, cfg: MoEConfig) -> None:
        super().__init__()
        self.hidden = hidden
        self.cfg = cfg
        self.router = Router(hidden, cfg.num_experts, cfg.top_k, selection_bias=cfg.uses_bias)
        self.experts = Experts(cfg.num_experts, hidden, cfg.expert_hidden)
        self.shared_expert = SwiGLU(hidden, cfg.shared_hidden) if cfg.shared_expert else None
        self._dispatch: dict[torch.device, DispatchFn] = {}
        self.ep_mesh: DeviceMesh | None = None  # set by shard_experts (expert parallelism)

    def shard_experts(self, ep_mesh: DeviceMesh) -> None:
        """Expert parallelism over the 1-D ``ep_mesh``: keep this rank's experts, exchange tokens by all-to-all
        (:mod:`moe.expert_parallel`); the configured backend computes the local experts."""
        expert_parallel.shard_experts(self.experts, ep_mesh)
        self.ep_mesh = ep_mesh
        self._dispatch.clear()

    def dispatch_fn(self, device: torch.device) -> DispatchFn:
        if device not in self._dispatch:
            fn = get_dispatch(self.cfg.backend, device)
            if self.ep_mesh is not None:
                fn = partial(expert_parallel.dispatch, group=self.ep_mesh.get_group(), local_dispatch=fn)
            self._dispatch[device] = fn
        return self._dispatch[device]

    def gate_weights(self, weights: Tensor) -> Tensor:
        """Routing weights g (softmax over the top-k) → the multipliers of the expert outputs."""
        if self.cfg.gate == "sqrt":
            return torch.sqrt(weights + _SQRT_EPS)
        return weights

    def forward(self, x: Tensor) -> tuple[Tensor, RoutingStats]:
        shape = x.shape
        flat = rearrange(x, "... h -> (...) h")
        stats = self.router(flat)
        gates = self.gate_weights(stats.weights)
        y = self.experts(flat, stats.indices, gates, self.dispatch_fn(flat.device))
        if self.shared_expert is not None:
            y = self._mix_shared(y, self.shared_expert(flat))
        return y.reshape(shape), stats

    def _mix_shared(self, routed: Tensor, shared: Tensor) -> Tensor:
        if self.cfg.gate == "sqrt":
            p = self.cfg.shared_mix
            return math.sqrt(1.0 - p) * routed + math.sqrt(p) * shared
        return routed + shared

    def extra_repr(self) -> str:
        c = self.cfg
        ep = "" if self.ep_mesh is None else f", expert_parallel={self.ep_mesh.size()}"
        return f"hidden={self.hidden}, experts={c.num_experts}, top_k={c.top_k}, gate={c.gate!r}, backend={c.backend!r}{ep}"
