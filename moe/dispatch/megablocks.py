"""MegaBlocks dropless grouped-GEMM dispatch for CUDA (SPEC §4; recipe in shared/DATA.md "MegaBlocks").

Neither CUDA nor megablocks exists on the CPU machines: tests/moe/test_dispatch.py runs this file on CPU with
stand-ins for the two compiled modules (written from megablocks' and grouped_gemm's source, with grouped_gemm's
dtype/layout checks), and against the real ones in its ``@pytest.mark.gpu`` tests. It follows megablocks' own
``ParallelDroplessMLP.grouped_permute_and_compute`` / ``GroupedGLU`` path, driven by our router and our stacked
weights:

    ops.sort / ops.histogram / ops.inclusive_cumsum → ops.gather → grouped_gemm gmm ×3 → ops.scatter(…, gates, …)

grouped_gemm wants bf16, contiguous CUDA operands and per-expert counts as int64 on the CPU (one host sync per
layer). Autocast does not cast for compiled extension ops, so x and the expert weights are cast to bf16 here
(:mod:`moe.dispatch.precision`; differentiable, fp32 master weights get fp32 gradients) and the output is returned
in the dtype the torch backend would give (autocast's, else the input's).
``w_gate``/``w_up`` (E, I, H) are used with ``trans_b=True`` (x·Wᵀ) and so is ``w_down`` (E, H, I) — a·w_downᵀ —
which differs from megablocks' own w2 layout (E·I, H) used without the transpose.
"""

from __future__ import annotations

import importlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hyperp.errors import ConfigError
from moe.dispatch.precision import compute_dtype, expert_operands
from moe.experts import Experts

_MESSAGE = "moe.backend='megablocks' needs CUDA and the megablocks package (make install-gpu; python -m train.doctor)"
GMM_DTYPE = torch.bfloat16  # the only dtype grouped_gemm's gmm accepts


def unavailable_reason() -> str | None:
    """Why this backend cannot run here — the exact import error and/or the missing CUDA — or None (never raises)."""
    reasons = []
    try:
        _modules()
    except Exception as err:  # ImportError, or a broken CUDA extension (OSError, RuntimeError from triton, ...)
        first = (str(err).strip().splitlines() or [""])[0]
        reasons.append(f"import failed: {type(err).__name__}: {first}")
    if not torch.cuda.is_available():
        reasons.append("no CUDA device (torch.cuda.is_available() is False)")
    return "; ".join(reasons) or None


def available() -> bool:
    """True when CUDA is usable and megablocks' ops + grouped_gemm import."""
    return torch.cuda.is_available() and unavailable_reason() is None


def require(device: torch.device) -> None:
    if device.type != "cuda":
        raise ConfigError(f"{_MESSAGE}: device is {device.type}")
    reason = unavailable_reason()
    if reason is not None:
        raise ConfigError(f"{_MESSAGE}: {reason}")


def _modules():
    ops = importlib.import_module("megablocks.ops")
    gmm = importlib.import_module("grouped_gemm.ops").gmm
    return ops, gmm


def gmm_operands(x: Tensor, experts: Experts) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x, w_gate, w_up, w_down as grouped_gemm takes them: bf16 and contiguous."""
    return tuple(t.contiguous() for t in expert_operands(x, experts, GMM_DTYPE))  # type: ignore[return-value]


def dispatch(x: Tensor, indices: Tensor, weights: Tensor, experts: Experts) -> Tensor:
    ops, gmm = _modules()
    out_dtype = compute_dtype(x)
    x, w_gate, w_up, w_down = gmm_operands(x, experts)
    num_experts, top_k = experts.num_experts, indices.shape[1]
    flat_experts = indices.flatten().int()
    with torch.no_grad():
        end_bit = max(int(math.ceil(math.log2(num_experts))), 1)
        bin_ids, order = ops.sort(flat_experts, end_bit)
        tokens_per_expert = ops.histogram(flat_experts, num_experts)
        bins = ops.inclusive_cumsum(tokens_per_expert, 0)
        bins = bins.view(1) if bins.dim() == 0 else bins
        batch_sizes = tokens_per_expert.cpu().to(torch.long)
    xs = ops.gather(x, order, bin_ids, bins, top_k)
    h = F.silu(gmm(xs, w_gate, batch_sizes, trans_b=True)) * gmm(xs, w_up, batch_sizes, trans_b=True)
    y = gmm(h, w_down, batch_sizes, trans_b=True)
    return ops.scatter(y, order, bin_ids, weights.flatten().to(y.dtype), bins, top_k).to(out_dtype)
