"""Reference dispatch: one masked pass per expert. Obviously right, slow; used by the tests only."""

from __future__ import annotations

import torch
from torch import Tensor

from moe.experts import Experts


def dispatch(x: Tensor, indices: Tensor, weights: Tensor, experts: Experts) -> Tensor:
    out = torch.zeros_like(x)
    for e in range(experts.num_experts):
        token, slot = torch.nonzero(indices == e, as_tuple=True)
        if token.numel() == 0:
            continue
        y = experts.expert(e, x[token]) * weights[token, slot].unsqueeze(-1).to(x.dtype)
        out = out.index_add(0, token, y)
    return out
