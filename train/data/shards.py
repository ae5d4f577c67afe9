"""``python -m train.data tokenize INPUT --out DIR``: a large text directory → token shards that training reads in place.

The input's text files (sorted; the reader rules of ``data.path``: ``*.txt/*.md/*.rst``, ``--doc-separator``) are
grouped in order into shards of about ``--shard-mb`` of text (a file is never split). ``--workers`` processes
tokenize one shard each at a time. Shard ``i`` is written as ``shard_{i:05d}.docs.npy`` (document starts),
``shard_{i:05d}.json`` (the sidecar of :mod:`train.data.formats`, with the shard's sha256) and finally
``shard_{i:05d}.bin`` (tokens, each document followed by EOS), each through a temporary name and a rename: a ``.bin``
exists only once its shard is complete. The plan is saved in ``DIR/tokenize.json``; re-running the same command
skips complete shards, so a killed run keeps its finished shards (usable at once with ``data.path = DIR``) and
resumes the rest. ``bpe-<N>`` trains the BPE first on up to ``--bpe-sample-mb`` of text from files spread over the
input (``DIR/tokenizer.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

from train.errors import DataError
from train.data.cache import ENCODE_CHUNK, dtype_for, write_json_atomic
from train.data.config import DECODE_ERRORS
from train.data.corpus import read_text_file, split_text, text_files
from train.data.split import stable_hash
from train.tokenizer import Tokenizer, bpe_vocab_size, load_tokenizer, train_bpe

PLAN_FILE = "tokenize.json"
_TOKENIZERS: dict[tuple[str, str], Tokenizer] = {}  # per worker process


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.data tokenize", description=__doc__.splitlines()[0])
    p.add_argument("input", help="a text file or a directory of *.txt/*.md/*.rst files (recursive)")
    p.add_argument("--out", required=True, help="output directory of shards (created; re-run to resume)")
    p.add_argument("--tokenizer", default="bpe-8k",
                   help="bpe-<N> (trained on a sample), qwen, gpt2 or a tokenizer.json path")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes (default: all cores)")
    p.add_argument("--shard-mb", type=float, default=256.0, help="text per shard in MB (default 256)")
    p.add_argument("--doc-separator", default=None, help="'blank' or a literal string splitting files into documents")
    p.add_argument("--decode-errors", default="strict", choices=DECODE_ERRORS, help="invalid UTF-8: stop (strict) or U+FFFD")
    p.add_argument("--bpe-sample-mb", type=float, default=64.0, help="text the BPE is trained on (bpe-<N> only)")
    p.add_argument("--cache-dir", default="data", help="where qwen/gpt2 archives are downloaded")
    args = p.parse_args(argv)
    if args.workers < 1 or args.shard_mb <= 0 or args.bpe_sample_mb <= 0:
        p.error("--workers, --shard-mb and --bpe-sample-mb must be positive")
    return args


# ------------------------------------------------------------------------------------------------ the plan


def make_plan(root: Path, args: argparse.Namespace) -> dict:
    """Everything that determines the output: files (name, size, mtime), their grouping, tokenizer, options."""
    files = text_files(root, "input")
    entries = [[str(p.relative_to(root)) if root.is_dir() else p.name, p.stat().st_size, p.stat().st_mtime_ns]
               for p in files]
    shards, start, size = [], 0, 0
    for i, (_, n, _) in enumerate(entries):
        size += n
        if size >= args.shard_mb * 1e6 or i == len(entries) - 1:
            shards.append([start, i + 1])
            start, size = i + 1, 0
    return {"version": 1, "input": str(root.resolve()), "files": entries, "shards": shards,
            "tokenizer": args.tokenizer, "doc_separator": args.doc_separator, "decode_errors": args.decode_errors,
            "bpe_sample_mb": args.bpe_sample_mb if bpe_vocab_size(args.tokenizer) is not None else None}


def _check_plan(out: Path, plan: dict) -> None:
    path = out / PLAN_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} is corrupt; delete {out} and re-run") from exc
        if old != plan:
            diff = next((k for k in plan if old.get(k) != plan[k]), "version")
            raise DataError(f"{out} holds shards of a different tokenize run ({diff} differs); use a new --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, plan)


def shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def is_complete(out: Path, i: int) -> bool:
    """A shard is complete iff its .bin (renamed last) exists with the size its sidecar states."""
    bin_path, side = out / f"{shard_name(i)}.bin", out / f"{shard_name(i)}.json"
    try:
        meta = json.loads(side.read_text())
        return bin_path.stat().st_size == int(meta["n_tokens"]) * np.dtype(meta["dtype"]).itemsize
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ------------------------------------------------------------------------------------------------ tokenizer


def _tokenizer_spec(root: Path, out: Path, plan: dict, args: argparse.Namespace) -> str:
    """The spec workers load: ``DIR/tokenizer.json`` for a BPE trained here (trained now if missing)."""
    if bpe_vocab_size(args.tokenizer) is None:
        return str(Path(args.tokenizer).resolve()) if Path(args.tokenizer).exists() else args.tokenizer
    path = out / "tokenizer.json"
    if not path.is_file():
        texts, budget = [], args.bpe_sample_mb * 1e6
        for name, size, _ in sorted(plan["files"], key=lambda e: stable_hash("bpe", e[0])):  # spread over the input
            if budget <= 0:
                break
            text, _ = read_text_file(root / name if root.is_dir() else root, args.decode_errors)
            texts += split_text(text, args.doc_separator)
            budget -= size
        print(f"tokenize: training {args.tokenizer} on {len(texts)} documents", file=sys.stderr, flush=True)
        train_bpe(texts, bpe_vocab_size(args.tokenizer), args.tokenizer).save(out)
    return str(path)


def _load(spec: str, cache_dir: str) -> Tokenizer:
    if (spec, cache_dir) not in _TOKENIZERS:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # parallelism comes from the worker processes
        _TOKENIZERS[spec, cache_dir] = load_tokenizer(spec, cache_dir)
    return _TOKENIZERS[spec, cache_dir]


# ------------------------------------------------------------------------------------------------ one shard


def _replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def tokenize_shard(task: tuple) -> dict:
    """Tokenize one shard's files into ``out`` (see the module docstring for the write order); returns its stats."""
    i, files, out, spec, cache_dir, separator, errors = task
    tok = _load(spec, cache_dir)
    dtype, name = dtype_for(tok.vocab_size), shard_name(i)
    tmp = {s: out / f"{name}{s}.tmp-{os.getpid()}" for s in (".bin", ".docs.npy", ".json")}
    starts, n_tokens, replaced, digest = [], 0, 0, hashlib.sha256()
    with open(tmp[".bin"], "wb") as f:
        for file in files:
            text, n_bad = read_text_file(Path(file), errors)
            replaced += n_bad
            docs = split_text(text, separator)
            for c in range(0, len(docs), ENCODE_CHUNK):
                for ids in tok.encode_batch(docs[c : c + ENCODE_CHUNK]):
                    starts.append(n_tokens)
                    block = np.asarray(ids + [tok.eos_id], dtype=dtype).tobytes()
                    f.write(block)
                    digest.update(block)
                    n_tokens += len(ids) + 1
    with open(tmp[".docs.npy"], "wb") as f:
        np.save(f, np.asarray(starts, dtype=np.int64))
    meta = {"dtype": dtype.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "n_tokens": n_tokens,
            "n_docs": len(starts), "tokenizer": "tokenizer.json" if Path(spec) == out / "tokenizer.json" else spec,
            "sha256": digest.hexdigest(), "replaced_chars": replaced,
            "text_bytes": sum(Path(p).stat().st_size for p in files)}
    tmp[".json"].write_text(json.dumps(meta, indent=1))
    for suffix in (".docs.npy", ".json", ".bin"):  # the .bin last: its presence marks the shard complete
        _replace(tmp[suffix], out / f"{name}{suffix}")
    return meta


# ------------------------------------------------------------------------------------------------ the run


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """``tokenize [12/40 shards] 1230.5/4100.0 MB 35.2 MB/s ETA 1m23s`` on stderr (in place on a terminal)."""

    def __init__(self, total_shards: int, total_bytes: int, done_shards: int, done_bytes: int) -> None:
        self.total_shards, self.total_bytes = total_shards, total_bytes
        self.shards, self.bytes, self.start_bytes, self.t0 = done_shards, done_bytes, done_bytes, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, text_bytes: int) -> None:
        self.shards, self.bytes = self.shards + 1, self.bytes + text_bytes
        rate = (self.bytes - self.start_bytes) / max(1e-9, time.perf_counter() - self.t0)
        eta = _eta((self.total_bytes - self.bytes) / rate) if rate > 0 else "?"
        line = (f"tokenize [{self.shards}/{self.total_shards} shards] {self.bytes / 1e6:.1f}/{self.total_bytes / 1e6:.1f} MB "
                f"{rate / 1e6:.1f} MB/s ETA {eta}")
        print(("\r" + line) if self.tty else line, end="" if self.tty and self.shards < self.total_shards else "\n",
              file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict:
    """Tokenize ``args.input`` into ``args.out``; returns totals over all shards (including earlier runs')."""
    root, out = Path(args.input).expanduser(), Path(args.out).expanduser()
    plan = make_plan(root, args)
    _check_plan(out, plan)
    for stale in out.glob("shard_*.tmp-*"):
        stale.unlink()
    spec = _tokenizer_spec(root, out, plan, args)
    paths = [str(root / e[0]) if root.is_dir() else str(root) for e in plan["files"]]
    todo = [i for i in range(len(plan["shards"])) if not is_complete(out, i)]
    sizes = [sum(e[1] for e in plan["files"][a:b]) for a, b in plan["shards"]]
    progress = Progress(len(sizes), sum(sizes), len(sizes) - len(todo), sum(sizes) - sum(sizes[i] for i in todo))
    tasks = [(i, paths[slice(*plan["shards"][i])], out, spec, args.cache_dir, args.doc_separator, args.decode_errors)
             for i in todo]
    if args.workers == 1 or len(tasks) <= 1:
        for task in tasks:
            progress.update(tokenize_shard(task)["text_bytes"])
    else:
        with multiprocessing.get_context("fork").Pool(min(args.workers, len(tasks))) as pool:
            for meta in pool.imap_unordered(tokenize_shard, tasks):
                progress.update(meta["text_bytes"])
    metas = [json.loads((out / f"{shard_name(i)}.json").read_text()) for i in range(len(sizes))]
    return {key: sum(m[key] for m in metas) for key in ("n_tokens", "n_docs", "replaced_chars", "text_bytes")} | {
        "shards": len(metas), "seconds": time.perf_counter() - progress.t0}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        totals = run(args)
    except DataError as exc:
        print(f"\nerror: {exc}" if sys.stderr.isatty() else f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {totals['shards']} shards, {totals['n_docs']:,} documents, {totals['n_tokens']:,} tokens from "
          f"{totals['text_bytes'] / 1e6:.1f} MB of text ({totals['replaced_chars']} characters replaced) in "
          f"{totals['seconds']:.1f} s; train on it with data.path = \"{args.out}\"")
    return 0
