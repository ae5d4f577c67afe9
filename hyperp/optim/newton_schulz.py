"""Batched quintic Newton–Schulz orthogonalization (SPEC §1, "Muon").

One chain of matmuls over all leading dims ``(..., m, n)``: a stack of E experts is orthogonalized in one batched
call, never a Python loop. Two coefficient sets:

- ``"torch"``: (3.4445, −4.7750, 2.0315) at every iteration — the same polynomial, normalization (Frobenius norm
  clamped at ``eps``) and op order (``addmm``) as ``torch.optim._muon._zeropower_via_newtonschulz``, so MuonH's
  direction equals ``torch.optim.Muon``'s. torch always runs it in bf16; we run bf16 on CUDA and fp32 on CPU
  unless ``dtype`` is given (pass ``torch.bfloat16`` to reproduce torch bit-for-bit).
- ``"archscale"``: the per-iteration schedule of ArchScale ``lit_gpt/optim/muon.py:zeropower_via_newtonschulz5``.
  ArchScale divides by ``norm + eps``; we keep torch's ``clamp(min=eps)`` for both (identical unless norm≈eps).
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from hyperp.errors import ConfigError

Coeffs = tuple[float, float, float]

TORCH_COEFFICIENTS: Coeffs = (3.4445, -4.7750, 2.0315)
# ArchScale lit_gpt/optim/muon.py:zeropower_via_newtonschulz5 (one tuple per iteration).
ARCHSCALE_SCHEDULE: tuple[Coeffs, ...] = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
CoefficientSet = Literal["torch", "archscale"]
COEFFICIENT_SETS: tuple[str, ...] = typing.get_args(CoefficientSet)


def schedule(coefficients: str | Coeffs | Sequence[Coeffs], steps: int) -> list[Coeffs]:
    """Per-iteration (a, b, c) for ``steps`` iterations.

    A name, one (a, b, c) triple (repeated), or an explicit per-iteration list. The ArchScale schedule is tuned
    for 5 steps; longer runs repeat its last (most conservative) tuple.
    """
    if steps < 1:
        raise ConfigError(f"optim.ns_steps={steps} must be >= 1")
    if isinstance(coefficients, str):
        if coefficients == "torch":
            return [TORCH_COEFFICIENTS] * steps
        if coefficients == "archscale":
            return [ARCHSCALE_SCHEDULE[min(i, len(ARCHSCALE_SCHEDULE) - 1)] for i in range(steps)]
        raise ConfigError(f"optim.ns_coefficients={coefficients!r} must be one of {COEFFICIENT_SETS}")
    seq = list(coefficients)
    if len(seq) == 3 and all(isinstance(x, (int, float)) for x in seq):
        return [tuple(float(x) for x in seq)] * steps  # type: ignore[list-item]
    if len(seq) != steps or any(len(t) != 3 for t in seq):
        raise ConfigError(f"optim.ns_coefficients must give one (a, b, c) per step ({steps}), got {seq!r}")
    return [tuple(float(x) for x in t) for t in seq]  # type: ignore[misc]


def default_dtype(G: Tensor) -> torch.dtype:
    """bf16 on accelerators (speed; Muon is robust to it), fp32 on CPU (bf16 matmul is slow there); fp64 input
    stays fp64 (numerical tests compare reduction orders at fp64 rounding, see ``train.dtype = "float64"``)."""
    if G.dtype == torch.float64:
        return torch.float64
    return torch.float32 if G.device.type == "cpu" else torch.bfloat16


def newton_schulz(
    G: Tensor,
    steps: int = 5,
    coefficients: str | Coeffs | Sequence[Coeffs] = "torch",
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Approximately orthogonalize each trailing (m, n) matrix of ``G`` (≈ U S' Vᵀ, S' ≈ 1).

    Returns a tensor of ``dtype`` (default by device) with the shape of ``G``.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a (..., m, n) tensor, got shape {tuple(G.shape)}")
    coefs = schedule(coefficients, steps)
    X = G.to(dtype or default_dtype(G))
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    # Frobenius norm >= spectral norm, so every singular value starts in (0, 1].
    X = X / torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True).clamp(min=eps)
    lead = X.shape[:-2]
    if X.ndim > 2:
        X = X.reshape(-1, *X.shape[-2:])
    for a, b, c in coefs:
        X = _quintic_step(X, a, b, c)
    X = X.reshape(*lead, *X.shape[-2:])
    return X.mT if transposed else X


def _quintic_step(X: Tensor, a: float, b: float, c: float) -> Tensor:
    """X ← aX + (bA + cA²)X with A = XXᵀ, in torch's addmm order (2-D) or its batched twin (3-D)."""
    if X.ndim == 2:
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        return torch.addmm(X, B, X, beta=a)
    A = X @ X.mT
    B = torch.baddbmm(A, A, A, beta=b, alpha=c)
    return torch.baddbmm(X, B, X, beta=a)
