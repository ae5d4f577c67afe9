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
from moe.losses import switch_aux
from train.distributed import DistEnv

# Metric family (the name's second component, ``monitor/<family>/…``) → how ranks' values combine; None: the value
# is already the same on every rank (computed from reduced counts or whole tensors).
RANK_REDUCTION: dict[str, str | None] = {
    "rms": "rms", "z_logits_mean": "mean", "z_router": "mean", "z_attn": "mean", "outlier_pct": "mean",
    "outlier_frac": "mean", "kurtosis": "mean",
    "z_logits_max": "max", "z_router_max": "max", "attn_logit_max": "max", "max_over_rms": "max",
    "sphere_norm_drift": "max",
    "grad_norm": None, "weight_norm": None, "update_ratio": None, "expert_load": None, "expert_tokens": None,
    # monitor/router/<kind>/…: per-token means over each rank's tokens; aux_over_min is a per-rank value (E·Σ f·P of
    # the rank's own tokens) averaged, not the pooled batch's. (router/churn routes one probe, rank 0's, on every
    # rank: the same value everywhere, added after this reduction.)
    "router/entropy": "mean", "router/margin": "mean", "router/near_tie": "mean", "router/aux_over_min": "mean",
}


def rank_reduction(name: str) -> str | None:
    """How ``monitor/<family>[/<kind>]/…`` combines over ranks (a KeyError for a metric nobody classified)."""
    parts = name.split("/")
    kind = "/".join(parts[1:3])
    return RANK_REDUCTION[kind] if kind in RANK_REDUCTION else RANK_REDUCTION[parts[1]]


def reduce_over_ranks(stats: dict[str, Tensor], env: DistEnv) -> dict[str, Tensor]:
    """Each rank's statistics → the global ones (module docstring); two all-reduces, no host sync."""
    if not env.active or env.world_size == 1:
        return stats
    kinds = {name: rank_reduction(name) for name in stats}
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


def attention_logit_stats(q: Tensor, k: Tensor, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Attention Z-value and max logit of causal scaled logits s = scale·q·kᵀ (scale None → 1/√d).

    ``q`` (B, H, Tq, d) are the *last* Tq positions of sequences whose keys ``k`` (B, H_kv, Tk, d) cover all
    positions (Tq ≤ Tk); kv heads are shared by H/H_kv consecutive query heads (GQA, as SDPA's ``enable_gqa``).
    Returns (mean over tokens and heads of LSE², max over unmasked logits).
    """
    q, k = _acc(q), _acc(k)
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


LOAD_PERCENTILES = (10, 50, 90)
# bf16 keeps 8 significant bits: two scores closer than 2⁻⁷ of their size can round to the same or swapped values, so
# a top-k decision with a smaller margin may flip between an fp32 and a bf16 run of the same weights.
NEAR_TIE = 2.0**-7


def expert_load(counts: Tensor) -> dict[str, Tensor]:
    """Balance of one layer's token-slot counts (E,): the shared metrics of :func:`moe.balance.balance_metrics`, and
    percentiles of the load relative to the mean (``p10`` = 0.2: a tenth of the experts get ≤ 20 % of a fair share)."""
    counts = counts.float()
    share = counts / counts.mean().clamp_min(1e-12)
    q = torch.quantile(share, torch.tensor([p / 100 for p in LOAD_PERCENTILES], device=share.device))
    return balance_metrics(counts) | {f"p{p}": v for p, v in zip(LOAD_PERCENTILES, q, strict=True)}


def router_stats(logits: Tensor, top_k: int, selection_bias: Tensor | None = None) -> dict[str, Tensor]:
    """Routing health of one layer from its (N, E) router logits.

    ``entropy``: mean over tokens of the entropy of softmax(z), over ln E (1 = uniform, 0 = one expert per token).
    ``margin``: mean gap between the k-th and (k+1)-th selection score (z plus any selection bias: what top-k
    compares); ``near_tie``: fraction of tokens whose gap is at most :data:`NEAR_TIE` × the larger score's size. No
    margin when k = E (every expert is selected).
    """
    z = _acc(logits)  # fp64 runs keep fp64 (module docstring)
    e = z.shape[-1]
    entropy = -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1).mean()
    out = {"entropy": entropy / math.log(e) if e > 1 else torch.zeros_like(entropy)}
    if top_k < e:
        scores = z if selection_bias is None else z + selection_bias.to(z.dtype)
        top = scores.topk(top_k + 1, dim=-1).values
        gap = top[:, top_k - 1] - top[:, top_k]
        size = torch.maximum(top[:, top_k - 1].abs(), top[:, top_k].abs())
        out["margin"] = gap.mean()
        out["near_tie"] = (gap <= NEAR_TIE * size).float().mean()  # ≤: an exact tie at 0 is a tie
    return out


def aux_over_min(counts: Tensor, prob_mean: Tensor) -> Tensor:
    """The switch loss E·Σ f_i·P_i of one layer over its balanced minimum, 1 (f_i = 1/E gives Σ P_i = 1).

    E·Σ f_i P_i = 1 + E·Σ (f_i − 1/E)(P_i − 1/E): below 1 the load goes where the router puts *less* probability
    than average. Top-k on those probabilities rarely does that (it needs many tokens narrowly preferring one expert
    while few strongly prefer another); a value well below 1 means the router lowers the loss through its
    probabilities instead of its balance — it games the loss (Megatron-LM#1545: "aux loss stays >= 1" expected).
    """
    return switch_aux(counts, prob_mean.float())


def topk_changed(before: Tensor, after: Tensor) -> Tensor:
    """Fraction of tokens whose set of selected experts differs between two (N, k) index tensors (order ignored)."""
    return (before.sort(-1).values != after.sort(-1).values).any(-1).float().mean()
