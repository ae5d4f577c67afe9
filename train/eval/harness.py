"""An lm-evaluation-harness adapter: our model, in-process, as an ``lm_eval.api.model.LM``.

In-process, so SqrtGate and shared-expert models need neither an export nor ``trust_remote_code``. lm-eval is an
optional extra (``pip install -e .[eval]``): import this module only where it is wanted (``python -m train.eval
--tasks`` does so lazily).

The three request types follow lm-eval's own HF backend (``lm_eval/models/huggingface.py``):
- ``loglikelihood(context, continuation)``: trailing spaces of the context move to the continuation, the pair is
  encoded whole and the context alone, the continuation is the tokens after the context's; an empty context
  conditions on EOS; the model sees the last ``max_length`` tokens before each scored one;
- ``loglikelihood_rolling(text)``: every token once, in windows of ``max_length``, the first conditioned on EOS
  (:func:`train.eval.scoring.rolling_windows`);
- ``generate_until``: greedy decoding (our model keeps no KV cache: each new token re-reads the context, so this is
  for small models and short answers) until a stop string, EOS or ``max_gen_toks``.
Scoring batches requests of similar length with right padding, which changes nothing (see
:mod:`train.eval.scoring`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from lm_eval.api.model import LM

from models.qwen3 import Qwen3
from train.eval.scoring import Autocast, Window, rolling_windows, target_logprobs
from train.tokenizer import Tokenizer

DEFAULT_MAX_GEN_TOKS = 256


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval's HF backend cuts them (``HFLM._encode_pair``)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context) if context else []
    return context_ids or [tokenizer.eos_id], whole[len(context_ids):]


class _Scorer:
    """The model side of the adapter, without lm-eval: windows → log-probabilities."""

    def __init__(self, model: Qwen3, tokenizer: Tokenizer, batch_size: int, device: torch.device,
                 autocast: Autocast) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.device, self.autocast = batch_size, device, autocast
        self.max_length = model.config.max_seq_len

    def pair_window(self, context: list[int], continuation: list[int]) -> Window:
        if not continuation or len(continuation) > self.max_length:
            raise ValueError(f"a continuation of {len(continuation)} tokens cannot be scored with a context of "
                             f"{self.max_length} (model.max_seq_len)")
        whole = (context + continuation)[-(self.max_length + 1):]
        return whole[:-1], continuation

    def score(self, windows: list[Window]) -> list[tuple[torch.Tensor, bool]]:
        return target_logprobs(self.model, windows, self.batch_size, self.device, self.tokenizer.eos_id, self.autocast)

    @torch.no_grad()
    def greedy(self, context: str, until: list[str], max_new: int) -> str:
        ids = self.tokenizer.encode(context) or [self.tokenizer.eos_id]
        new: list[int] = []
        text = ""
        for _ in range(max_new):
            window = torch.tensor([(ids + new)[-self.max_length:]], device=self.device)
            with self.autocast():
                nxt = int(self.model(window).logits[0, -1].argmax())
            if nxt == self.tokenizer.eos_id:
                break
            new.append(nxt)
            text = self.tokenizer.decode(new)
            if any(stop in text for stop in until):
                break
        cut = min((text.find(s) for s in until if s in text), default=len(text))
        return text[:cut]


class HyperpLM(LM):
    """Our model as an lm-eval ``LM``: pass an instance as ``lm_eval.simple_evaluate(model=…)``."""

    def __init__(self, model: Qwen3, tokenizer: Tokenizer, batch_size: int = 16, device: str | torch.device = "cpu",
                 autocast: Autocast = contextlib.nullcontext) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.scorer = _Scorer(model.to(device), tokenizer, batch_size, torch.device(device), autocast)

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        windows = [self.scorer.pair_window(*encode_pair(self.tokenizer, *r.args)) for r in requests]
        return [(float(lp.sum()), greedy) for lp, greedy in self.scorer.score(windows)]

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        tok, max_len = self.tokenizer, self.scorer.max_length
        per_request = [rolling_windows(tok.encode(r.args[0]), tok.eos_id, max_len) for r in requests]
        scored = iter(self.scorer.score([w for windows in per_request for w in windows]))
        return [sum(float(next(scored)[0].sum()) for _ in windows) for windows in per_request]

    def generate_until(self, requests: list[Any]) -> list[str]:
        out = []
        for r in requests:
            context, kwargs = r.args
            until = kwargs.get("until") or [self.tokenizer.decode([self.tokenizer.eos_id])]
            until = [until] if isinstance(until, str) else list(until)
            out.append(self.scorer.greedy(context, until, int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))))
        return out
