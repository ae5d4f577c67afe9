"""Corpus statistics used as training targets."""

from __future__ import annotations

import numpy as np


def unigram_entropy(tokens: np.ndarray, chunk: int = 1 << 24) -> float:
    """Entropy in nats of the empirical unigram distribution of ``tokens`` (the loss of the best
    context-free predictor; a language model should get clearly below it)."""
    tokens = np.asarray(tokens) if not isinstance(tokens, np.ndarray) else tokens
    if tokens.size == 0:
        return 0.0
    counts = np.zeros(int(tokens.max()) + 1, dtype=np.int64)
    for i in range(0, tokens.size, chunk):
        part = np.asarray(tokens[i : i + chunk]).astype(np.int64, copy=False)
        counts += np.bincount(part, minlength=counts.size)
    p = counts[counts > 0] / tokens.size
    return float(-(p * np.log(p)).sum())
