"""Data pipeline: corpus → tokens (cached, memory-mapped) → packed, resumable, shardable batches.

Typical use::

    data = prepare(DataConfig(corpus="default", tokenizer="bpe-8k", seq_len=256))
    sampler = data.sampler(batch_size=16)              # or data.get_batch("train", step, 16)
    x, y = sampler.batch_at(step)                      # LongTensors (16, 256); y = x shifted by one
    val = data.val_batches(batch_size=16, n_batches=8) # fixed windows

``python -m train.data --corpus default --tokenizer bpe-8k`` prepares the cache and prints a summary.
"""

from __future__ import annotations

from train.data.batches import BatchSampler, n_windows, val_windows
from train.data.prepare import (
    FORMAT_VERSION,
    DataConfig,
    PreparedData,
    is_val_doc,
    load_doc_index,
    prepare,
    split_documents,
)
from train.data.sources import CORPORA, Document, load_corpus, read_text_path
from train.data.stats import unigram_entropy

__all__ = [
    "BatchSampler",
    "CORPORA",
    "DataConfig",
    "Document",
    "FORMAT_VERSION",
    "PreparedData",
    "is_val_doc",
    "load_corpus",
    "load_doc_index",
    "main",
    "n_windows",
    "prepare",
    "read_text_path",
    "split_documents",
    "unigram_entropy",
    "val_windows",
]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see ``train/data/__main__.py``)."""
    from train.data.__main__ import main as _main

    return _main(argv)
