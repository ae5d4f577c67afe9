"""The dtype the expert matmuls run in, and the cast into it (both backends).

Autocast casts only the ops on its lists. ``torch.nn.functional.grouped_mm`` (torch backend) has no autocast kernel
and grouped_gemm's ``gmm`` (megablocks backend) is a compiled extension op, so with fp32 master weights under bf16
autocast the experts would silently run in fp32 (torch) or crash (grouped_gemm accepts bf16 only). The backends
therefore cast the input and the three stacked expert weights themselves. ``Tensor.to`` is differentiable: its
backward casts the gradient back, so fp32 master weights still receive fp32 gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moe.experts import Experts


def compute_dtype(x: Tensor) -> torch.dtype:
    """Autocast's dtype for ``x``'s device while autocast is on there, else ``x``'s own dtype."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def expert_operands(x: Tensor, experts: Experts, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``x``, ``w_gate``, ``w_up``, ``w_down`` in ``dtype`` (no copy for a tensor already in it)."""
    return x.to(dtype), experts.w_gate.to(dtype), experts.w_up.to(dtype), experts.w_down.to(dtype)
