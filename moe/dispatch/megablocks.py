"""MegaBlocks dropless grouped-GEMM dispatch for CUDA (SPEC §4; recipe in shared/DATA.md "MegaBlocks").

UNTESTED ON CPU: neither CUDA nor megablocks exists on the CPU machines, so this file is exercised only by the
``@pytest.mark.gpu`` test in tests/moe/test_dispatch.py. It follows megablocks' own ``ParallelDroplessMLP.
grouped_permute_and_compute`` / ``GroupedGLU`` path, driven by our router and our stacked weights:

    ops.sort / ops.histogram / ops.inclusive_cumsum → ops.gather → grouped_gemm gmm ×3 → ops.scatter(…, gates, …)

grouped_gemm wants bf16 CUDA operands and per-expert counts as int64 on the CPU (one host sync per layer).
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
from moe.experts import Experts

_MESSAGE = "moe.backend='megablocks' needs CUDA and the megablocks package (pip install -e .[gpu])"


def available() -> bool:
    """True when CUDA is usable and megablocks' ops + grouped_gemm import (never raises)."""
    if not torch.cuda.is_available():
        return False
    try:
        _modules()
    except Exception:  # ImportError, or a broken CUDA extension
        return False
    return True


def require(device: torch.device) -> None:
    if device.type != "cuda" or not available():
        raise ConfigError(_MESSAGE)


def _modules():
    ops = importlib.import_module("megablocks.ops")
    gmm = importlib.import_module("grouped_gemm.ops").gmm
    return ops, gmm


def dispatch(x: Tensor, indices: Tensor, weights: Tensor, experts: Experts) -> Tensor:
    ops, gmm = _modules()
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
    h = F.silu(gmm(xs, experts.w_gate, batch_sizes, trans_b=True)) * gmm(xs, experts.w_up, batch_sizes, trans_b=True)
    y = gmm(h, experts.w_down, batch_sizes, trans_b=True)
    return ops.scatter(y, order, bin_ids, weights.flatten().to(y.dtype), bins, top_k)
