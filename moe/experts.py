"""Stacked SwiGLU experts (SPEC §4).

Each of ``w_gate`` (E, I, H), ``w_up`` (E, I, H), ``w_down`` (E, H, I) is E matrices, one per expert: the sphere
optimizers (MuonH/AdamH) treat each slice as its own matrix, like ArchScale's 3-D expert weights with
Muon ``flatten=False``. Layout matches transformers ≥ 5 (``gate_up_proj`` (E, 2I, H) = cat(w_gate, w_up, dim=1),
``down_proj`` (E, H, I)).

A dispatch backend computes with the three stacked tensors: the module itself, or under expert parallelism
(:mod:`moe.expert_parallel`) the :class:`ExpertWeights` of this rank's local experts. The module's forward only
hands itself to the dispatch function, so that FSDP2 (which gathers parameters in a module's forward hooks) can
shard the experts as their own unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperp.roles import Role, declare


def swiglu(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """One expert on rows ``x`` (n, H): w_down·(silu(w_gate·x) ⊙ w_up·x). Reference path."""
    return (F.silu(x @ w_gate.t()) * (x @ w_up.t())) @ w_down.t()


@dataclass(frozen=True)
class ExpertWeights:
    """Stacked expert weights as plain tensors (what the dispatch backends read, like :class:`Experts`)."""

    w_gate: Tensor
    w_up: Tensor
    w_down: Tensor

    @property
    def num_experts(self) -> int:
        return self.w_gate.shape[0]

    def expert(self, e: int, x: Tensor) -> Tensor:
        return swiglu(x, self.w_gate[e], self.w_up[e], self.w_down[e])


class Experts(nn.Module):
    def __init__(self, num_experts: int, hidden: int, expert_hidden: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.hidden = hidden
        self.expert_hidden = expert_hidden
        self.w_gate = nn.Parameter(torch.empty(num_experts, expert_hidden, hidden))
        self.w_up = nn.Parameter(torch.empty(num_experts, expert_hidden, hidden))
        self.w_down = nn.Parameter(torch.empty(num_experts, hidden, expert_hidden))
        declare(self, w_gate=Role.EXPERT, w_up=Role.EXPERT, w_down=Role.EXPERT)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """PyTorch Linear default per expert slice: U(±1/√fan_in) (ArchScale `_init_expert_weights`)."""
        for weight in (self.w_gate, self.w_up, self.w_down):
            bound = 1.0 / math.sqrt(weight.shape[-1])
            weight.uniform_(-bound, bound)

    def forward(self, x: Tensor, indices: Tensor, weights: Tensor, dispatch: Callable[..., Tensor]) -> Tensor:
        """Σ_j weights[:, j]·Expert_{indices[:, j]}(x) through the dispatch function ``dispatch``."""
        return dispatch(x, indices, weights, self)

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert e applied to rows ``x`` (n, H). Reference path."""
        return swiglu(x, self.w_gate[e], self.w_up[e], self.w_down[e])

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, hidden={self.hidden}, expert_hidden={self.expert_hidden}"


class SwiGLU(nn.Module):
    """Dense SwiGLU, used as the shared expert; its three matrices are ordinary hidden matrices."""

    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)
        for linear in (self.gate_proj, self.up_proj, self.down_proj):
            declare(linear, weight=Role.MATRIX)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
