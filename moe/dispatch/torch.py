"""Dropless grouped-GEMM dispatch in plain PyTorch: the CPU default (SPEC §4).

Token-slots are sorted by expert (stable argsort), gathered once, and each of the three SwiGLU projections runs as
one grouped matrix multiply (``torch.nn.functional.grouped_mm``, offsets = int32 cumsum of the per-expert counts,
kept on device). The gate weight is applied to the (S, I) activation before ``w_down`` rather than to the (S, H)
output (same result, w_down is linear, half the memory traffic when I < H), and results are scattered back with
``index_add_``. Forward and backward are written out in one autograd Function: autograd through advanced indexing
(``x[token]`` → ``index_put_`` with accumulate) costs more than the matmuls' difference to a dense layer on CPU.

grouped_mm needs fp32/bf16/fp16 operands whose strides are multiples of 16 bytes; anything else (fp64, odd
sizes, a device whose kernel refuses) goes through a per-expert loop over host-side counts, same maths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from moe.experts import Experts

_GMM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def dispatch(x: Tensor, indices: Tensor, weights: Tensor, experts: Experts) -> Tensor:
    return _GroupedSwiGLU.apply(x, weights, experts.w_gate, experts.w_up, experts.w_down, indices)


class _Groups:
    """Expert segments of the sorted token-slots: device offsets for grouped_mm, host bounds only on fallback."""

    def __init__(self, counts: Tensor) -> None:
        self.counts = counts
        self.offs = torch.cumsum(counts, 0, dtype=torch.int32)
        self._bounds: list[tuple[int, int]] | None = None

    def bounds(self) -> list[tuple[int, int]]:
        if self._bounds is None:  # one host sync, only on the fallback path
            ends = self.offs.tolist()
            self._bounds = list(zip([0, *ends[:-1]], ends))
        return self._bounds


def _gmm_ok(*tensors: Tensor) -> bool:
    if not hasattr(F, "grouped_mm"):
        return False
    for t in tensors:
        if t.dtype not in _GMM_DTYPES or t.dtype != tensors[0].dtype or t.data_ptr() % 16:
            return False
        if any(s != 1 and (s * t.element_size()) % 16 for s in t.stride()):
            return False
    return True


def rows_mm(a: Tensor, w: Tensor, groups: _Groups) -> Tensor:
    """out[s] = a[s] @ w[e(s)] for a (S, K) sorted by expert, w (E, K, M) (views allowed) → (S, M)."""
    if _gmm_ok(a, w):
        try:
            return F.grouped_mm(a, w, offs=groups.offs)
        except RuntimeError:
            pass
    out = a.new_empty(a.shape[0], w.shape[-1])
    for e, (start, end) in enumerate(groups.bounds()):
        if end > start:
            torch.mm(a[start:end], w[e], out=out[start:end])
    return out


def outer_mm(a: Tensor, b: Tensor, groups: _Groups) -> Tensor:
    """out[e] = a_eᵀ @ b_e over each expert's rows, a (S, M), b (S, N) → (E, M, N): the weight gradients."""
    if _gmm_ok(a.t(), b):
        try:
            return F.grouped_mm(a.t(), b, offs=groups.offs)
        except RuntimeError:
            pass
    out = a.new_zeros(groups.counts.shape[0], a.shape[1], b.shape[1])
    for e, (start, end) in enumerate(groups.bounds()):
        if end > start:
            torch.mm(a[start:end].t(), b[start:end], out=out[e])
    return out


def _sort(indices: Tensor, num_experts: int) -> tuple[Tensor, Tensor, _Groups]:
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)  # slot ids grouped by expert, token order kept inside a group
    token = torch.div(order, indices.shape[1], rounding_mode="floor")
    return order, token, _Groups(torch.bincount(flat, minlength=num_experts))


class _GroupedSwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weights, w_gate, w_up, w_down, indices):  # type: ignore[override]
        order, token, groups = _sort(indices, w_gate.shape[0])
        xs = x.index_select(0, token)
        ws = weights.reshape(-1).index_select(0, order).to(x.dtype).unsqueeze(-1)
        h_gate = rows_mm(xs, w_gate.transpose(1, 2), groups)
        h_up = rows_mm(xs, w_up.transpose(1, 2), groups)
        y = rows_mm(F.silu(h_gate) * h_up * ws, w_down.transpose(1, 2), groups)
        out = x.new_zeros(x.shape).index_add_(0, token, y)
        ctx.save_for_backward(xs, ws, h_gate, h_up, w_gate, w_up, w_down, order, token)
        ctx.groups = groups
        ctx.weights_shape, ctx.weights_dtype = weights.shape, weights.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        xs, ws, h_gate, h_up, w_gate, w_up, w_down, order, token = ctx.saved_tensors
        groups: _Groups = ctx.groups
        need_x, need_wt, need_g, need_u, need_d, _ = ctx.needs_input_grad
        grad_y = grad_out.contiguous().index_select(0, token)  # (S, H)
        sig = torch.sigmoid(h_gate)
        act = h_gate * sig * h_up
        grad_act = rows_mm(grad_y, w_down, groups)  # (S, I), before the gate weight
        grad_w_down = outer_mm(grad_y, act * ws, groups) if need_d else None
        grad_weights = None
        if need_wt:
            grad_ws = (grad_act * act).sum(-1).to(ctx.weights_dtype)
            flat = grad_ws.new_zeros(order.shape[0]).index_copy_(0, order, grad_ws)
            grad_weights = flat.view(ctx.weights_shape)
        grad_act = grad_act * ws
        grad_up = grad_act * h_gate * sig
        grad_gate = grad_act * h_up * sig * (1 + h_gate * (1 - sig))
        grad_w_gate = outer_mm(grad_gate, xs, groups) if need_g else None
        grad_w_up = outer_mm(grad_up, xs, groups) if need_u else None
        grad_x = None
        if need_x:
            grad_xs = rows_mm(grad_gate, w_gate, groups) + rows_mm(grad_up, w_up, groups)
            grad_x = grad_xs.new_zeros(grad_out.shape).index_add_(0, token, grad_xs)
        return grad_x, grad_weights, grad_w_gate, grad_w_up, grad_w_down, None
