"""What the training loop evaluates: the validation batches of the whole data (``val/loss``, ``val/bpb``) and, with
``train.eval_per_source``, of each source — each member of a built-in corpus of several, e.g. ``default/wiki`` —
(``val/<source>/loss``, ``val/<source>/bpb``; :meth:`train.data.PreparedData.val_batches_by_source`).

Costs: every evaluation runs ``train.eval_batches`` forward batches for the whole data and as many again for each
source (the default corpus: 3 members → 4× the batches of ``val/loss`` alone). Under torchrun each rank scores its
slice of every batch and the sums are averaged across ranks, so loss and bpb are those of the whole batch.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from train.config import RunConfig
from train.data import PreparedData
from train.distributed import DistEnv
from train.eval.scoring import Autocast, Score, score_batches
from train.tokenizer import token_byte_lengths

Batches = list[tuple[torch.Tensor, torch.Tensor]]


class Validation:
    def __init__(self, data: PreparedData, cfg: RunConfig, env: DistEnv, device: torch.device) -> None:
        size, n = cfg.train.batch_size, cfg.train.eval_batches
        self.env, self.device = env, device
        self.batches: Batches = data.val_batches(size, n, env.rank, env.world_size)
        by_source = data.val_batches_by_source(size, n, env.rank, env.world_size) if cfg.train.eval_per_source else {}
        self.by_source: dict[str, Batches] = by_source if len(by_source) > 1 else {}  # one source: = val/loss
        tok = data.tokenizer  # None for token files of an unknown tokenizer: no bpb
        self.token_bytes = None if tok is None else torch.from_numpy(token_byte_lengths(tok)).to(device)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, autocast: Autocast = contextlib.nullcontext) -> dict[str, float]:
        metrics = self._score("val", self.batches, model, autocast)
        for name, batches in self.by_source.items():
            metrics |= self._score(f"val/{name}", batches, model, autocast)
        return metrics

    def _score(self, prefix: str, batches: Batches, model: nn.Module, autocast: Autocast) -> dict[str, float]:
        score = score_batches(model, batches, self.device, self.token_bytes, autocast)
        if self.env.active:  # the mean of the ranks' sums: ratios of sums are unchanged
            sums = self.env.mean({k: torch.tensor(v or 0.0, dtype=torch.float64, device=self.device)
                                  for k, v in vars(score).items()})
            score = Score(**{k: float(v) if getattr(score, k) is not None else None for k, v in sums.items()})
        return score.metrics(prefix)
