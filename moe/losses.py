"""Load-balancing and router z losses (SPEC §4; ArchScale `lit_gpt/aux_loss.py:load_balance_loss`, style "switch").

Switch loss L_aux = E·Σ_i f_i·P_i: f_i the share of token-slots routed to expert i (counts, no gradient), P_i the
mean router probability on i (softmax over all E, differentiable). Terms are *summed* over layers, as ArchScale
does; the training loop multiplies by ``aux_weight`` / ``z_weight``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from hyperp.dtypes import at_least_fp32
from moe.router import RoutingStats

__all__ = ["GlobalBalance", "RoutingStats", "micro_batch_aux", "switch_aux", "z_loss"]


def switch_aux(counts: Tensor, prob_mean: Tensor) -> Tensor:
    """E·Σ f_i·P_i with f = counts / counts.sum() (each token counted k times, so f sums to 1).

    Batched over leading dimensions: (L, E) inputs give the (L,) per-layer losses.
    """
    f = counts.detach().to(prob_mean.dtype)
    f = f / f.sum(-1, keepdim=True).clamp_min(1.0)
    return prob_mean.shape[-1] * (f * prob_mean).sum(-1)


def z_loss(logits: Tensor) -> Tensor:
    """Router z-loss / Router Z-value: mean over tokens of (logsumexp_i z_i)² (SPEC §4, §5)."""
    return torch.logsumexp(logits.to(at_least_fp32(logits.dtype)), dim=-1).square().mean()


def micro_batch_aux(stats_list: Sequence[RoutingStats]) -> Tensor:
    """Local switch loss of this micro-batch, summed over layers (no cross-rank / cross-micro-batch statistics)."""
    return sum((switch_aux(s.counts, s.prob_mean) for s in stats_list), torch.zeros(()))


class GlobalBalance:
    """Global-batch switch loss: token counts accumulated over the micro-batches of one optimizer step and
    all-reduced over data-parallel ranks (SPEC §4 "global variant"; Megatron/Qwen global-batch balancing).

    Create once; call :meth:`reset` at the start of every optimizer step and :meth:`aux` once per micro-batch.

    Gradient approximation: the loss of the whole step is E·Σ f_step·P̄_step, whose gradient (f is never
    differentiated) is E·Σ_i f_step,i · Σ_m (n_m/n)·∂P_m,i. When micro-batch m is backpropagated, the counts of
    later micro-batches do not exist yet, so :meth:`aux` returns E·Σ f_running·P_m with f_running the counts of
    micro-batches 1..m (all ranks). The last micro-batch's gradient is exact; earlier ones use a partial f — the
    same practice as Megatron-LM's global-batch load balancing. P stays local per rank: with equal tokens per rank,
    DDP's mean of gradients equals the gradient of the globally averaged P, so it need not be all-reduced
    differentiably. By default (``all_reduce_probs``) it is anyway, as ArchScale does, with
    ``torch.distributed.nn.functional.all_reduce``: the gradient is the same (the all-reduce's backward sums the
    ranks' output gradients, DDP then averages), and every rank's returned loss is the global-batch value.
    The training loop scales each micro-batch's loss by its share of the step, as it does for the CE loss.

    :meth:`value` is the exact step-level loss E·Σ f_step·P̄_step (P̄ the token-weighted mean of the micro-batch
    P's, detached): what the concatenated global batch would give, the number to log.
    """

    def __init__(self, all_reduce_probs: bool = True) -> None:
        self.all_reduce_probs = all_reduce_probs
        self.reset()

    def reset(self) -> None:
        self._counts: Tensor | None = None  # (L, E) running counts, all ranks
        self._prob_sum: Tensor | None = None  # (L, E) Σ_m n_m·P_m, this rank, detached
        self._tokens = 0
        self._group: dist.ProcessGroup | None = None
        self._distributed = False

    def aux(self, stats_list: Sequence[RoutingStats], process_group: dist.ProcessGroup | None = None) -> Tensor:
        """Add this micro-batch's counts to the step totals; return Σ_layers E·Σ f_running·P_micro (differentiable)."""
        if not stats_list:
            return torch.zeros(())
        counts = torch.stack([s.counts.detach().float() for s in stats_list])  # one collective for all layers
        probs = torch.stack([s.prob_mean for s in stats_list])
        tokens = stats_list[0].num_tokens
        global_probs = probs
        if _use_dist(process_group):
            dist.all_reduce(counts, group=process_group)
            self._distributed, self._group = True, process_group
            if self.all_reduce_probs:
                global_probs = _global_mean(probs, tokens, process_group)
        if self._counts is None:
            self._counts = counts
            self._prob_sum = probs.detach().to(at_least_fp32(probs.dtype)) * tokens
        else:
            if self._counts.shape != counts.shape:
                raise ValueError(f"GlobalBalance.aux: got {tuple(counts.shape)} layer×expert counts, expected "
                                 f"{tuple(self._counts.shape)}; call reset() at each optimizer step")
            self._counts = self._counts + counts
            self._prob_sum = self._prob_sum + probs.detach().to(at_least_fp32(probs.dtype)) * tokens
        self._tokens += tokens
        return switch_aux(self._counts, global_probs).sum()

    def value(self) -> Tensor:
        """Exact step-level global switch loss Σ_layers E·Σ f_step·P̄_step (detached; all ranks' P when distributed)."""
        if self._counts is None:
            return torch.zeros(())
        prob_sum = self._prob_sum.clone()
        tokens = torch.tensor(float(self._tokens), device=prob_sum.device)
        if self._distributed:
            dist.all_reduce(prob_sum, group=self._group)
            dist.all_reduce(tokens, group=self._group)
        return switch_aux(self._counts, prob_sum / tokens).sum()

    @property
    def counts(self) -> Tensor | None:
        """(layers, E) token-slot counts of the step so far, all ranks: MaxVio and dead-expert monitors read them."""
        return self._counts


def _global_mean(probs: Tensor, tokens: int, group: dist.ProcessGroup | None) -> Tensor:
    """Token-weighted mean of every rank's P, differentiable (one collective for P and the token count)."""
    # The functional collective is differentiable (its backward all-reduces the output gradient); it replaces the
    # deprecated torch.distributed.nn.functional.all_reduce that ArchScale uses.
    from torch.distributed._functional_collectives import all_reduce

    n = torch.full((probs.shape[0], 1), float(tokens), dtype=probs.dtype, device=probs.device)
    summed = all_reduce(torch.cat([probs * tokens, n], dim=1), "sum", group or dist.group.WORLD)
    return summed[:, :-1] / summed[:, -1:]


def _use_dist(process_group: dist.ProcessGroup | None) -> bool:
    return dist.is_available() and dist.is_initialized() and (process_group is not None or dist.get_world_size() > 1)
