"""Stacked SwiGLU experts (SPEC §4).

Each of ``w_gate`` (E, I, H), ``w_up`` (E, I, H), ``w_down`` (E, H, I) is E matrices, one per expert: the sphere
optimizers (MuonH/AdamH) treat each slice as its own matrix, like ArchScale's 3-D expert weights with
Muon ``flatten=False``. Layout matches transformers ≥ 5 (``gate_up_proj`` (E, 2I, H) = cat(w_gate, w_up, dim=1),
``down_proj`` (E, H, I)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperp.roles import Role, declare


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

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert e applied to rows ``x`` (n, H): w_down·(silu(w_gate·x) ⊙ w_up·x). Reference path."""
        h = F.silu(x @ self.w_gate[e].t()) * (x @ self.w_up[e].t())
        return h @ self.w_down[e].t()

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
