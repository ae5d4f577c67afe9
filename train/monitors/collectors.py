"""Collectors: forward hooks armed on monitor steps, a sync-free expert-load window, optimizer health.

Each collector fills ``{metric name: 0-dim tensor}``; nothing here reads a value back to the host.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn

from hyperp.dtypes import at_least_fp32
from hyperp.optim.sharded import full, global_norm, is_sharded, local, local_slice, sharded_norm
from hyperp.optim.sphere import frobenius_norm

from train.distributed import DistEnv
from train.monitors import stats as S


def layer_name(i: int) -> str:
    return f"layer_{i:02d}"


def _tokens(x: Tensor, n: int) -> Tensor:
    """The first ``n`` tokens of a (..., hidden) activation as (n, hidden), detached."""
    return x.detach().reshape(-1, x.shape[-1])[:n]


class ActivationCollector:
    """Forward hooks on the attention/MLP branches, blocks, final norm and head of a :class:`models.qwen3.Qwen3`.

    :meth:`arm` registers them; they record one forward pass (the first micro-batch of a monitor step) and
    remove themselves when the model's forward returns, so other steps and micro-batches run hook-free.
    """

    def __init__(self, model: nn.Module, sample_tokens: int = 256) -> None:
        self.model, self.sample = model, sample_tokens
        self.stats: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def arm(self) -> None:
        self.disarm()
        self.stats = {}
        m = self.model
        for i, block in enumerate(m.layers):
            tag = layer_name(i)
            mult = float(block.residual_multiplier)
            self._handles += [
                block.attn.register_forward_hook(self._attn_hook(tag, mult)),
                block.mlp.register_forward_hook(self._mlp_hook(tag, mult)),
                block.register_forward_hook(self._block_hook(tag)),
            ]
        self._handles += [
            m.norm.register_forward_hook(self._final_hook),
            m.lm_head.register_forward_hook(self._head_hook),
            m.register_forward_hook(lambda *_: self.disarm()),
        ]

    def disarm(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def take(self) -> dict[str, Tensor]:
        out, self.stats = self.stats, {}
        return out

    # ------------------------------------------------------------------------------------------------ hooks
    def _attn_hook(self, tag: str, mult: float):
        @torch.no_grad()
        def hook(attn: nn.Module, args: tuple, output: Tensor) -> None:
            x = args[0].detach()
            out = output.detach() * mult
            self.stats[f"monitor/rms/attn/{tag}"] = S.rms(out)
            self.stats[f"monitor/outlier_pct/attn/{tag}"] = S.token_outlier_pct(_tokens(out, self.sample))
            # Whole sequences (keys need their prefix): ⌊sample/T⌋ of them, at least one; queries = the last
            # min(T, sample) positions, so the cost stays O(sample·T) for long sequences.
            b, t = x.shape[0], x.shape[1]
            seqs = x[: min(b, max(1, self.sample // t))]
            q, k = attn.queries_keys(seqs)
            z, top = S.attention_logit_stats(q[..., t - min(t, self.sample):, :], k, attn.scale)
            self.stats[f"monitor/z_attn/{tag}"] = z
            self.stats[f"monitor/attn_logit_max/{tag}"] = top
        return hook

    def _mlp_hook(self, tag: str, mult: float):
        @torch.no_grad()
        def hook(mlp: nn.Module, args: tuple, output: Any) -> None:
            routing = None
            if isinstance(output, tuple):
                output, routing = output
            out = output.detach() * mult
            self.stats[f"monitor/rms/mlp/{tag}"] = S.rms(out)
            self.stats[f"monitor/outlier_pct/mlp/{tag}"] = S.token_outlier_pct(_tokens(out, self.sample))
            for k, v in S.activation_outliers(_tokens(args[0], self.sample)).items():
                self.stats[f"monitor/{k}/mlp_in/{tag}"] = v
            if routing is not None:
                _, z, top = S.logsumexp_stats(routing.logits.detach())
                self.stats[f"monitor/z_router/{tag}"] = z
                self.stats[f"monitor/z_router_max/{tag}"] = top
                router = mlp.router
                for k, v in S.router_stats(routing.logits.detach(), router.top_k, router.selection_bias).items():
                    self.stats[f"monitor/router/{k}/{tag}"] = v
                if router.selection_bias is None:  # a selection bias *means* to send tokens against the probabilities
                    self.stats[f"monitor/router/aux_over_min/{tag}"] = S.aux_over_min(routing.counts,
                                                                                      routing.prob_mean.detach())
        return hook

    def _block_hook(self, tag: str):
        @torch.no_grad()
        def hook(block: nn.Module, args: tuple, output: tuple) -> None:
            h = output[0].detach()
            self.stats[f"monitor/rms/{tag}"] = S.rms(h)
            for k, v in S.activation_outliers(_tokens(h, self.sample)).items():
                self.stats[f"monitor/{k}/resid/{tag}"] = v
        return hook

    @torch.no_grad()
    def _final_hook(self, norm: nn.Module, args: tuple, output: Tensor) -> None:
        self.stats["monitor/rms/final"] = S.rms(output.detach())

    @torch.no_grad()
    def _head_hook(self, head: nn.Module, args: tuple, output: Tensor) -> None:
        mean, _, top = S.logsumexp_stats(_tokens(output, self.sample))
        self.stats["monitor/z_logits_mean"] = mean
        self.stats["monitor/z_logits_max"] = top


class ExpertLoad:
    """Token-slot counts per MoE layer summed on device over the window since the last report.

    One permanent hook per MoE block adds ``RoutingStats.counts`` (already computed by the router) during
    training forwards only: an on-device add, no host sync. Each rank counts its own tokens; reports and
    checkpoints use the counts summed over ``env``'s ranks (a checkpoint's window is restored on rank 0, zeros
    elsewhere, so the next report is the one an uninterrupted run gives).
    """

    def __init__(self, model: nn.Module, env: DistEnv = DistEnv()) -> None:
        self.env = env
        self.window: dict[int, Tensor] = {}
        self._handles = [block.mlp.register_forward_hook(self._hook(i))
                         for i, block in enumerate(model.layers) if getattr(block, "is_moe", False)]

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def _hook(self, i: int):
        def hook(mlp: nn.Module, args: tuple, output: tuple) -> None:
            if mlp.training:
                counts = output[1].counts.detach().float()
                self.window[i] = self.window[i] + counts if i in self.window else counts.clone()
        return hook

    def _summed(self) -> dict[int, Tensor]:
        """The window's counts over all ranks (one all-reduce; the same layers exist on every rank)."""
        layers = sorted(self.window)
        if not layers:
            return {}
        return dict(zip(layers, self.env.all_reduce(torch.stack([self.window[i] for i in layers])), strict=True))

    def report(self, per_expert: bool = True) -> dict[str, Tensor]:
        """Balance statistics of the window (then emptied); means over MoE layers and the total of dead experts."""
        out: dict[str, Tensor] = {}
        per_layer: dict[str, list[Tensor]] = defaultdict(list)
        for i, counts in self._summed().items():
            tag = layer_name(i)
            for k, v in S.expert_load(counts).items():
                out[f"monitor/expert_load/{k}/{tag}"] = v
                per_layer[k].append(v)
            if per_expert:
                for e in range(counts.shape[0]):
                    out[f"monitor/expert_tokens/{tag}/expert_{e:02d}"] = counts[e]
        for k, vals in per_layer.items():
            stacked = torch.stack(vals)
            out[f"monitor/expert_load/{k}_{'total' if k == 'dead' else 'mean'}"] = (
                stacked.sum() if k == "dead" else stacked.mean())
        self.window = {}
        return out

    def state_dict(self) -> dict[int, list[float]]:
        """The window summed over ranks (collective: every rank saves a checkpoint)."""
        return {i: c.tolist() for i, c in self._summed().items()}

    def load_state_dict(self, state: dict[int, list[float]], device: torch.device) -> None:
        self.window = {int(i): torch.tensor(c, dtype=torch.float32, device=device) * float(self.env.is_main)
                       for i, c in state.items()}

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class RoutingChurn:
    """Routing churn: the top-k sets of a fixed probe (the first validation sequences), routed at every monitor step
    after the optimizer step; the churn of a layer is the fraction of probe tokens whose set changed since the last
    monitor step. One no-grad forward of the probe in eval mode (the expert-load window counts training forwards only).
    """

    def __init__(self, model: nn.Module, probe: Tensor) -> None:
        self.model, self.probe = model, probe
        self.layers = [i for i, block in enumerate(model.layers) if getattr(block, "is_moe", False)]
        self.last: list[Tensor] | None = None

    @torch.no_grad()
    def measure(self, autocast: Any) -> dict[str, Tensor]:
        training = self.model.training
        self.model.eval()
        try:
            with autocast():
                now = [r.indices for r in self.model(self.probe).routing]
        finally:
            self.model.train(training)
        out = {}
        if self.last is not None:
            for i, before, after in zip(self.layers, self.last, now, strict=True):
                out[f"monitor/router/churn/{layer_name(i)}"] = S.topk_changed(before, after)
        self.last = now
        return out

    def state_dict(self) -> list[list[list[int]]] | None:
        return None if self.last is None else [t.tolist() for t in self.last]

    def load_state_dict(self, state: list[list[list[int]]] | None) -> None:
        device = self.probe.device
        self.last = None if state is None else [torch.tensor(t, dtype=torch.long, device=device) for t in state]


def _group_params(optimizer: Any) -> dict[str, list[Tensor]]:
    groups: dict[str, list[Tensor]] = defaultdict(list)
    for i, g in enumerate(optimizer.param_groups):
        groups[g.get("name", f"group{i}")].extend(g["params"])
    return groups


def _norm(tensors: list[Tensor]) -> Tensor:
    """The norm of whole (possibly sharded) tensors, the same on every rank, without gathering them."""
    return global_norm(tensors)


def _matrix_norms(p: Tensor, mode: str) -> Tensor:
    """Norms of this rank's whole matrices as the sphere retraction keeps them (per expert for 3-D unless
    ``joint``): a matrix split over ranks has its squared shard norms summed, experts sharded on the expert dim are
    this rank's only."""
    norm = sharded_norm(p, mode) if is_sharded(p) else frobenius_norm
    return norm(local(p.detach()), mode).reshape(-1)


def _reference_norms(p: Tensor, mode: str) -> list[float]:
    """Per-matrix norms of the whole tensor (all experts), the same on every rank: what a checkpoint keeps."""
    return _matrix_norms(full(p.detach()), mode).tolist()


def _local_reference(norms: list[float], p: Tensor) -> Tensor:
    """The reference norms of ``p``'s matrices on this rank (an (E, 1, 1) or (1, 1) table sliced like ``p``)."""
    table = torch.tensor(norms, dtype=at_least_fp32(p.dtype), device=p.device).view(-1, *[1] * (p.ndim - 1))
    return local_slice(table, p).reshape(-1)


class OptimizerHealth:
    """Grad / weight norms per param group before the step, update/weight ratio and sphere norm drift after it."""

    def __init__(self) -> None:
        self.stats: dict[str, Tensor] = {}
        self._before: dict[str, list[Tensor]] = {}
        self.reference: list[list[float]] | None = None  # per-matrix norms of the sphere params at the start
        self._ref_tensors: list[Tensor] | None = None

    @staticmethod
    def _sphere(optimizer: Any) -> list[tuple[Tensor, str]]:
        return [(p, g.get("expert_sphere", "per_expert")) for g in optimizer.param_groups
                if g.get("name") == "sphere" for p in g["params"]]

    def init_reference(self, optimizer: Any) -> None:
        if self.reference is None:
            self.reference = [_reference_norms(p, mode) for p, mode in self._sphere(optimizer)]
        self._ref_tensors = None

    @torch.no_grad()
    def before_step(self, optimizer: Any) -> None:
        self.stats, self._before = {}, {}
        for name, params in _group_params(optimizer).items():
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                self.stats[f"monitor/grad_norm/{name}"] = _norm(grads)
            self.stats[f"monitor/weight_norm/{name}"] = _norm(params)
            self._before[name] = [p.detach().clone() for p in params]

    @torch.no_grad()
    def after_step(self, optimizer: Any) -> dict[str, Tensor]:
        if self._before:
            for name, params in _group_params(optimizer).items():
                old = self._before.get(name)
                if old is None:
                    continue
                delta = _norm([p.detach() - o for p, o in zip(params, old, strict=True)])
                self.stats[f"monitor/update_ratio/{name}"] = delta / _norm(old).clamp_min(1e-30)
            self._before = {}
        sphere = self._sphere(optimizer)
        if sphere and self.reference is not None and len(self.reference) == len(sphere):
            if self._ref_tensors is None:  # this rank's matrices' reference norms
                self._ref_tensors = [_local_reference(r, p) for (p, _), r in zip(sphere, self.reference, strict=True)]
            drift = [(_matrix_norms(p, mode) / ref - 1.0).abs().max()
                     for (p, mode), ref in zip(sphere, self._ref_tensors, strict=True)]
            self.stats["monitor/sphere_norm_drift"] = torch.stack(drift).max()  # this rank's; max over ranks
        out, self.stats = self.stats, {}
        return out
