"""Top-k router (SPEC §4; ArchScale `lit_gpt/moe.py:Router`, Qwen3 ``norm_topk_prob=True``).

Logits are computed in fp32 whatever the activation dtype (fp64 stays fp64): the softmax over a few large logits
is the numerically fragile part of an MoE layer, and the z-value monitor (SPEC §5) reads them. Autocast is switched
off around the projection: under ``torch.autocast(bf16)`` an ``F.linear`` on fp32 inputs would still run in bf16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperp.dtypes import at_least_fp32
from hyperp.roles import Role, declare


@dataclass
class RoutingStats:
    """One layer's routing decision and the statistics the balance losses need.

    ``counts`` counts token-slots (each token k times) and is detached; ``prob_mean`` is the differentiable P of
    the switch loss (mean over tokens of the softmax over all E logits).
    """

    logits: Tensor  # (N, E) fp32 (fp64 for fp64 inputs), differentiable
    indices: Tensor  # (N, k) int64, expert ids in descending-logit order
    weights: Tensor  # (N, k) fp32 softmax over the k selected logits (before any gate transform)
    counts: Tensor  # (E,) fp32, detached
    prob_mean: Tensor  # (E,) fp32, differentiable
    num_tokens: int

    @property
    def num_experts(self) -> int:
        return self.logits.shape[-1]


def stable_topk(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k by value; ties go to the lower expert id (stable sort), so routing is reproducible."""
    order = torch.argsort(logits, dim=-1, descending=True, stable=True)
    indices = order[..., :k]
    return indices, logits.gather(-1, indices)


class Router(nn.Module):
    """z = W_r x in fp32, no bias; top-k by z; weights = softmax over the k selected logits.

    With ``selection_bias`` (aux-loss-free balancing, DeepSeek-V3 §2.1.2) a per-expert buffer b is added to the
    logits for the top-k *choice* only; the gate weights still come from the unbiased logits of the chosen experts.
    b is a buffer (saved in checkpoints, touched by no optimizer), updated by :func:`moe.balance.update_selection_bias`.
    """

    def __init__(self, hidden: int, num_experts: int, top_k: int, selection_bias: bool = False) -> None:
        super().__init__()
        self.top_k = top_k
        self.weight = nn.Parameter(torch.empty(num_experts, hidden))
        declare(self, weight=Role.ROUTER)
        self.selection_bias: Tensor | None
        self.register_buffer("selection_bias", torch.zeros(num_experts) if selection_bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # PyTorch's Linear default U(±1/√fan_in): the sphere optimizers need a non-zero start.
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor) -> RoutingStats:
        """Route ``x`` (N, hidden)."""
        dtype = at_least_fp32(x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.to(dtype), self.weight.to(dtype))
        if self.selection_bias is None:
            indices, top_logits = stable_topk(logits, self.top_k)
        else:
            indices, _ = stable_topk(logits + self.selection_bias, self.top_k)
            top_logits = logits.gather(-1, indices)
        weights = torch.softmax(top_logits, dim=-1)
        num_experts = logits.shape[-1]
        with torch.no_grad():
            counts = torch.bincount(indices.reshape(-1), minlength=num_experts).float()
        prob_mean = torch.softmax(logits, dim=-1).mean(dim=0)
        return RoutingStats(logits, indices, weights, counts, prob_mean, num_tokens=x.shape[0])
