"""Expert-load statistics and aux-loss-free balancing (SPEC §4–§5; DeepSeek-V3; torchtitan / OLMo-core / Megatron).

One place for the balance metrics that training logs, sweeps and monitors report, computed from a (layers, E)
matrix of token-slot counts:
- MaxVio = (max_i load_i − mean load) / mean load (ArchScale logs its mean over layers),
- max/mean, coefficient of variation (std/mean), and dead experts (no token in the window).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from moe.router import Router

METRICS = ("maxvio", "max_mean", "cv", "dead")


def balance_metrics(counts: Tensor) -> dict[str, Tensor]:
    """Per-layer metrics from ``counts`` (L, E) (or (E,)): each value has shape (L,) (or ())."""
    counts = counts.float()
    mean = counts.mean(-1).clamp_min(1e-12)
    max_ = counts.amax(-1)
    return {
        "maxvio": (max_ - mean) / mean,
        "max_mean": max_ / mean,
        "cv": counts.std(-1, unbiased=False) / mean,
        "dead": (counts == 0).sum(-1).float(),
    }


def balance_log(counts: Tensor, prefix: str = "moe") -> dict[str, float]:
    """Flat metrics for logs: the mean over layers of each metric, and per-layer values (one host transfer)."""
    metrics = balance_metrics(counts)
    table = torch.stack([metrics[m] for m in METRICS]).tolist()  # (4, L)
    out: dict[str, float] = {}
    for name, per_layer in zip(METRICS, table, strict=True):
        out[f"{prefix}/{name}"] = sum(per_layer) / len(per_layer)
        out.update({f"{prefix}/{name}/layer_{i:02d}": v for i, v in enumerate(per_layer)})
    return out


def biased_routers(model: nn.Module) -> Iterator[Router]:
    """The routers that carry a selection bias, in layer order (the order of ``ModelOutput.routing``)."""
    return (m for m in model.modules() if isinstance(m, Router) and m.selection_bias is not None)


@torch.no_grad()
def update_selection_bias(model: nn.Module, counts: Tensor, rate: float) -> None:
    """b_i += rate · sign(mean load − load_i) per MoE layer, from the step's global counts (L, E).

    ``counts`` must be identical on every rank (GlobalBalance all-reduces them), so the biases stay identical too.
    Routers without a bias are skipped; ``counts`` rows follow the MoE layers in order.
    """
    routers = list(biased_routers(model))
    if not routers:
        return
    if counts.shape[0] != len(routers):
        raise ValueError(f"got counts for {counts.shape[0]} MoE layers, the model has {len(routers)} biased routers")
    step = rate * torch.sign(counts.float().mean(-1, keepdim=True) - counts.float())
    for router, delta in zip(routers, step, strict=True):
        router.selection_bias.add_(delta.to(router.selection_bias))
