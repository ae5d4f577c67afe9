"""Reference dispatch: one masked pass per expert. Obviously right, slow; used by the tests only.

Its matmuls are plain ``@`` on the module's weights, so autocast casts them like any ``nn.Linear`` — an independent
check of the explicit casts in the other backends (:mod:`moe.dispatch.precision`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from moe.dispatch.precision import compute_dtype
from moe.experts import Experts


def dispatch(x: Tensor, indices: Tensor, weights: Tensor, experts: Experts) -> Tensor:
    dtype = compute_dtype(x)
    out = x.new_zeros(x.shape, dtype=dtype)
    for e in range(experts.num_experts):
        token, slot = torch.nonzero(indices == e, as_tuple=True)
        if token.numel() == 0:
            continue
        y = experts.expert(e, x[token]).to(dtype) * weights[token, slot].unsqueeze(-1).to(dtype)
        out = out.index_add(0, token, y)
    return out
