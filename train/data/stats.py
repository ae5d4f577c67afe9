"""Corpus statistics used as training targets and in the data summary."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def unigram_entropy(tokens: np.ndarray | Sequence[np.ndarray], chunk: int = 1 << 24) -> float:
    """Entropy in nats of the empirical unigram distribution of ``tokens`` (one array or a list of segments): the
    loss of the best context-free predictor; a language model should get clearly below it."""
    segments = [tokens] if isinstance(tokens, np.ndarray) else list(tokens)
    total = sum(len(s) for s in segments)
    if total == 0:
        return 0.0
    counts = np.zeros(0, dtype=np.int64)
    for seg in segments:
        for i in range(0, len(seg), chunk):
            part = np.bincount(np.asarray(seg[i : i + chunk]).astype(np.int64, copy=False))
            if part.size > counts.size:
                counts = np.pad(counts, (0, part.size - counts.size))
            counts[: part.size] += part
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())
