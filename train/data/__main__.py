"""``python -m train.data``: prepare the data of a config (token cache / token files) and print a summary.

``python -m train.data tokenize INPUT --out DIR`` tokenizes a large text directory into shards in parallel
(:mod:`train.data.shards`).
"""

from __future__ import annotations

import argparse
import sys
import time

from hyperp.errors import HyperpError
from train.data.config import DECODE_ERRORS, DataConfig, SourceConfig
from train.data.corpus import CORPORA
from train.data.formats import verify_checksums
from train.data.prepare import PreparedData, Source, prepare
from train.data.split import describe
from train.data.stats import unigram_entropy

ENTROPY_MAX_TOKENS = 1 << 27  # the summary's unigram entropy reads every token: skipped above this


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.data", description=__doc__.splitlines()[0],
                                epilog="Subcommand: python -m train.data tokenize --help")
    p.add_argument("--corpus", default="default", help=" | ".join(CORPORA))
    p.add_argument("--path", default=None, help="own text file/dir, or token files: .bin/.npy shards (dir or glob), "
                   "a nanoGPT train.bin/val.bin dir, a Megatron .bin/.idx prefix")
    p.add_argument("--source", action="append", default=[], metavar="PATH_OR_CORPUS[:WEIGHT]",
                   help="a mixture source (repeatable): a path or corpus name with an optional weight")
    p.add_argument("--tokenizer", default="bpe-8k", help="bpe-8k | bpe-16k | bpe-<N> | qwen | gpt2 | path")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--cache-dir", default="data")
    p.add_argument("--doc-separator", default=None, help="'blank' or a literal string splitting text files")
    p.add_argument("--decode-errors", default="strict", choices=DECODE_ERRORS, help="invalid UTF-8: error or U+FFFD")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of a reused text cache")
    p.add_argument("--verify-shards", action="store_true", help="check token files against the sha256 in their sidecars")
    return p.parse_args(argv)


def _source(text: str) -> SourceConfig:
    name, sep, weight = text.rpartition(":")
    spec, w = (name, weight) if sep and weight.replace(".", "", 1).isdigit() else (text, "1")
    return SourceConfig(corpus=spec, weight=float(w)) if spec in CORPORA else SourceConfig(path=spec, weight=float(w))


def _source_lines(s: Source) -> list[str]:
    st = s.stats
    where = s.directory if s.directory is not None else f"{st['path']} ({st['format']}, {st['n_files']} files)"
    lines = [f"source     {s.name} (weight {s.weight:g}): {where}"]
    for name, info in st.get("sources", {}).items():
        replaced = f", {info['replaced_chars']} characters replaced" if info.get("replaced_chars") else ""
        lines.append(f"  text     {name:<12} {info['n_docs']:>7} docs {info.get('n_bytes', 0) / 1e6:8.2f} MB{replaced}")
    for split, info in st["splits"].items():
        docs = f"{info['n_docs']:>7} docs {info.get('n_bytes', 0) / 1e6:8.2f} MB " if "n_docs" in info else ""
        lines.append(f"  {split:<8} {docs}{info['n_tokens']:>13,} tokens")
    n_train, n_val = st["splits"]["train"]["n_tokens"], st["splits"]["val"]["n_tokens"]
    split = st.get("split") or {"method": "documents", "val_fraction": st["val_fraction"]}  # caches from before
    lines.append(f"  split    {describe(split, n_val / max(1, n_train + n_val))}")
    if 0 < n_train <= ENTROPY_MAX_TOKENS:
        lines.append(f"  unigram entropy (train) {unigram_entropy(s.train):.4f} nats")
    return lines


def summary(data: PreparedData, seconds: float) -> str:
    """Human-readable summary of prepared data: per source, its files, split and counts."""
    tok = data.tokenizer
    name = f"{tok.name}, " if tok is not None else ""
    lines = [f"tokenizer  {name}vocab {data.vocab_size}, eos {data.eos_id}"]
    for s in data.sources:
        lines += _source_lines(s)
    if tok is not None:
        lines.append(f"'Hello world' -> {tok.encode('Hello world')}")
    lines.append(f"time       {seconds:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tokenize"]:
        from train.data.shards import main as tokenize_main

        return tokenize_main(argv[1:])
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        cfg = DataConfig(corpus=args.corpus, path=args.path, tokenizer=args.tokenizer, seq_len=args.seq_len,
                         val_fraction=args.val_fraction, cache_dir=args.cache_dir, doc_separator=args.doc_separator,
                         decode_errors=args.decode_errors, sources=tuple(_source(s) for s in args.source))
        data = prepare(cfg, verify=not args.no_verify)
        if args.verify_shards:
            for s in cfg.source_list():
                if s.path is not None:
                    verify_checksums(s.path, cfg.tokenizer, cfg.cache_dir)
    except HyperpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(data, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
