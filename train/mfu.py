"""Model FLOPs utilisation, MoE-aware: the FLOPs of the parameters a token actually uses, over the device's peak.

FLOPs per token (PaLM, arXiv 2204.02311 appendix B): 6·N + 12·L·n_heads·head_dim·T — N the *active* parameters
(attention, router, the top-k routed experts and any shared expert, norms, LM head; not the input embedding, a
lookup), forward + backward; the second term the attention scores and value products over the full (not
causal-halved) T×T map. Counting all E experts instead of k would overstate an MoE model's MFU by up to E/k on the
expert share.

Peak FLOP/s: on a GPU the datasheet value for its name (dense, no sparsity) in the dtype the matmuls run in; on a CPU
a matmul measured on this machine, in this process, with its threads — the achievable peak under the same load,
since CPUs have no single datasheet number (frequency, SIMD width and sharing all vary).
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

from models.qwen3 import count_parameters

# NVIDIA datasheets (H100, H200, A100 Tensor Core GPU): dense = half the "with sparsity" tensor-core figures.
# (substring of torch.cuda.get_device_name, dense bf16 FLOP/s, fp32 FLOP/s without TF32); first match wins, so the
# PCIe / NVL variants come before the SXM name they contain.
DATASHEET_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H100 PCIe", 756.5e12, 51e12),
    ("H100 NVL", 835.5e12, 60e12),
    ("H100", 989.5e12, 67e12),
    ("H200 NVL", 835.5e12, 60e12),
    ("H200", 989.5e12, 67e12),
    ("H800", 989.5e12, 67e12),
    ("A100", 312e12, 19.5e12),
)


def datasheet_peak(device_name: str, bf16: bool = True) -> float | None:
    """Datasheet FLOP/s of a GPU by its name (bf16 tensor cores, or plain fp32); None for a name not in the table."""
    for key, bf16_peak, fp32_peak in DATASHEET_PEAKS:
        if key in device_name:
            return bf16_peak if bf16 else fp32_peak
    return None


def measured_matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 3) -> float:
    """FLOP/s of the fastest of ``repeats`` n×n CPU matmuls (after one warm-up), with the process's torch threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """6·N_active (without the input embedding) + 12·L·n_heads·head_dim·T for a :class:`models.qwen3.Qwen3`."""
    cfg = model.config
    n = count_parameters(model)["active"] - model.embed.weight.numel()
    if cfg.tie_embeddings:  # the tied matrix is also the LM head, which does multiply
        n += model.embed.weight.numel()
    return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.resolved_head_dim * seq_len


class MFU:
    """A run's MFU: achieved model FLOP/s per device over the peak (measured lazily on a CPU, at the first
    :meth:`metrics`, so that building a trainer costs nothing). ``peak`` is None on a GPU missing from the table."""

    def __init__(self, model: nn.Module, seq_len: int, device: torch.device, bf16: bool, world_size: int = 1) -> None:
        self.flops_per_token = flops_per_token(model, seq_len)
        self.device, self.world_size = device, world_size
        self.dtype = torch.bfloat16 if bf16 else next(model.parameters()).dtype
        self._peak: float | None = None

    @property
    def peak(self) -> float | None:
        if self._peak is None:
            if self.device.type == "cuda":
                self._peak = datasheet_peak(torch.cuda.get_device_name(self.device), self.dtype == torch.bfloat16)
            else:
                self._peak = measured_matmul_peak(self.dtype)
        return self._peak

    def metrics(self, tokens_per_s: float) -> dict[str, float]:
        """``{"train/mfu": …}`` for the step log; empty when the peak is unknown (a GPU missing from the table)."""
        peak = self.peak
        return {} if peak is None else {"train/mfu": self.flops_per_token * tokens_per_s / (peak * self.world_size)}


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_description() -> str:
    """One line for reports: the GPU name(s), or the CPU model and core count."""
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}× {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} (CPU)"
