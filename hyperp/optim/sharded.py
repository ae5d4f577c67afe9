"""Sphere optimizers on sharded parameters: DTensors from FSDP2 ``fully_shard`` (Shard(0) over the data-parallel
ranks) and from expert parallelism (stacked (E, out, in) experts Shard(0) over the EP ranks, :mod:`moe.expert_parallel`;
under FSDP also over the data-parallel ranks, both on dim 0).

Exactness first: results equal the single-process optimizer up to float summation order.

- Element-wise state (Muon momentum, Adam moments) stays a DTensor sharded like the parameter: no extra memory,
  and torch.distributed.checkpoint reshards it like any FSDP2 optimizer state.
- Newton–Schulz needs whole matrices (:func:`orthogonalize`). A tensor sharded only on its expert dim (dim 0 of
  (E, out, in): expert parallelism, FSDP on stacked experts) holds its experts whole: Newton–Schulz runs on the
  local experts, no communication. A matrix sharded on its rows (FSDP on a 2-D weight) is orthogonalized once, on
  an owner rank: the matrices of a group are dealt round-robin over the mesh's ranks, each owner receives the
  shards of its matrix in one ``all_to_all_single``, orthogonalizes it and sends every rank its rows back in a
  second one (the scheme of Moonlight's distributed Muon, arXiv 2502.16982 §2.3). Every rank holds the same bits
  as when all of them computed every matrix, at 1/world of the Newton–Schulz compute.
- Frobenius norms of sharded matrices are all-reduced sums of squared shard norms (AdamH needs nothing else).
  Per-expert norms of experts sharded on the expert dim need no communication.
- The radius R is kept in full (replicated, shape (1, 1) or (E, 1, 1)) so checkpoints reshard freely; each rank
  slices its experts out of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from hyperp.dtypes import at_least_fp32

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.placement_types import _StridedShard
except ImportError:  # pragma: no cover - torch without DTensor: nothing is ever sharded
    DTensor = None  # type: ignore[assignment,misc]

# FSDP2 over a tensor already sharded on the same dim (experts under expert parallelism) places it _StridedShard on
# the data-parallel mesh dim; in torch 2.13 that is not a subclass of Shard.
_SHARDS = (Shard, _StridedShard) if DTensor is not None else ()


def shard_dim(placement: object, ndim: int) -> int | None:
    """The tensor dim a placement shards (``Shard`` or ``_StridedShard``), or None (replicated, partial)."""
    return placement.dim % ndim if isinstance(placement, _SHARDS) else None


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
        Replicate() if (d := shard_dim(pl, like.ndim)) is not None and whole.shape[d] != like.shape[d] else pl
        for pl in like.placements
    ]
    return distribute_tensor(whole, like.device_mesh, placements, src_data_rank=None).to_local()


def _sharding_groups(like: Tensor, dims: tuple[int, ...]) -> list[dist.ProcessGroup]:
    """The process groups of the mesh dims of DTensor ``like`` that shard one of ``dims`` (none for a plain tensor)."""
    if not is_sharded(like):
        return []
    return [like.device_mesh.get_group(i) for i, pl in enumerate(like.placements)
            if shard_dim(pl, like.ndim) in dims]


def sharded_norm(like: Tensor, mode: str = "per_expert") -> Callable[[Tensor], Tensor]:
    """A ``frobenius_norm`` for the local shards of tensors sharded as ``like``: the norm of the *whole* matrix.

    Sum of squares over the normalized dims (fp32, fp64 for fp64), all-reduced over every mesh dim that shards one of them.
    """
    ndim = like.ndim
    dims = tuple(range(ndim)) if mode == "joint" else (ndim - 2, ndim - 1)
    groups = _sharding_groups(like, dims)

    def norm(x: Tensor, mode: str = mode) -> Tensor:
        sq = x.to(at_least_fp32(x.dtype)).square().sum(dim=dims, keepdim=True)
        for group in groups:
            dist.all_reduce(sq, group=group)
        return sq.sqrt()

    return norm


def global_norm(tensors: Iterable[Tensor]) -> Tensor:
    """‖(t₁, t₂, …)‖₂ of the whole tensors, from this rank's shards; the same on every rank.

    Each DTensor's local sum of squares is all-reduced over the mesh dims that shard it (a replicated dim counts once;
    a plain tensor is the same on every rank) — one all-reduce per distinct set of groups. Each tensor's norm is
    taken in fp32 (fp64 for fp64), the few partial sums are added in fp64.
    """
    buckets: dict[tuple[dist.ProcessGroup, ...], Tensor] = {}
    for t in tensors:
        groups = tuple(_sharding_groups(t, tuple(range(t.ndim))))
        part = local(t).detach()
        sq = torch.linalg.vector_norm(part, dtype=at_least_fp32(part.dtype)).double().square()
        buckets[groups] = buckets[groups] + sq if groups in buckets else sq
    if not buckets:
        return torch.zeros((), dtype=torch.float64)
    for groups, sq in buckets.items():
        for group in groups:
            dist.all_reduce(sq, group=group)
    return torch.stack(list(buckets.values())).sum().sqrt()


# ------------------------------------------------------------------------------------------------ Newton–Schulz


def _gathered_on_owner(t: Tensor) -> bool:
    """Whether Newton–Schulz of ``t`` goes through an owner rank: a DTensor on a 1-D mesh sharding a matrix dim."""
    return bool(_sharding_groups(t, (t.ndim - 2, t.ndim - 1))) and t.device_mesh.ndim == 1


def owner_chunks(params: Sequence[Tensor]) -> Iterator[list[Tensor]]:
    """The batches :func:`orthogonalize` takes: each parameter that needs no gather alone, the others in chunks of
    one matrix per rank of their mesh (the i-th of a chunk is owned by rank i), in the same order on every rank."""
    by_mesh: dict[object, list[Tensor]] = {}
    for p in params:
        if _gathered_on_owner(p):
            by_mesh.setdefault(p.device_mesh, []).append(p)
        else:
            yield [p]
    for mesh, gathered in by_mesh.items():
        for start in range(0, len(gathered), mesh.size()):
            yield gathered[start:start + mesh.size()]


def orthogonalize(directions: Sequence[Tensor], ns: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """``ns`` (Newton–Schulz) of every whole matrix of ``directions`` (one batch of :func:`owner_chunks`), returned as
    this rank's part of each result, shaped like its local shard."""
    if _gathered_on_owner(directions[0]):
        return _owner_orthogonalize(directions, ns)
    (d,) = directions
    if _sharding_groups(d, (d.ndim - 2, d.ndim - 1)):  # matrix dims sharded over a multi-dim mesh: all compute it
        return [local_slice(ns(full(d)), d)]
    return [ns(local(d))]  # plain, or sharded on the expert dim only: whole local matrices


def _row_counts(rows: int, world: int) -> list[int]:
    """Rows of each rank under ``Shard`` (torch.chunk: ⌈rows/world⌉ each, the last ones shorter or empty)."""
    size = -(-rows // world)
    return [max(0, min(size, rows - r * size)) for r in range(world)]


def _owner_orthogonalize(directions: Sequence[Tensor], ns: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """Matrix i of the chunk is orthogonalized by rank i of their 1-D mesh (module docstring)."""
    mesh = directions[0].device_mesh
    group, world, me = mesh.get_group(), mesh.size(), mesh.get_local_rank()
    shards = [local(d) for d in directions]
    to_owners = [s.numel() for s in shards] + [0] * (world - len(shards))  # my shard of matrix i → rank i
    send = torch.cat([s.reshape(-1) for s in shards])
    owned = directions[me] if me < len(directions) else None
    rows, row_numel, dim = [0] * world, 0, 0
    if owned is not None:
        dim = shard_dim(owned.placements[0], owned.ndim)
        rows, row_numel = _row_counts(owned.shape[dim], world), owned.numel() // owned.shape[dim]
    from_ranks = [r * row_numel for r in rows]  # rank r's shard of the matrix I own
    received = _exchange(send, from_ranks, to_owners, group)
    result = received  # nothing owned in this chunk: an empty reply
    if owned is not None:
        whole = torch.cat([part.view(_with_dim(owned.shape, dim, r))
                           for part, r in zip(received.split(from_ranks), rows, strict=True)], dim)
        # Sent back in the directions' dtype so that every rank exchanges one dtype (bf16 → fp32 is exact).
        result = torch.cat([part.reshape(-1) for part in ns(whole).to(send.dtype).split(rows, dim)])
    back = _exchange(result, to_owners, from_ranks, group)
    return [part.view(s.shape) for part, s in zip(back.split(to_owners[:len(shards)]), shards, strict=True)]


def _with_dim(shape: torch.Size, dim: int, size: int) -> list[int]:
    out = list(shape)
    out[dim] = size
    return out


def _exchange(send: Tensor, receive: list[int], send_splits: list[int], group: dist.ProcessGroup) -> Tensor:
    out = send.new_empty(sum(receive))
    dist.all_to_all_single(out, send.contiguous(), receive, send_splits, group=group)
    return out
