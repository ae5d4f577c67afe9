"""Data config, token cache (tokenize once → memory-mapped ``train.bin``/``val.bin`` + manifest), PreparedData.

Cache layout under ``cache_dir``: ``raw/`` (downloads), ``tokenizers/<spec>-<corpus_key>/tokenizer.json``,
``tokens/<corpus_key>/<tokenizer>/{train.bin,val.bin,docs.json,manifest.json}``. Each split is the
concatenation of its documents, each followed by the end-of-text token. The manifest is written last, so an
interrupted prep leaves no manifest and is rebuilt; a manifest whose files do not match is a DataError.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hyperp.errors import ConfigError
from train.errors import DataError
from train.data.batches import BatchSampler, val_windows
from train.data.sources import CORPORA, Document, load_corpus, path_fingerprint, read_text_path
from train.tokenizer import Tokenizer, load_tokenizer

FORMAT_VERSION = 1
TOKEN_SUFFIXES = (".bin", ".npy")
ENCODE_CHUNK = 256  # documents per encode_batch call


@dataclass
class DataConfig:
    """Where the text comes from, how it is tokenized and cut into training windows.

    ``path`` overrides ``corpus``; relative ``path``/``cache_dir`` resolve against the working directory.
    ``doc_separator`` splits text files into documents (``"blank"`` = blank lines, else a literal string).
    """

    corpus: str = "default"
    path: str | None = None
    tokenizer: str = "bpe-8k"
    seq_len: int = 256
    val_fraction: float = 0.01
    cache_dir: str = "data"
    seed: int = 0
    doc_separator: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if self.path is None and self.corpus not in CORPORA:
            raise ConfigError(f"data.corpus must be one of {', '.join(CORPORA)}, got {self.corpus!r}")
        if self.path is not None and (not isinstance(self.path, str) or not self.path):
            raise ConfigError("data.path must be a non-empty string or unset")
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise ConfigError("data.tokenizer must be a non-empty string (bpe-8k, bpe-16k, qwen, gpt2, or a path)")
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise ConfigError(f"data.seq_len must be a positive integer, got {self.seq_len!r}")
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)):
            raise ConfigError(f"data.val_fraction must be a number, got {self.val_fraction!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if not isinstance(self.cache_dir, str) or not self.cache_dir:
            raise ConfigError("data.cache_dir must be a non-empty string")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"data.seed must be a non-negative integer, got {self.seed!r}")
        if self.doc_separator is not None and (not isinstance(self.doc_separator, str) or not self.doc_separator):
            raise ConfigError("data.doc_separator must be a non-empty string ('blank' = blank lines) or unset")


@dataclass
class PreparedData:
    """Token memmaps of both splits, their manifest, and the tokenizer (``None`` for foreign token files)."""

    config: DataConfig
    tokenizer: Tokenizer | None
    train: np.ndarray
    val: np.ndarray
    manifest: dict
    directory: Path
    _samplers: dict = field(default_factory=dict, repr=False)

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.manifest["eos_id"])

    def sampler(self, batch_size: int, rank: int = 0, world_size: int = 1, grad_accum: int = 1) -> BatchSampler:
        """A resumable sampler of training batches (micro-batch ``batch_size`` per rank)."""
        return BatchSampler(self.train, self.config.seq_len, batch_size, self.config.seed, rank, world_size, grad_accum)

    def get_batch(
        self, split: str, step: int, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training batch of ``step`` (pure function of seed and step), or the ``step``-th fixed val batch."""
        if split == "train":
            key = (batch_size, rank, world_size)
            if key not in self._samplers:
                self._samplers[key] = self.sampler(batch_size, rank, world_size)
            return self._samplers[key].batch_at(step)
        if split == "val":
            batches = self.val_batches(batch_size, step + 1, rank, world_size)
            return batches[step % len(batches)]
        raise DataError(f"unknown split {split!r} (use 'train' or 'val')")

    def val_batches(
        self, batch_size: int, n_batches: int, rank: int = 0, world_size: int = 1
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed set of validation windows spread evenly over the val split (same for every call)."""
        return val_windows(self.val, self.config.seq_len, batch_size, n_batches, rank, world_size)


# ------------------------------------------------------------------------------------------------ helpers


def _hash(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_val_doc(doc_id: str, val_fraction: float) -> bool:
    """Deterministic split by document: a doc is held out when the hash of its id falls below val_fraction."""
    return int(_hash("val", doc_id)[:15], 16) / 16**15 < val_fraction


def split_documents(docs: list[Document], val_fraction: float, where: str) -> tuple[list[Document], list[Document]]:
    """Split whole documents into (train, val); at least one of each."""
    if len(docs) < 2:
        raise DataError(f"{where} yields {len(docs)} document(s); a train/val split needs at least 2 (set data.doc_separator)")
    flags = [is_val_doc(d.id, val_fraction) for d in docs]
    if not any(flags):
        flags[min(range(len(docs)), key=lambda i: _hash("val", docs[i].id))] = True
    if all(flags):
        flags[0] = False
    return [d for d, f in zip(docs, flags) if not f], [d for d, f in zip(docs, flags) if f]


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def _write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------------- token cache


def write_split(path: Path, token_lists: list[list[int]], eos_id: int, dtype: np.dtype) -> int:
    """Write documents (each followed by EOS) into ``path`` atomically; return the token count."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    n = 0
    with open(tmp, "wb") as f:
        for ids in token_lists:
            arr = np.asarray(list(ids) + [eos_id], dtype=dtype)
            f.write(arr.tobytes())
            n += arr.size
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def _encode_docs(tok: Tokenizer, docs: list[Document]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(docs), ENCODE_CHUNK):
        out.extend(tok.encode_batch([d.text for d in docs[i : i + ENCODE_CHUNK]]))
    return out


def _doc_index(ids: list[str], token_lists: list[list[int]]) -> list[list]:
    index, start = [], 0
    for doc_id, toks in zip(ids, token_lists):
        index.append([doc_id, start, len(toks)])
        start += len(toks) + 1
    return index


def build_cache(
    directory: Path, identity: dict, tok: Tokenizer, train: list[Document], val: list[Document], sources: dict
) -> dict:
    """Tokenize both splits into ``directory`` and write the manifest last."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").unlink(missing_ok=True)
    dtype = _dtype_for(tok.vocab_size)
    splits, index = {}, {}
    for name, docs in (("train", train), ("val", val)):
        lists = _encode_docs(tok, docs)
        n = write_split(directory / f"{name}.bin", lists, tok.eos_id, dtype)
        index[name] = _doc_index([d.id for d in docs], lists)
        splits[name] = {"file": f"{name}.bin", "n_tokens": n, "n_docs": len(docs),
                        "n_bytes": sum(len(d.text.encode()) for d in docs),
                        "sha256": _sha256_file(directory / f"{name}.bin")}
    _write_json_atomic(directory / "docs.json", index)
    manifest = {**identity, "tokenizer_name": tok.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                "dtype": dtype.name, "sources": sources, "splits": splits,
                "n_tokens": sum(s["n_tokens"] for s in splits.values()), "n_docs": len(train) + len(val),
                "docs_sha256": _sha256_file(directory / "docs.json")}
    _write_json_atomic(directory / "manifest.json", manifest)
    return manifest


def read_manifest(directory: Path) -> dict | None:
    """The cached manifest, ``None`` if absent; DataError if unreadable."""
    path = directory / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or "splits" not in manifest:
            raise ValueError("not a manifest")
        return manifest
    except (OSError, ValueError) as exc:
        raise DataError(f"token cache manifest {path} is corrupt ({type(exc).__name__}); delete {directory} and re-run") from exc


def open_split(directory: Path, manifest: dict, split: str, verify: bool) -> np.ndarray:
    """Memory-map one split after checking its size (and sha256 when ``verify``) against the manifest."""
    try:
        info = manifest["splits"][split]
        dtype, n = np.dtype(manifest["dtype"]), int(info["n_tokens"])
        path = directory / info["file"]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"token cache manifest {directory / 'manifest.json'} lacks split {split!r}; delete {directory} and re-run") from exc
    hint = f"delete {directory} and re-run"
    if not path.is_file():
        raise DataError(f"token cache file {path} is missing; {hint}")
    size = path.stat().st_size
    if size != n * dtype.itemsize:
        raise DataError(f"token cache file {path} is truncated or corrupt ({size} bytes, expected {n * dtype.itemsize}); {hint}")
    if verify and "sha256" in info and _sha256_file(path) != info["sha256"]:
        raise DataError(f"token cache file {path} fails its sha256 check; {hint}")
    if n == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


# ---------------------------------------------------------------------------------------------- prepare


def corpus_identity(cfg: DataConfig) -> tuple[str, dict]:
    """(corpus_key, identity dict) — everything that determines the token cache's content."""
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise DataError(f"data.path {path} does not exist")
        source = {"path": str(path.resolve()), "fingerprint": path_fingerprint(path), "doc_separator": cfg.doc_separator}
        name = "path-" + _safe(path.stem or "root")
    else:
        source, name = {"corpus": cfg.corpus, "members": list(CORPORA[cfg.corpus])}, cfg.corpus
    identity = {"format_version": FORMAT_VERSION, "source": source, "val_fraction": cfg.val_fraction,
                "tokenizer": cfg.tokenizer}
    key = f"{name}-{_hash(FORMAT_VERSION, json.dumps(source, sort_keys=True), cfg.val_fraction)[:10]}"
    return key, identity


def _load_documents(cfg: DataConfig, cache: Path) -> tuple[list[Document], dict]:
    if cfg.path is not None:
        docs = read_text_path(Path(cfg.path).expanduser(), cfg.doc_separator)
        return docs, {"path": {"n_docs": len(docs), "n_bytes": sum(len(d.text.encode()) for d in docs)}}
    by_source = load_corpus(cfg.corpus, cache)
    docs = [d for src in sorted(by_source) for d in by_source[src]]
    info = {s: {"n_docs": len(v), "n_bytes": sum(len(d.text.encode()) for d in v)} for s, v in by_source.items()}
    return docs, info


def prepare(cfg: DataConfig, verify: bool = True) -> PreparedData:
    """Download, tokenize and cache the configured data once; afterwards just memory-map the cache."""
    cfg.validate()
    cache = Path(cfg.cache_dir).expanduser()
    if cfg.path is not None and Path(cfg.path).suffix in TOKEN_SUFFIXES:
        from train.data.pretokenized import prepare_pretokenized

        return prepare_pretokenized(cfg, cache, verify)
    key, identity = corpus_identity(cfg)
    directory = cache / "tokens" / key / _safe(cfg.tokenizer)
    manifest = read_manifest(directory)
    if manifest is not None and all(manifest.get(k) == v for k, v in identity.items()):
        tok = load_tokenizer(cfg.tokenizer, cache, None, key)
        if (tok.vocab_size, tok.eos_id) != (manifest.get("vocab_size"), manifest.get("eos_id")):
            raise DataError(f"tokenizer {cfg.tokenizer} (vocab {tok.vocab_size}, eos {tok.eos_id}) does not match the "
                            f"token cache {directory / 'manifest.json'}; delete {directory} and re-run")
    else:
        docs, sources = _load_documents(cfg, cache)
        train, val = split_documents(docs, cfg.val_fraction, f"data.path {cfg.path}" if cfg.path else f"corpus {cfg.corpus}")
        tok = load_tokenizer(cfg.tokenizer, cache, [d.text for d in train], key)
        manifest = build_cache(directory, identity, tok, train, val, sources)
    arrays = {s: open_split(directory, manifest, s, verify) for s in ("train", "val")}
    return PreparedData(cfg, tok, arrays["train"], arrays["val"], manifest, directory)


def load_doc_index(data: PreparedData) -> dict[str, list[list]]:
    """``{"train"|"val": [[doc_id, start_token, n_tokens], ...]}`` for a prepared cache."""
    path = data.directory / "docs.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"document index {path} is missing or corrupt; delete {data.directory} and re-run") from exc


def config_dict(cfg: DataConfig) -> dict:
    """The config as a plain dict (for logs and checkpoints)."""
    return asdict(cfg)
