"""Dropless grouped-GEMM dispatch in plain PyTorch: the CPU default (SPEC §4).

Token-slots are sorted by expert (stable argsort) and gathered once; each of the three SwiGLU projections (and
each weight gradient) is then one batched matrix multiply over experts, in one of two layouts:

* ``_Grouped``: slots packed back to back, ``torch.nn.functional.grouped_mm`` with offsets = int32 cumsum of the
  per-expert counts, kept on device (no host sync). Used on accelerators, and on CPU when routing is imbalanced.
* ``_Padded``: each expert's slots padded to the largest count C and run as one ``torch.bmm`` over (E, C, ·).
  Used on CPU when padding wastes ≤ 25 % (E·C ≤ 1.25·S, one ``.item()``, free on CPU). Reason, measured on
  2 cores: CPU grouped_mm is a loop of E separate multithreaded GEMMs, each ending in a thread barrier; when
  other processes share the cores each barrier waits for a descheduled thread and grouped_mm became 4–10× slower
  than one dense GEMM of the same FLOPs, while bmm (parallel over experts) stayed at the dense speed.

The gate weight is applied to the (S, I) activation before ``w_down`` rather than to the (S, H) output (same result
since w_down is linear; less memory traffic when I < H). Forward and backward are written out in one autograd
Function with in-place elementwise ops: autograd through advanced indexing (``index_put_`` with accumulate) and
fresh (S, ·) temporaries (page faults) cost more on CPU than the matmuls' gap to a dense layer.

grouped_mm needs fp32/bf16/fp16 operands whose strides are multiples of 16 bytes; anything else (fp64, odd
sizes, a device whose kernel refuses) goes through a per-expert loop over host-side counts, same maths.

Precision: the matmuls run in :func:`moe.dispatch.precision.compute_dtype` (autocast's dtype under autocast, else
the input's), the output is in that dtype, and the gradients of fp32 master weights come back in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from moe.dispatch.precision import compute_dtype, expert_operands
from moe.experts import Experts

_GMM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
PAD_LIMIT = 1.25  # use the padded bmm layout on CPU while E·C ≤ PAD_LIMIT·S
FORCE_LAYOUT: str | None = None  # "grouped" | "padded": tests pin a layout; None chooses per call


def dispatch(x: Tensor, indices: Tensor, weights: Tensor, experts: Experts) -> Tensor:
    x, w_gate, w_up, w_down = expert_operands(x, experts, compute_dtype(x))  # grouped_mm has no autocast kernel
    return _GroupedSwiGLU.apply(x, weights, w_gate, w_up, w_down, indices)


def _gmm_ok(*tensors: Tensor) -> bool:
    if not hasattr(F, "grouped_mm"):
        return False
    for t in tensors:
        if t.dtype not in _GMM_DTYPES or t.dtype != tensors[0].dtype or t.data_ptr() % 16:
            return False
        if any(s != 1 and (s * t.element_size()) % 16 for s in t.stride()):
            return False
    return True


class _Grouped:
    """Packed layout: row s of every (S, ·) buffer is sorted slot s; segments delimited by device offsets."""

    padded = False

    def __init__(self, order: Tensor, token: Tensor, counts: Tensor) -> None:
        self.src, self.slot = token, order  # buffer row → token row, → routing slot
        self.pos = torch.empty_like(order).index_copy_(0, order, torch.arange(order.shape[0], device=order.device))
        self.counts = counts
        self.offs = torch.cumsum(counts, 0, dtype=torch.int32)
        self._bounds: list[tuple[int, int]] | None = None

    def bounds(self) -> list[tuple[int, int]]:
        if self._bounds is None:  # one host sync, only on the fallback path
            ends = self.offs.tolist()
            self._bounds = list(zip([0, *ends[:-1]], ends))
        return self._bounds

    def rows_mm(self, a: Tensor, w: Tensor) -> Tensor:
        """out[s] = a[s] @ w[e(s)], a (S, K), w (E, K, M) (views allowed) → (S, M)."""
        if _gmm_ok(a, w):
            try:
                return F.grouped_mm(a, w, offs=self.offs)
            except RuntimeError:
                pass
        out = a.new_empty(a.shape[0], w.shape[-1])
        for e, (start, end) in enumerate(self.bounds()):
            if end > start:
                torch.mm(a[start:end], w[e], out=out[start:end])
        return out

    def outer_mm(self, a: Tensor, b: Tensor) -> Tensor:
        """out[e] = a_eᵀ @ b_e over each expert's rows, a (S, M), b (S, N) → (E, M, N): weight gradients."""
        if _gmm_ok(a.t(), b):
            try:
                return F.grouped_mm(a.t(), b, offs=self.offs)
            except RuntimeError:
                pass
        out = a.new_zeros(self.counts.shape[0], a.shape[1], b.shape[1])
        for e, (start, end) in enumerate(self.bounds()):
            if end > start:
                torch.mm(a[start:end].t(), b[start:end], out=out[e])
        return out


class _Padded:
    """Padded layout: buffers are (E·C, ·), expert e's slots in rows [e·C, e·C + count_e); the padding rows read a
    zero sentinel row appended to the source and write to a sentinel row that is dropped."""

    padded = True

    def __init__(self, order: Tensor, token: Tensor, counts: Tensor, num_tokens: int) -> None:
        self.num_experts, self.capacity = counts.shape[0], max(int(counts.max()), 1)
        expert_of_slot = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
        starts = torch.cumsum(counts, 0) - counts
        dest = expert_of_slot * self.capacity + torch.arange(order.shape[0], device=counts.device)
        dest -= starts[expert_of_slot]
        rows = self.num_experts * self.capacity
        self.src = token.new_full((rows,), num_tokens).index_copy_(0, dest, token)
        self.slot = order.new_full((rows,), order.shape[0]).index_copy_(0, dest, order)
        self.pos = torch.empty_like(order).index_copy_(0, order, dest)  # routing slot → buffer row

    def _3d(self, t: Tensor) -> Tensor:
        return t.view(self.num_experts, self.capacity, t.shape[-1])

    def rows_mm(self, a: Tensor, w: Tensor) -> Tensor:
        return torch.bmm(self._3d(a), w).view(-1, w.shape[-1])

    def outer_mm(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.bmm(self._3d(a).transpose(1, 2), self._3d(b))


def choose_layout(indices: Tensor, num_experts: int, counts: Tensor | None = None) -> str:
    """The layout a call with these routing ``indices`` (N, k) uses: FORCE_LAYOUT, else the policy above."""
    if FORCE_LAYOUT is not None:
        return FORCE_LAYOUT
    flat = indices.reshape(-1)
    if indices.device.type != "cpu" or not flat.numel():
        return "grouped"
    if counts is None:
        counts = torch.bincount(flat, minlength=num_experts)
    return "padded" if num_experts * int(counts.max()) <= PAD_LIMIT * flat.numel() else "grouped"


def _layout(indices: Tensor, num_experts: int) -> _Grouped | _Padded:
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)  # slot ids grouped by expert, token order kept inside a group
    token = torch.div(order, indices.shape[1], rounding_mode="floor")
    counts = torch.bincount(flat, minlength=num_experts)
    if choose_layout(indices, num_experts, counts) == "padded":
        return _Padded(order, token, counts, indices.shape[0])
    return _Grouped(order, token, counts)


def _gather(rows: Tensor, index: Tensor, padded: bool) -> Tensor:
    """rows[index], where a padded layout's index may point one past the end (a zero row)."""
    if padded:
        rows = torch.cat([rows, rows.new_zeros(1, *rows.shape[1:])])
    return rows.index_select(0, index)


def _combine(buf: Tensor, pos: Tensor, k: int) -> Tensor:
    """out[n] = Σ_j buf[pos[n·k + j]]: each token's k slot rows summed (padding rows are never read).

    A gather per slot column plus in-place adds: parallel and deterministic, ~1.6× faster on CPU than
    ``index_add_`` into zeros (which also needs the zero fill), and no (S, ·) temporary.
    """
    cols = pos.view(-1, k)
    out = buf.index_select(0, cols[:, 0])
    for j in range(1, k):
        out.add_(buf.index_select(0, cols[:, j]))
    return out


class _GroupedSwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weights, w_gate, w_up, w_down, indices):  # type: ignore[override]
        lay = _layout(indices, w_gate.shape[0])
        xs = _gather(x, lay.src, lay.padded)
        ws = _gather(weights.reshape(-1).to(x.dtype), lay.slot, lay.padded).unsqueeze(-1)
        h_gate = lay.rows_mm(xs, w_gate.transpose(1, 2))
        h_up = lay.rows_mm(xs, w_up.transpose(1, 2))
        act = F.silu(h_gate).mul_(h_up).mul_(ws)  # in place: every fresh (S, ·) buffer costs page faults on CPU
        y = lay.rows_mm(act, w_down.transpose(1, 2))
        out = _combine(y, lay.pos, indices.shape[1])
        ctx.save_for_backward(xs, ws, h_gate, h_up, w_gate, w_up, w_down)
        ctx.lay = lay
        ctx.weights_shape, ctx.weights_dtype = weights.shape, weights.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        xs, ws, h_gate, h_up, w_gate, w_up, w_down = ctx.saved_tensors
        lay = ctx.lay
        need_x, need_wt, need_g, need_u, need_d, _ = ctx.needs_input_grad
        grad_y = _gather(grad_out.contiguous(), lay.src, lay.padded)  # (S, H); padding rows are zero
        silu_gate = F.silu(h_gate)
        act = silu_gate * h_up  # (S, I), before the gate weight
        grad_act = lay.rows_mm(grad_y, w_down)  # (S, I), before the gate weight
        grad_weights = None
        if need_wt:
            grad_ws = (grad_act * act).sum(-1).to(ctx.weights_dtype)
            grad_weights = grad_ws.index_select(0, lay.pos).view(ctx.weights_shape)
        grad_w_down = lay.outer_mm(grad_y, act.mul_(ws)) if need_d else None
        del act
        grad_act.mul_(ws)
        grad_up = grad_act * silu_gate
        del silu_gate
        grad_gate = torch.ops.aten.silu_backward(grad_act.mul_(h_up), h_gate)
        del grad_act
        grad_w_gate = lay.outer_mm(grad_gate, xs) if need_g else None
        grad_w_up = lay.outer_mm(grad_up, xs) if need_u else None
        grad_x = None
        if need_x:
            grad_xs = lay.rows_mm(grad_gate, w_gate).add_(lay.rows_mm(grad_up, w_up))
            grad_x = _combine(grad_xs, lay.pos, ctx.weights_shape[-1])
        return grad_x, grad_weights, grad_w_gate, grad_w_up, grad_w_down, None
