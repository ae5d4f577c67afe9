"""The token cache of a text corpus: tokenize once → ``train.bin``/``val.bin`` + ``docs.json`` + ``manifest.json``.

Layout under ``cache_dir``: ``raw/`` (downloads), ``tokenizers/<spec>-<corpus_key>/tokenizer.json``,
``tokens/<corpus_key>/<tokenizer>/{train.bin,val.bin,docs.json,manifest.json}``. Each split is the concatenation
of its documents, each followed by the end-of-text token (the nanoGPT ``train.bin``/``val.bin`` layout). The manifest
is written last, so an interrupted prep leaves no manifest and is rebuilt; a manifest whose files do not match is a
DataError. Text caches are small (large text goes through ``python -m train.data tokenize`` into shards read in
place), so ``docs.json`` keeps the document ids alongside their offsets.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from train.errors import DataError
from train.data.config import SourceConfig
from train.data.corpus import CORPORA, Document, path_fingerprint
from train.data.split import honours, stable_hash
from train.downloads import sha256_file
from train.tokenizer import Tokenizer

FORMAT_VERSION = 1  # part of every cache key: bump only when the cache layout changes (it re-tokenizes everything)
ENCODE_CHUNK = 256  # documents per encode_batch call


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def corpus_identity(source: SourceConfig, val_fraction: float, doc_separator: str | None,
                    decode_errors: str) -> tuple[str, dict]:
    """(corpus_key, source identity): everything about the text that determines a token cache's content."""
    if source.path is not None:
        path = Path(source.path).expanduser()
        if not path.exists():
            raise DataError(f"data.path {path} does not exist")
        ident = {"path": str(path.resolve()), "fingerprint": path_fingerprint(path), "doc_separator": doc_separator,
                 "decode_errors": decode_errors}
        name = "path-" + safe_name(path.stem or "root")
    else:
        ident, name = {"corpus": source.corpus, "members": list(CORPORA[source.corpus])}, source.corpus
    key = f"{name}-{stable_hash(FORMAT_VERSION, json.dumps(ident, sort_keys=True), val_fraction)[:10]}"
    return key, ident


def manifest_matches(manifest: dict | None, identity: dict) -> bool:
    """Whether a cache was built from exactly this identity with today's split rule. Caches from before the split
    rule recorded itself hold whole documents split by hash; they are what the rule gives iff that split honoured
    val_fraction (:func:`train.data.split.split_documents`), checked from the byte counts they recorded."""
    if manifest is None or any(manifest.get(k) != v for k, v in identity.items()):
        return False
    if "split" in manifest:
        return True
    try:
        val, train = manifest["splits"]["val"]["n_bytes"], manifest["splits"]["train"]["n_bytes"]
        return honours(val / (val + train), identity["val_fraction"])
    except (KeyError, TypeError, ZeroDivisionError):
        return False


def _write_split(path: Path, token_lists: list[list[int]], eos_id: int, dtype: np.dtype) -> int:
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


def build_cache(directory: Path, identity: dict, tok: Tokenizer, splits_docs: dict[str, list[Document]],
                info: dict) -> dict:
    """Tokenize both splits into ``directory`` and write the manifest (``identity`` + ``info`` + counts) last."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").unlink(missing_ok=True)
    dtype = dtype_for(tok.vocab_size)
    splits, index = {}, {}
    for name, docs in splits_docs.items():
        lists = _encode_docs(tok, docs)
        n = _write_split(directory / f"{name}.bin", lists, tok.eos_id, dtype)
        index[name] = _doc_index([d.id for d in docs], lists)
        splits[name] = {"file": f"{name}.bin", "n_tokens": n, "n_docs": len(docs),
                        "n_bytes": sum(len(d.text.encode()) for d in docs),
                        "sha256": sha256_file(directory / f"{name}.bin")}
    write_json_atomic(directory / "docs.json", index)
    manifest = {**identity, **info, "tokenizer_name": tok.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                "dtype": dtype.name, "splits": splits, "n_tokens": sum(s["n_tokens"] for s in splits.values()),
                "n_docs": sum(s["n_docs"] for s in splits.values()),
                "docs_sha256": sha256_file(directory / "docs.json")}
    write_json_atomic(directory / "manifest.json", manifest)
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
    if verify and "sha256" in info and sha256_file(path) != info["sha256"]:
        raise DataError(f"token cache file {path} fails its sha256 check; {hint}")
    if n == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


def val_by_member(directory: Path, manifest: dict, val: np.ndarray) -> dict[str, list[np.ndarray]]:
    """The validation tokens of each member of a built-in corpus cached as one (the default corpus: pydoc,
    shakespeare, wiki), found through the document index (ids are ``<member>/<name>``): each run of consecutive
    documents of one member, each with its trailing EOS, is one segment (documents are stored sorted by member, so
    there is one run per member). ``{}`` for a cache of one member or of the user's text — nothing to split."""
    if len(manifest.get("source", {}).get("members", ())) < 2:
        return {}
    runs: list[list] = []  # [member, start, end)
    for doc_id, start, n in load_doc_index(directory)["val"]:
        member = doc_id.split("/", 1)[0]
        if runs and runs[-1][0] == member and runs[-1][2] == start:
            runs[-1][2] = start + n + 1
        else:
            runs.append([member, start, start + n + 1])
    out: dict[str, list[np.ndarray]] = {}
    for member, start, end in runs:
        out.setdefault(member, []).append(val[start:end])
    return out


def load_doc_index(directory: Path) -> dict[str, list[list]]:
    """``{"train"|"val": [[doc_id, start_token, n_tokens], ...]}`` of a text cache."""
    path = directory / "docs.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"document index {path} is missing or corrupt; delete {directory} and re-run") from exc
