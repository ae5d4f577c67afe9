"""Tensor statistics behind the monitors (SPEC §5). Every function returns 0-dim tensors: no host sync. They are
computed in fp32 (fp64 for fp64 activations, so that fp64 runs compare monitors of two reduction orders tightly).

The callback stacks all of a step's statistics and reads them back with one ``.tolist()``.

Across ranks (data / expert parallelism) each rank computes the activation statistics on its own tokens — the same
number on every rank — and :func:`reduce_over_ranks` combines them as :data:`RANK_REDUCTION` says: RMS values as
√(mean of the ranks' squares), i.e. the RMS over all ranks' tokens; means of per-token quantities (Z-values, the
outlier percentage) as the mean over ranks, i.e. the mean over all ranks' sampled tokens; maxima as the maximum.
Three combine per-rank statistics rather than being the statistic of the pooled sample: ``outlier_frac`` (mean over
ranks of the fraction above 6× the rank's own sample RMS), ``max_over_rms`` (maximum over ranks of max|x| / the
rank's sample RMS) and ``kurtosis`` (mean over ranks of each rank's excess kurtosis). Expert loads are computed from
the token counts summed over ranks, and the optimizer's norms from whole (reduced) tensors, so those need no
reduction here; ``sphere_norm_drift`` is each rank's maximum over its matrices, then the maximum over ranks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hyperp.dtypes import at_least_fp32
from moe.balance import balance_metrics
from train.distributed import DistEnv

# Metric family (the name's second component, ``monitor/<family>/…``) → how ranks' values combine; None: the value
# is already the same on every rank (computed from reduced counts or whole tensors).
RANK_REDUCTION: dict[str, str | None] = {
    "rms": "rms", "z_logits_mean": "mean", "z_router": "mean", "z_attn": "mean", "outlier_pct": "mean",
    "outlier_frac": "mean", "kurtosis": "mean",
    "z_logits_max": "max", "z_router_max": "max", "attn_logit_max": "max", "max_over_rms": "max",
    "sphere_norm_drift": "max",
    "grad_norm": None, "weight_norm": None, "update_ratio": None, "expert_load": None, "expert_tokens": None,
}


def reduce_over_ranks(stats: dict[str, Tensor], env: DistEnv) -> dict[str, Tensor]:
    """Each rank's statistics → the global ones (module docstring); two all-reduces, no host sync."""
    if not env.active or env.world_size == 1:
        return stats
    kinds = {name: RANK_REDUCTION[name.split("/")[1]] for name in stats}
    out = dict(stats)
    for op, wanted in (("sum", ("mean", "rms")), ("max", ("max",))):
        names = [n for n in stats if kinds[n] in wanted]
        if not names:
            continue
        values = torch.stack([stats[n].double().square() if kinds[n] == "rms" else stats[n].double() for n in names])
        env.all_reduce(values, op)
        for name, v in zip(names, values.unbind(), strict=True):
            out[name] = v if op == "max" else (v / env.world_size).sqrt() if kinds[name] == "rms" else v / env.world_size
    return out


def _acc(x: Tensor) -> Tensor:
    return x.to(at_least_fp32(x.dtype))


def rms(x: Tensor) -> Tensor:
    """√mean(x²) over all elements."""
    return _acc(x).square().mean().sqrt()


def logsumexp_stats(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row logsumexp over the last dim → (mean LSE, mean LSE², max LSE)."""
    lse = torch.logsumexp(_acc(logits), dim=-1)
    return lse.mean(), lse.square().mean(), lse.max()


def activation_outliers(x: Tensor, threshold: float = 6.0) -> dict[str, Tensor]:
    """Outlier statistics of a (tokens, hidden) sample, relative to its global RMS.

    ``outlier_frac``: fraction of elements with |x| > threshold·RMS; ``max_over_rms``: max|x|/RMS;
    ``kurtosis``: excess kurtosis E[(x−μ)⁴]/σ⁴ − 3 over all elements (0 for a Gaussian).
    """
    x = _acc(x)
    r = rms(x).clamp_min(1e-30)
    a = x.abs()
    centered = x - x.mean()
    var = centered.square().mean().clamp_min(1e-30)
    return {
        "outlier_frac": (a > threshold * r).to(x.dtype).mean(),
        "max_over_rms": a.max() / r,
        "kurtosis": centered.pow(4).mean() / var.square() - 3.0,
    }


def token_outlier_pct(x: Tensor, sigmas: float = 5.0) -> Tensor:
    """SPEC §5 Outlier %: percentage of elements with |x − μ_token| > sigmas·σ_token (μ, σ over the hidden dim)."""
    x = _acc(x)
    mu = x.mean(-1, keepdim=True)
    sd = x.std(-1, unbiased=False, keepdim=True)
    return ((x - mu).abs() > sigmas * sd).to(x.dtype).mean() * 100.0


def attention_logit_stats(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Attention Z-value and max logit of causal scaled logits s = q·kᵀ/√d.

    ``q`` (B, H, Tq, d) are the *last* Tq positions of sequences whose keys ``k`` (B, H_kv, Tk, d) cover all
    positions (Tq ≤ Tk); kv heads are shared by H/H_kv consecutive query heads (GQA, as SDPA's ``enable_gqa``).
    Returns (mean over tokens and heads of LSE², max over unmasked logits).
    """
    q, k = _acc(q), _acc(k)
    h, h_kv = q.shape[1], k.shape[1]
    if h != h_kv:
        k = k.repeat_interleave(h // h_kv, dim=1)
    tq, tk = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    qpos = torch.arange(tk - tq, tk, device=q.device)[:, None]
    allowed = torch.arange(tk, device=q.device)[None, :] <= qpos
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return lse.square().mean(), scores.max()


def expert_load(counts: Tensor) -> dict[str, Tensor]:
    """Balance of one layer's token-slot counts (E,): the shared metrics of :func:`moe.balance.balance_metrics`."""
    return balance_metrics(counts)
