"""How training balances the experts (SPEC §4–§5; DeepSeek-V3; torchtitan / OLMo-core / Megatron).

- :class:`BalancePolicy`: everything a training loop needs to balance an MoE model, decided from its
  :class:`~moe.config.MoEConfig` — each micro-batch's loss terms (the global-batch or micro-batch switch loss, the
  z-loss and the weights they enter the loss with), the aux-loss-free bias update (a step pre-hook on the
  optimizer, as torchtitan's ``register_moe_load_balancing_hook``), and the step's balance metrics. With
  ``balance_target`` it consults a :class:`~moe.controller.BalanceController` for α, feeds it each
  step's global MaxVio from the same hook, and is itself Stateful (the controller's state) for checkpoints.
- The balance metrics that training logs, sweeps and monitors report, from a (layers, E) matrix of token-slot
  counts: MaxVio = (max_i load_i − mean load) / mean load (ArchScale logs its mean over layers), max/mean,
  coefficient of variation (std/mean), and dead experts (no token in the window).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from moe.config import MoEConfig
from moe.controller import BalanceController
from moe.losses import GlobalBalance, micro_batch_aux, z_loss
from moe.router import Router, RoutingStats

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


class BalancePolicy:
    """The balancing of one MoE model during training; the loop calls it and knows nothing about MoE.

    Per optimizer step: :meth:`start_step`, then :meth:`loss_terms` for every micro-batch, the optimizer step (whose
    pre-hook, registered by :meth:`attach`, applies the bias update from the step's counts), then
    :meth:`step_metrics`. ``process_group``: the ranks whose counts make the global batch (default: all).
    """

    def __init__(self, cfg: MoEConfig, model: nn.Module, process_group: dist.ProcessGroup | None = None) -> None:
        self.cfg, self.model, self.process_group = cfg, model, process_group
        self.balance = GlobalBalance()
        target = cfg.balance_target
        self.controller = None if target is None else BalanceController(target, cfg.aux_weight)

    @property
    def aux_weight(self) -> float:
        """α of this step ("bias": the aux loss is logged, not trained on)."""
        if not self.cfg.trains_aux:
            return 0.0
        return self.controller.value if self.controller is not None else self.cfg.aux_weight

    def start_step(self) -> None:
        self.balance.reset()

    def loss_terms(self, ce: Tensor, routing: Sequence[RoutingStats]) -> dict[str, Tensor]:
        """``ce`` plus this micro-batch's ``aux`` and ``z`` terms and the ``total`` loss to backpropagate."""
        global_aux = self.balance.aux(routing, self.process_group)  # always: the counts feed the bias and metrics
        aux = global_aux if self.cfg.global_aux else micro_batch_aux(routing)
        z = torch.stack([z_loss(s.logits) for s in routing]).sum()
        return {"ce": ce, "aux": aux, "z": z, "total": ce + self.aux_weight * aux + self.cfg.z_weight * z}

    def step_metrics(self) -> dict[str, float]:
        """The step's balance metrics from its global counts; ``moe/aux_loss`` is the exact step-level global aux."""
        counts = self.balance.counts
        if counts is None:
            return {}
        metrics = {"moe/aux_loss": float(self.balance.value())} if self.cfg.global_aux else {}
        if self.controller is not None:
            metrics |= self.controller.metrics()
        return metrics | balance_log(counts)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """At every optimizer step (never at a skipped one): the selection-bias update when the config uses it, then
        the controller's update from the step's counts (the step itself trained with the α it had)."""
        if self.cfg.uses_bias or self.controller is not None:
            optimizer.register_step_pre_hook(self._step_hook)

    def _step_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        counts = self.balance.counts
        if counts is None:
            return
        if self.cfg.uses_bias:
            update_selection_bias(self.model, counts, self.cfg.bias_rate)
        if self.controller is not None:
            self.controller.update(float(balance_metrics(counts)["maxvio"].mean()))

    # Stateful (checkpointed by the trainer when a controller runs): the controller's state.
    def state_dict(self) -> dict[str, Any]:
        return {"controller": None if self.controller is None else self.controller.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.controller is not None:
            self.controller.load_state_dict(state["controller"])
