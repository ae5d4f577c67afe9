"""Independent, deliberately naive references (plain loops, float64 where possible) for the hyperp tests."""

from __future__ import annotations

import torch
from torch import Tensor

TORCH_ABC = (3.4445, -4.7750, 2.0315)


def ns_reference(G: Tensor, coefs: list[tuple[float, float, float]], eps: float = 1e-7) -> Tensor:
    """Quintic Newton–Schulz on one 2-D matrix, written from the formula X ← aX + (bA + cA²)X, A = XXᵀ."""
    X = G.clone()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / max(float(torch.sqrt((X * X).sum())), eps)
    for a, b, c in coefs:
        A = X @ X.T
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.T if tall else X


def retract_reference(W: Tensor, u: Tensor, lr: float, R: float) -> Tensor:
    """W' = W − lr·R·u/‖u‖; return R·W'/‖W'‖ for one matrix (SPEC §1)."""
    Wp = W - lr * R * u / u.norm()
    return R * Wp / Wp.norm()
