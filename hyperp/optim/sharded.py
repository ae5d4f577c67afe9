"""Sphere optimizers on sharded parameters (FSDP2 ``fully_shard`` makes every parameter a DTensor, Shard(0)).

Exactness first: results equal the single-process optimizer up to float summation order.

- Element-wise state (Muon momentum, Adam moments) stays a DTensor sharded like the parameter: no extra memory,
  and torch.distributed.checkpoint reshards it like any FSDP2 optimizer state.
- Newton–Schulz needs the whole matrix: the (momentum) direction is gathered with ``full_tensor()`` and every rank
  orthogonalizes it redundantly (no scatter needed: each rank then keeps its own rows). Gathering to owner ranks
  round-robin would divide that compute by the world size; it is a later optimisation, not a change of result.
- Frobenius norms of sharded matrices are all-reduced sums of squared shard norms (AdamH needs nothing else).
  A stacked (E, out, in) expert tensor sharded on E keeps each expert whole on one rank, so its per-expert norms
  need no communication.
- The radius R is kept in full (replicated, shape (1, 1) or (E, 1, 1)) so checkpoints reshard freely; each rank
  slices its experts out of it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from hyperp.dtypes import at_least_fp32

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
except ImportError:  # pragma: no cover - torch without DTensor: nothing is ever sharded
    DTensor = None  # type: ignore[assignment,misc]


def is_sharded(t: Tensor) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """This rank's part of ``t`` (``t`` itself when not a DTensor); in-place ops on it update the DTensor."""
    return t.to_local() if is_sharded(t) else t


def full(t: Tensor) -> Tensor:
    """The whole tensor on every rank (an all-gather for a DTensor)."""
    return t.full_tensor() if is_sharded(t) else t


def local_slice(whole: Tensor, like: Tensor) -> Tensor:
    """This rank's shard of ``whole`` (held in full on every rank), sharded as ``like``; no communication.

    Dims of size 1 in ``whole`` where ``like`` is larger (keepdim norms) are broadcast, not sliced.
    """
    if not is_sharded(like):
        return whole
    placements = [
        Replicate() if isinstance(pl, Shard) and whole.shape[pl.dim] != like.shape[pl.dim] else pl
        for pl in like.placements
    ]
    return distribute_tensor(whole, like.device_mesh, placements, src_data_rank=None).to_local()


def sharded_norm(like: Tensor, mode: str = "per_expert") -> Callable[[Tensor], Tensor]:
    """A ``frobenius_norm`` for the local shards of tensors sharded as ``like``: the norm of the *whole* matrix.

    Sum of squares over the normalized dims (fp32, fp64 for fp64), all-reduced over every mesh dim that shards one of them.
    """
    ndim = like.ndim
    dims = tuple(range(ndim)) if mode == "joint" else (ndim - 2, ndim - 1)
    groups = [like.device_mesh.get_group(i) for i, pl in enumerate(like.placements)
              if isinstance(pl, Shard) and pl.dim % ndim in dims]

    def norm(x: Tensor, mode: str = mode) -> Tensor:
        sq = x.to(at_least_fp32(x.dtype)).square().sum(dim=dims, keepdim=True)
        for group in groups:
            dist.all_reduce(sq, group=group)
        return sq.sqrt()

    return norm
