"""Expert parallelism (EP): a layer's routed experts sharded over an EP group, tokens exchanged by all-to-all.

Rank r of an n-rank EP group keeps experts [r·E/n, (r+1)·E/n) whole: :func:`shard_experts` turns the stacked
(E, out, in) parameters into DTensors ``Shard(0)`` on the group's 1-D DeviceMesh (torch.distributed.checkpoint
then saves and reshards them like any DTensor, and the sphere optimizers see each expert matrix whole on one rank).
:func:`dispatch` is a dropless dispatch function (the ``moe.dispatch`` signature) in the shape of Megatron-core's
``MoEAlltoAllTokenDispatcher`` and torchtitan's ``AllToAllTokenDispatcher``:

1. permute: the N·k token-slots sorted by expert (stable), so the rows for rank j's experts are contiguous and in
   rank order;
2. split sizes first: one ``all_to_all_single`` of the per-expert slot counts (E,) tells every rank how many rows
   it receives from each rank for each of its experts; one host sync turns both into split lists;
3. ``all_to_all_single`` of the rows (variable splits; functional collective, differentiable: its backward is the
   exchange with the splits swapped);
4. the local experts through the layer's dispatch backend (torch grouped_mm / megablocks / loop): every received
   row is one slot of one local expert with gate 1, so the backend's own stable sort groups them by expert;
5. the reverse ``all_to_all_single``, the inverse permutation, and the gate-weighted sum over each token's k slots
   (the gates are applied on the token's own rank, so their gradient stays local, as Megatron and torchtitan do).

Every rank of the group must take part in both exchanges of every MoE layer, in forward and in backward: a rank
whose tokens all go elsewhere still sends empty splits, and one that receives no row still keeps the exchange (and
a zero gradient for its experts) in its autograd graph.

Shape suffixes (torchtitan's convention): T tokens, K = top-k, S = T·K token-slots, E experts (all ranks'), R rows
received, H hidden.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from hyperp.errors import ConfigError
from hyperp.optim.sharded import local
from moe.dispatch import DispatchFn
from moe.dispatch.precision import compute_dtype
from moe.experts import Experts, ExpertWeights

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup
    from torch.distributed.device_mesh import DeviceMesh

EXPERT_PARAMS = ("w_gate", "w_up", "w_down")


def shard_experts(experts: Experts, mesh: DeviceMesh) -> None:
    """Keep this rank's E/n experts: every stacked weight becomes a DTensor ``Shard(0)`` on the 1-D ``mesh``.

    All ranks hold the same initial weights (same seed), so each one slices its own part without communication.
    """
    from torch.distributed.tensor import Shard, distribute_tensor

    n = mesh.size()
    if experts.num_experts % n:
        raise ConfigError(f"train.expert_parallel={n} must divide model.moe.num_experts={experts.num_experts}")
    for name in EXPERT_PARAMS:
        whole = getattr(experts, name)
        shard = distribute_tensor(whole.detach(), mesh, [Shard(0)], src_data_rank=None)
        setattr(experts, name, nn.Parameter(shard, requires_grad=whole.requires_grad))


def local_experts(experts: Experts) -> ExpertWeights:
    """This rank's experts as plain tensors (``to_local`` is differentiable: gradients reach the DTensors)."""
    return ExpertWeights(*(local(getattr(experts, name)) for name in EXPERT_PARAMS))


def dispatch(x: Tensor, indices: Tensor, weights: Tensor, experts: Experts, *, group: ProcessGroup,
             local_dispatch: DispatchFn) -> Tensor:
    """Σ_j weights[:, j]·Expert_{indices[:, j]}(x) with the experts spread over ``group`` (module docstring)."""
    from torch.distributed._functional_collectives import all_to_all_single  # torch builds without distributed

    mine = local_experts(experts)
    n, k = torch.distributed.get_world_size(group), indices.shape[1]
    flat_TK = indices.reshape(-1)
    order_S = torch.argsort(flat_TK, stable=True)  # sorted slot → slot (slot = token·k + j)
    counts_E = torch.bincount(flat_TK, minlength=mine.num_experts * n)
    received_E = all_to_all_single(counts_E, None, None, group)  # (n·E/n,): rank s's rows for each local expert
    send, receive = torch.stack([counts_E.view(n, -1).sum(1), received_E.view(n, -1).sum(1)]).tolist()  # one sync
    x = x.to(compute_dtype(x))  # exchange what the experts compute in (bf16 under autocast)
    routed_RH = all_to_all_single(x[order_S // k], receive, send, group)
    expert_R = torch.arange(mine.num_experts, device=x.device).repeat(n).repeat_interleave(received_E)
    y_RH = _local_experts(routed_RH, expert_R, mine, local_dispatch)
    back_SH = all_to_all_single(y_RH, send, receive, group)
    inverse_S = torch.empty_like(order_S).index_copy_(0, order_S, torch.arange(order_S.shape[0], device=x.device))
    slots_TKH = back_SH.index_select(0, inverse_S).view(-1, k, back_SH.shape[-1])  # slot order again
    return torch.einsum("tkh,tk->th", slots_TKH, weights.to(slots_TKH.dtype))


def _local_experts(x_RH: Tensor, expert_R: Tensor, mine: ExpertWeights, local_dispatch: DispatchFn) -> Tensor:
    """The received rows through this rank's experts: one slot each, gate 1 (the gates are applied at home)."""
    if x_RH.shape[0] == 0:  # nothing received: stay in the graph (backward exchanges) with zero expert gradients
        return x_RH * 0 + sum(w.sum() for w in (mine.w_gate, mine.w_up, mine.w_down)).to(x_RH.dtype) * 0
    ones = torch.ones(x_RH.shape[0], 1, dtype=x_RH.dtype, device=x_RH.device)
    return local_dispatch(x_RH, expert_R.unsqueeze(1), ones, mine)
