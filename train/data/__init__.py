"""Data pipeline: text or token files → memory-mapped tokens → packed, resumable, shardable batches (mixtures too).

Typical use::

    data = prepare(DataConfig(corpus="default", tokenizer="bpe-8k", seq_len=256))
    sampler = data.sampler(batch_size=16)              # or data.get_batch("train", step, 16)
    x, y = sampler.batch_at(step)                      # LongTensors (16, 256); y = x shifted by one
    val = data.val_batches(batch_size=16, n_batches=8) # fixed windows

``python -m train.data --corpus default --tokenizer bpe-8k`` prepares the cache and prints a summary;
``python -m train.data tokenize DIR --out SHARDS --workers N`` tokenizes a large text directory into shards.

Modules: ``config`` (DataConfig, SourceConfig), ``corpus`` (text readers), ``cache`` (text token cache),
``formats`` (token files read in place: shards, nanoGPT, Megatron), ``split``, ``batches`` (windows, permutation,
mixture, sampler), ``prefetch``, ``prepare``, ``shards`` (parallel tokenization), ``stats``.
"""

from __future__ import annotations

from train.data.batches import BatchSampler, Interleave, Windows, n_windows, permute, val_windows
from train.data.cache import FORMAT_VERSION, load_doc_index
from train.data.config import DataConfig, SourceConfig
from train.data.corpus import CORPORA, Document, load_corpus, read_text_path
from train.data.prefetch import Prefetcher
from train.data.prepare import PreparedData, Source, prepare
from train.data.split import is_val_doc, split_documents
from train.data.stats import unigram_entropy

__all__ = [
    "BatchSampler",
    "CORPORA",
    "DataConfig",
    "Document",
    "FORMAT_VERSION",
    "Interleave",
    "PreparedData",
    "Prefetcher",
    "Source",
    "SourceConfig",
    "Windows",
    "is_val_doc",
    "load_corpus",
    "load_doc_index",
    "main",
    "n_windows",
    "permute",
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
