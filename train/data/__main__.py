"""``python -m train.data``: prepare a token cache and print a summary."""

from __future__ import annotations

import argparse
import sys
import time

from hyperp.errors import HyperpError
from train.data.prepare import DataConfig, prepare
from train.data.stats import unigram_entropy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.data", description=__doc__)
    p.add_argument("--corpus", default="default", help="default | wiki | shakespeare | pydoc")
    p.add_argument("--path", default=None, help="own text file/dir or token file (.bin/.npy + .json sidecar)")
    p.add_argument("--tokenizer", default="bpe-8k", help="bpe-8k | bpe-16k | bpe-<N> | qwen | gpt2 | path")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--cache-dir", default="data")
    p.add_argument("--doc-separator", default=None, help="'blank' or a literal string splitting text files")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of a reused cache")
    return p.parse_args(argv)


def summary(data, seconds: float) -> str:
    """Human-readable summary of a prepared dataset."""
    m = data.manifest
    lines = [f"cache      {data.directory}", f"tokenizer  {m['tokenizer']} ({m['tokenizer_name']}, vocab {m['vocab_size']}, eos {m['eos_id']}, {m['dtype']})"]
    for name, src in m["sources"].items():
        mb = src.get("n_bytes", 0) / 1e6
        lines.append(f"source     {name:<12} {src['n_docs']:>7} docs {mb:8.2f} MB")
    for split, s in m["splits"].items():
        lines.append(f"{split:<10} {s['n_docs']:>7} docs {s.get('n_bytes', 0) / 1e6:8.2f} MB {s['n_tokens']:>11,} tokens")
    if len(data.train):
        lines.append(f"unigram entropy (train) {unigram_entropy(data.train):.4f} nats")
    if data.tokenizer is not None:
        lines.append(f"'Hello world' -> {data.tokenizer.encode('Hello world')}")
    lines.append(f"time       {seconds:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        cfg = DataConfig(corpus=args.corpus, path=args.path, tokenizer=args.tokenizer, seq_len=args.seq_len,
                         val_fraction=args.val_fraction, cache_dir=args.cache_dir, doc_separator=args.doc_separator)
        data = prepare(cfg, verify=not args.no_verify)
    except HyperpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(data, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
