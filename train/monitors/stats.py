"""Tensor statistics behind the monitors (SPEC §5). Every function returns 0-dim fp32 tensors: no host sync.

The callback stacks all of a step's statistics and reads them back with one ``.tolist()``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from moe.balance import balance_metrics


def rms(x: Tensor) -> Tensor:
    """√mean(x²) over all elements."""
    return x.float().square().mean().sqrt()


def logsumexp_stats(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row logsumexp over the last dim → (mean LSE, mean LSE², max LSE)."""
    lse = torch.logsumexp(logits.float(), dim=-1)
    return lse.mean(), lse.square().mean(), lse.max()


def activation_outliers(x: Tensor, threshold: float = 6.0) -> dict[str, Tensor]:
    """Outlier statistics of a (tokens, hidden) sample, relative to its global RMS.

    ``outlier_frac``: fraction of elements with |x| > threshold·RMS; ``max_over_rms``: max|x|/RMS;
    ``kurtosis``: excess kurtosis E[(x−μ)⁴]/σ⁴ − 3 over all elements (0 for a Gaussian).
    """
    x = x.float()
    r = rms(x).clamp_min(1e-30)
    a = x.abs()
    centered = x - x.mean()
    var = centered.square().mean().clamp_min(1e-30)
    return {
        "outlier_frac": (a > threshold * r).float().mean(),
        "max_over_rms": a.max() / r,
        "kurtosis": centered.pow(4).mean() / var.square() - 3.0,
    }


def token_outlier_pct(x: Tensor, sigmas: float = 5.0) -> Tensor:
    """SPEC §5 Outlier %: percentage of elements with |x − μ_token| > sigmas·σ_token (μ, σ over the hidden dim)."""
    x = x.float()
    mu = x.mean(-1, keepdim=True)
    sd = x.std(-1, unbiased=False, keepdim=True)
    return ((x - mu).abs() > sigmas * sd).float().mean() * 100.0


def attention_logit_stats(q: Tensor, k: Tensor, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Attention Z-value and max logit of causal scaled logits s = scale·q·kᵀ (scale None → 1/√d).

    ``q`` (B, H, Tq, d) are the *last* Tq positions of sequences whose keys ``k`` (B, H_kv, Tk, d) cover all
    positions (Tq ≤ Tk); kv heads are shared by H/H_kv consecutive query heads (GQA, as SDPA's ``enable_gqa``).
    Returns (mean over tokens and heads of LSE², max over unmasked logits).
    """
    q, k = q.float(), k.float()
    h, h_kv = q.shape[1], k.shape[1]
    if h != h_kv:
        k = k.repeat_interleave(h // h_kv, dim=1)
    tq, tk = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-1, -2) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    qpos = torch.arange(tk - tq, tk, device=q.device)[:, None]
    allowed = torch.arange(tk, device=q.device)[None, :] <= qpos
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return lse.square().mean(), scores.max()


def expert_load(counts: Tensor) -> dict[str, Tensor]:
    """Balance of one layer's token-slot counts (E,): the shared metrics of :func:`moe.balance.balance_metrics`."""
    return balance_metrics(counts)
