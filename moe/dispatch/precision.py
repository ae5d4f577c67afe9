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


# How far a bf16 dispatch may be from the fp32 one on the same routing, as a normwise relative error
# ‖y − y_fp32‖ / ‖y_fp32‖ (used by tests/moe/test_dispatch.py and benchmarks/gpu/parity.py). bf16 keeps an 8-bit
# significand: unit roundoff u = 2^-8. To first order each rounding to bf16 on the path from the inputs to a result
# adds at most u to the normwise relative error (random, well-conditioned operands: the matmuls do not amplify it).
# Forward x → y: x, W_gate, W_up, their two products, silu, silu·up, the gate multiply, W_down and its product, the
# k-row combine: ≤ 10 roundings. Backward adds the cotangent, grad_act, the gate, the up/silu products,
# silu_backward and the weight-gradient product: ≤ 7 more. Independent roundings add in quadrature, so typical
# errors are ~2u (measured on CPU: 1.4–1.7u for outputs and every gradient).
BF16_UNIT_ROUNDOFF = 2.0**-8
BF16_OUT_BOUND = 10 * BF16_UNIT_ROUNDOFF
BF16_GRAD_BOUND = 17 * BF16_UNIT_ROUNDOFF


def relative_error(a: Tensor, reference: Tensor) -> float:
    """Normwise relative error ‖a − reference‖ / ‖reference‖, computed in fp64."""
    return float((a.double() - reference.double()).norm() / reference.double().norm())
