"""User-supplied token files: ``.bin`` (raw uint16/uint32) or ``.npy``, each with a JSON sidecar.

Sidecar ``<name>.json`` (next to ``<name>.bin``/``<name>.npy``)::

    {"dtype": "uint16", "vocab_size": 8192, "eos_id": 0,
     "doc_offsets": [0, 812, ...],      # optional: start token of each document
     "tokenizer": "bpe-8k"}              # optional: how to decode (spec or tokenizer.json path)

Without ``doc_offsets`` the stream follows the EOS-separated convention (each document ends with ``eos_id``).
Documents are split into train/val like text corpora and written into the regular token cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from train.errors import DataError
from train.data.sources import path_fingerprint
from train.tokenizer import Tokenizer, load_tokenizer


def read_sidecar(path: Path) -> dict:
    """The sidecar JSON of a token file, validated."""
    side = path.with_suffix(".json")
    if not side.is_file():
        raise DataError(f"token file {path} needs a sidecar {side} with dtype, vocab_size and eos_id")
    try:
        meta = json.loads(side.read_text())
        meta["vocab_size"], meta["eos_id"] = int(meta["vocab_size"]), int(meta["eos_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"token sidecar {side} is unreadable or lacks vocab_size/eos_id ({type(exc).__name__})") from exc
    return meta


def read_tokens(path: Path, meta: dict) -> np.ndarray:
    """Load the token array (DataError naming the file when it is corrupt)."""
    if not path.is_file():
        raise DataError(f"data.path {path} does not exist")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            dtype = np.dtype(meta.get("dtype", "uint16"))
            if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
                raise ValueError(f"dtype {dtype} is not uint16/uint32")
            if path.stat().st_size % dtype.itemsize:
                raise ValueError(f"size is not a multiple of {dtype.itemsize} bytes")
            arr = np.fromfile(path, dtype=dtype)
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"token file {path} is corrupt: {str(exc).splitlines()[0][:120]}") from exc
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"token file {path} must hold a non-empty 1-D integer array")
    if int(arr.max()) >= meta["vocab_size"]:
        raise DataError(f"token file {path} has token id {int(arr.max())} >= vocab_size {meta['vocab_size']}")
    return np.asarray(arr)


def split_token_docs(tokens: np.ndarray, meta: dict) -> list[np.ndarray]:
    """Documents as token arrays, without their trailing EOS."""
    eos = meta["eos_id"]
    if "doc_offsets" in meta:
        bounds = [int(o) for o in meta["doc_offsets"]] + [len(tokens)]
        docs = [tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        docs = [d[:-1] if len(d) and d[-1] == eos else d for d in docs]
    else:
        cuts = np.flatnonzero(tokens == eos)
        starts = np.concatenate([[0], cuts + 1])
        ends = np.concatenate([cuts, [len(tokens)]])
        docs = [tokens[a:b] for a, b in zip(starts, ends)]
    return [d for d in docs if len(d)]


class _TokenDocs:
    """Adapter so pre-tokenized documents pass through the text pipeline's split and cache writer."""

    def __init__(self, tokens: list[np.ndarray], vocab_size: int, eos_id: int) -> None:
        self.docs, self.vocab_size, self.eos_id, self.name = tokens, vocab_size, eos_id, "pretokenized"

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.docs[int(t)].tolist() for t in texts]


def _decoder(meta: dict, cfg_tokenizer: str, cache: Path) -> Tokenizer | None:
    try:
        tok = load_tokenizer(meta.get("tokenizer", cfg_tokenizer), cache, None)
    except DataError:
        return None
    return tok if tok.vocab_size >= meta["vocab_size"] else None


def prepare_pretokenized(cfg, cache: Path, verify: bool):
    """Split a user token file by documents into the token cache and memory-map it."""
    from train.data.prepare import (FORMAT_VERSION, Document, PreparedData, _hash, _safe, build_cache,
                                    open_split, read_manifest, split_documents)

    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise DataError(f"data.path {path} does not exist")
    source = {"path": str(path.resolve()), "fingerprint": path_fingerprint(path)}
    identity = {"format_version": FORMAT_VERSION, "source": source, "val_fraction": cfg.val_fraction,
                "tokenizer": "pretokenized"}
    key = f"tok-{_safe(path.stem)}-{_hash(json.dumps(source, sort_keys=True), cfg.val_fraction)[:10]}"
    directory = cache / "tokens" / key / "pretokenized"
    meta = read_sidecar(path)
    manifest = read_manifest(directory)
    if manifest is None or any(manifest.get(k) != v for k, v in identity.items()):
        docs = split_token_docs(read_tokens(path, meta), meta)
        index = [Document(f"doc{i:08d}", str(i)) for i in range(len(docs))]
        train, val = split_documents(index, cfg.val_fraction, f"data.path {path}")
        adapter = _TokenDocs(docs, meta["vocab_size"], meta["eos_id"])
        manifest = build_cache(directory, identity, adapter, train, val, {"path": {"n_docs": len(docs)}})
    arrays = {s: open_split(directory, manifest, s, verify) for s in ("train", "val")}
    return PreparedData(cfg, _decoder(meta, cfg.tokenizer, cache), arrays["train"], arrays["val"], manifest, directory)
