"""Packed fixed-length batches: deterministic, resumable, shardable.

The token stream (documents joined by EOS) is cut into non-overlapping windows of ``seq_len + 1`` tokens
(window ``w`` starts at ``w * seq_len``; inputs are its first ``seq_len`` tokens, targets the last). Training
visits windows in a seeded permutation per epoch: global sample ``g`` is window ``perm_epoch[g % n]`` with
``epoch = g // n``. Every batch is therefore a pure function of ``(seed, step, micro_step, rank)``, so resuming
needs only the step counters, and ranks read disjoint slices of each global batch.
"""

from __future__ import annotations

import numpy as np
import torch

from train.errors import DataError


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    block = torch.from_numpy(np.asarray(tokens[idx]).astype(np.int64))
    return block[:, :-1].contiguous(), block[:, 1:].contiguous()


def n_windows(n_tokens: int, seq_len: int) -> int:
    """Number of non-overlapping ``seq_len + 1`` windows (sharing their boundary token) in a stream."""
    return max(0, (n_tokens - 1) // seq_len)


class BatchSampler:
    """Training batches. Each optimizer step consumes ``batch_size * world_size * grad_accum`` windows;
    ``rank`` reads micro-batch ``micro_step`` at slice ``(micro_step * world_size + rank) * batch_size``."""

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
    ) -> None:
        if batch_size < 1 or grad_accum < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"bad sampler sharding: batch_size={batch_size} grad_accum={grad_accum} rank={rank} world_size={world_size}")
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.n_windows = n_windows(len(tokens), seq_len)
        if self.n_windows < 1:
            raise DataError(f"training split has {len(tokens)} tokens, fewer than data.seq_len + 1 = {seq_len + 1}")
        self.step, self.micro_step = 0, 0
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    @property
    def global_batch_size(self) -> int:
        """Windows consumed per optimizer step across all ranks and micro-steps."""
        return self.batch_size * self.world_size * self.grad_accum

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._perm, self._perm_epoch = rng.permutation(self.n_windows), epoch
        return self._perm

    def window_ids(self, step: int, micro_step: int = 0) -> np.ndarray:
        """Window indices of this rank's micro-batch ``micro_step`` of optimizer step ``step``."""
        if not 0 <= micro_step < self.grad_accum or step < 0:
            raise DataError(f"micro_step {micro_step} / step {step} out of range (grad_accum={self.grad_accum})")
        first = step * self.global_batch_size + (micro_step * self.world_size + self.rank) * self.batch_size
        samples = first + np.arange(self.batch_size, dtype=np.int64)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(samples // self.n_windows):
            mask = samples // self.n_windows == epoch
            out[mask] = self._permutation(int(epoch))[samples[mask] % self.n_windows]
        return out

    def batch_at(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), LongTensors of shape (batch_size, seq_len), for the given step."""
        return _windows(self.tokens, self.window_ids(step, micro_step) * self.seq_len, self.seq_len)

    def epoch_of(self, step: int) -> float:
        """Fractional epochs consumed after ``step`` optimizer steps."""
        return step * self.global_batch_size / self.n_windows

    def __iter__(self) -> BatchSampler:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch_at(self.step, self.micro_step)
        self.micro_step += 1
        if self.micro_step == self.grad_accum:
            self.step, self.micro_step = self.step + 1, 0
        return batch

    def state_dict(self) -> dict:
        """Position and the settings that must match on resume."""
        return {"step": self.step, "micro_step": self.micro_step, "seed": self.seed, "seq_len": self.seq_len,
                "n_windows": self.n_windows, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume at the saved position; DataError if the data or batch geometry changed."""
        for key in ("seed", "seq_len", "n_windows", "global_batch_size"):
            if state.get(key) != getattr(self, key):
                raise DataError(f"data sampler state has {key}={state.get(key)}, but this run has {getattr(self, key)}")
        self.step, self.micro_step = int(state["step"]), int(state["micro_step"])


def val_windows(
    tokens: np.ndarray, seq_len: int, batch_size: int, n_batches: int, rank: int = 0, world_size: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` fixed validation batches of windows spread evenly over the stream (fewer if the split is
    small; windows repeat only if one global batch exceeds the split). Rank ``r`` gets slice ``r`` of each."""
    n = n_windows(len(tokens), seq_len)
    if n < 1:
        raise DataError(f"validation split has {len(tokens)} tokens, fewer than data.seq_len + 1 = {seq_len + 1}; "
                        "raise data.val_fraction or lower data.seq_len")
    per_batch = batch_size * world_size
    n_batches = max(1, min(n_batches, n // per_batch))
    total = per_batch * n_batches
    ids = np.linspace(0, n - 1, total).round().astype(np.int64) if total <= n else np.arange(total) % n
    out = []
    for b in range(n_batches):
        chunk = ids[b * per_batch : (b + 1) * per_batch][rank * batch_size : (rank + 1) * batch_size]
        out.append(_windows(tokens, chunk * seq_len, seq_len))
    return out
