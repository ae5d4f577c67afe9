"""Held-out scoring shared by in-loop evaluation, ``python -m train.eval`` and the lm-evaluation-harness adapter.

A :class:`Score` is three sums over predicted tokens: the log-loss in nats of every target (``loss`` = the training
objective, end-of-text predictions included), and the log-loss and UTF-8 bytes of the targets that stand for text
(``bpb``: bits per byte, comparable across tokenizers; special tokens such as EOS have no bytes and are left out of
both sums, as nanochat's ``evaluate_bpb`` and lm-eval's ``bits_per_byte`` do). Bytes come from
:func:`train.tokenizer.token_byte_lengths`; without a known tokenizer a score has no bpb.

Two ways to cut tokens into model inputs:
- fixed batches of equal-length windows (training's validation batches): :func:`score_batches`, no padding;
- variable-length windows ``(inputs, targets)``, the targets predicted by the last ``len(targets)`` positions of the
  inputs (lm-eval's requests, and whole documents): :func:`target_logprobs` sorts them by length and right-pads
  each batch with EOS. Padding sits after every scored position, so causal attention never sees it, and MoE
  routing is per token and dropless: a padded batch scores exactly what each window scores alone.
  :func:`rolling_windows` cuts a document so that every token is predicted once (lm-eval's
  ``loglikelihood_rolling`` with ``context_len = 1``: the first window conditions on EOS).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperp.dtypes import at_least_fp32

Window = tuple[list[int], list[int]]  # (inputs, targets); targets align with the last len(targets) inputs
Autocast = Callable[[], contextlib.AbstractContextManager]


@dataclass
class Score:
    nll: float = 0.0  # Σ −log p over every target (nats)
    tokens: float = 0.0
    text_nll: float = 0.0  # Σ −log p over targets with bytes (no special tokens)
    bytes: float | None = 0.0  # None: bytes unknown (no tokenizer)

    @property
    def loss(self) -> float:
        return self.nll / self.tokens

    @property
    def bpb(self) -> float | None:
        return None if not self.bytes else self.text_nll / (math.log(2) * self.bytes)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def add(self, logprobs: Tensor, targets: Tensor, token_bytes: Tensor | None) -> None:
        """Accumulate one set of target log-probabilities (any shape) and their target ids."""
        nll = -logprobs.double()
        self.nll += float(nll.sum())
        self.tokens += nll.numel()
        if token_bytes is None or self.bytes is None:
            self.bytes = None
            return
        nbytes = token_bytes[targets.to(token_bytes.device)].to(nll.device)
        self.text_nll += float((nll * (nbytes > 0)).sum())
        self.bytes += float(nbytes.sum())

    def metrics(self, prefix: str) -> dict[str, float]:
        """``{prefix}/loss`` and, when bytes are known, ``{prefix}/bpb``."""
        out = {f"{prefix}/loss": self.loss}
        if self.bpb is not None:
            out[f"{prefix}/bpb"] = self.bpb
        return out


def _logits(model: nn.Module, inputs: Tensor, autocast: Autocast) -> Tensor:
    """Logits in fp32 (fp64 stays fp64), as the training loss takes them."""
    with autocast():
        logits = model(inputs).logits
    return logits.to(at_least_fp32(logits.dtype))


@torch.no_grad()
def score_batches(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device,
                  token_bytes: Tensor | None, autocast: Autocast = contextlib.nullcontext) -> Score:
    """The score of fixed (inputs, targets) batches, every position a target (training's validation batches)."""
    score = Score()
    for inputs, targets in batches:
        targets = targets.to(device)
        logits = _logits(model, inputs.to(device), autocast)
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        score.add(-ce, targets.flatten(), token_bytes)
    return score


@torch.no_grad()
def target_logprobs(model: nn.Module, windows: Sequence[Window], batch_size: int, device: torch.device,
                    pad_id: int, autocast: Autocast = contextlib.nullcontext) -> list[tuple[Tensor, bool]]:
    """For each window, the log-probabilities of its targets (on the CPU) and whether every target is the argmax
    (greedy) prediction; results in the order of ``windows``."""
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
    out: list[tuple[Tensor, bool] | None] = [None] * len(windows)
    for first in range(0, len(order), batch_size):
        chunk = order[first:first + batch_size]
        width = len(windows[chunk[0]][0])
        batch = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for row, i in enumerate(chunk):
            batch[row, :len(windows[i][0])] = torch.tensor(windows[i][0])
        logprobs = torch.log_softmax(_logits(model, batch.to(device), autocast), dim=-1).cpu()
        for row, i in enumerate(chunk):
            inputs, targets = windows[i]
            positions = slice(len(inputs) - len(targets), len(inputs))
            lp = logprobs[row, positions]
            t = torch.tensor(targets)
            out[i] = (lp.gather(-1, t[:, None])[:, 0], bool((lp.argmax(-1) == t).all()))
    return out  # type: ignore[return-value]


def rolling_windows(tokens: Sequence[int], prefix: int, max_len: int) -> list[Window]:
    """Windows of at most ``max_len`` inputs predicting every token of ``tokens`` once, the first conditioned on
    ``prefix`` (EOS), the last with a full ``max_len`` context — the inputs and targets lm-eval's
    ``loglikelihood_rolling`` scores (``get_rolling_token_windows(…, context_len=1)``, made disjoint)."""
    stream, n = [prefix, *tokens], len(tokens)
    windows = []
    for start in range(0, n, max_len):
        end = min(start + max_len, n)  # targets stream[start + 1 : end + 1] = tokens[start:end]
        windows.append((stream[max(0, end - max_len):end], stream[start + 1:end + 1]))
    return windows
