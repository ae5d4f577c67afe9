"""Token files read in place (memory-mapped where they are, never copied): our shards, nanoGPT, Megatron-LM.

``data.path`` (or a source's ``path``) may name

- **shards**: a ``.bin`` (raw uint16/uint32) or ``.npy`` file, a directory of them, or a glob (``/data/web/*.bin``).
  Each ``<stem>.bin``/``<stem>.npy`` may have a sidecar ``<stem>.json`` — ``{"dtype": "uint16", "vocab_size": 8192,
  "eos_id": 0, "n_tokens": …, "tokenizer": …}`` (``python -m train.data tokenize`` writes them) — and a binary
  document index ``<stem>.docs.npy`` (int64 start token of each document). Without an index, documents end with
  ``eos_id``.
- **nanoGPT**: a directory holding ``train.bin`` and ``val.bin`` (raw uint16, GPT-2 ids): validation comes from
  ``val.bin``.
- **Megatron-LM indexed datasets**: ``<prefix>.bin`` + ``<prefix>.idx`` (pass the prefix, either file, or a directory
  of them). The ``.idx`` layout (``MMapIndexedDataset``, version 1), all little-endian: the 9-byte magic
  ``MMIDIDX\\0\\0``, u64 version, u8 dtype code (1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 6 f64, 7 f32, 8 u16), u64 sequence
  count S, u64 document count D, then int32[S] sequence lengths, int64[S] byte offsets of the sequences in ``.bin``,
  int64[D] document indices (the first sequence of each document, starting with 0 and ending with S).

Files without a sidecar take ``vocab_size``/``eos_id`` from ``data.tokenizer`` (``gpt2`` for nanoGPT's GPT-2 data,
``qwen``, or a ``tokenizer.json`` path). Start-up reads headers and sidecars only — no pass over the tokens; ids are
range-checked batch by batch instead (:class:`train.data.batches.BatchSampler`).
"""

from __future__ import annotations

import glob
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from train.errors import DataError
from train.data.cache import dtype_for
from train.downloads import sha256_file
from train.tokenizer import Tokenizer, bpe_vocab_size, load_tokenizer

MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count
MEGATRON_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
DOCS_SUFFIX = ".docs.npy"


@dataclass
class TokenFile:
    """One memory-mapped token array and where its documents start (``None``: documents end with EOS)."""

    path: Path
    tokens: np.ndarray
    doc_starts: Sequence[int] | None = None
    sha256: str | None = None  # from the sidecar, checked only on request (start-up must not read every token)


@dataclass
class TokenDataset:
    """What a token path resolves to. ``val_files`` is non-empty only when the format names its own validation data."""

    where: str
    kind: str  # "shards" | "nanogpt" | "megatron"
    files: list[TokenFile]
    vocab_size: int
    eos_id: int
    tokenizer: str | None  # how to decode: a sidecar's tokenizer or data.tokenizer
    val_files: list[TokenFile] = field(default_factory=list)


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_token_file(path: Path) -> bool:
    return path.suffix in (".bin", ".idx") or (path.suffix == ".npy" and not path.name.endswith(DOCS_SUFFIX))


def is_token_path(text: str) -> bool:
    """Whether ``data.path`` names token files (else it is text)."""
    path = Path(text).expanduser()
    if _has_glob(text) or _is_token_file(path) or Path(f"{path}.idx").is_file():
        return True
    return path.is_dir() and any(_is_token_file(p) for p in path.iterdir() if p.is_file())


# ------------------------------------------------------------------------------------------------- metadata


class _Meta:
    """vocab_size / eos_id / tokenizer of each file: its sidecar, else what ``data.tokenizer`` says (loaded once)."""

    def __init__(self, tokenizer_spec: str, cache_dir: Path) -> None:
        self.spec, self.cache_dir, self._fallback = tokenizer_spec, cache_dir, None

    def fallback(self, path: Path) -> dict:
        if self._fallback is None:
            if bpe_vocab_size(self.spec) is not None:
                raise DataError(f"token file {path} has no sidecar {path.with_suffix('.json').name}: write one with "
                                "vocab_size and eos_id, or set data.tokenizer to how the tokens were made (gpt2 for "
                                "nanoGPT data, qwen, or a tokenizer.json path)")
            tok = load_tokenizer(self.spec, self.cache_dir)
            self._fallback = {"vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "tokenizer": self.spec}
        return self._fallback

    def of(self, path: Path, sidecar: Path) -> dict:
        if not sidecar.is_file():
            return self.fallback(path)
        try:
            meta = json.loads(sidecar.read_text())
            meta["vocab_size"], meta["eos_id"] = int(meta["vocab_size"]), int(meta["eos_id"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"token sidecar {sidecar} is unreadable or lacks vocab_size/eos_id ({type(exc).__name__})") from exc
        tok = meta.get("tokenizer")
        if isinstance(tok, str) and (sidecar.parent / tok).exists():  # a tokenizer saved next to the shards
            meta["tokenizer"] = str(sidecar.parent / tok)
        return meta


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(f"token file {path} is corrupt: {why}")


# ------------------------------------------------------------------------------------------------- readers


def _raw_tokens(path: Path, dtype: np.dtype) -> np.ndarray:
    if dtype.kind not in "iu":
        raise _corrupt(path, f"dtype {dtype} is not an integer type")
    size = path.stat().st_size
    if size == 0 or size % dtype.itemsize:
        raise _corrupt(path, f"size {size} bytes is not a positive multiple of {dtype.itemsize} ({dtype})")
    return np.memmap(path, dtype=dtype, mode="r")


def _doc_starts(path: Path, meta: dict, n: int) -> Sequence[int] | None:
    index = path.with_name(path.name[: -len(path.suffix)] + DOCS_SUFFIX)
    if index.is_file():
        try:
            starts = np.load(index, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise _corrupt(index, str(exc).splitlines()[0][:120]) from exc
    elif "doc_offsets" in meta:  # the JSON list of earlier sidecars
        starts = np.asarray(meta["doc_offsets"], dtype=np.int64)
    else:
        return None
    if starts.ndim != 1 or starts.dtype.kind not in "iu" or (len(starts) and not 0 <= starts[-1] < n):
        raise _corrupt(index, f"document index must be sorted int64 starts below {n}")
    return starts


def read_shard(path: Path, meta: _Meta) -> tuple[TokenFile, dict]:
    """A ``.bin``/``.npy`` shard memory-mapped in place, with its metadata."""
    info = meta.of(path, path.with_suffix(".json"))
    try:
        if path.suffix == ".npy":
            tokens = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            tokens = _raw_tokens(path, np.dtype(info.get("dtype") or dtype_for(info["vocab_size"])))
    except (OSError, ValueError, TypeError) as exc:
        raise _corrupt(path, str(exc).splitlines()[0][:120]) from exc
    if tokens.ndim != 1 or tokens.size == 0 or tokens.dtype.kind not in "iu":
        raise _corrupt(path, "it must hold a non-empty 1-D integer array")
    if "n_tokens" in info and int(info["n_tokens"]) != tokens.size:
        raise _corrupt(path, f"{tokens.size} tokens, its sidecar says {info['n_tokens']} (truncated?)")
    return TokenFile(path, tokens, _doc_starts(path, info, tokens.size), info.get("sha256")), info


class MegatronDocStarts(Sequence):
    """Start token of each document of a Megatron dataset, read lazily from the memory-mapped ``.idx``."""

    def __init__(self, pointers: np.ndarray, doc_index: np.ndarray, itemsize: int) -> None:
        self.pointers, self.doc_index, self.itemsize = pointers, doc_index, itemsize

    def __len__(self) -> int:
        return max(0, len(self.doc_index) - 1)

    def __getitem__(self, d):  # noqa: ANN001 - Sequence protocol (int only)
        if not 0 <= d < len(self):
            raise IndexError(d)
        return int(self.pointers[int(self.doc_index[d])]) // self.itemsize


def read_megatron(prefix: Path, meta: _Meta) -> tuple[TokenFile, dict]:
    """``<prefix>.bin`` memory-mapped with the document starts of ``<prefix>.idx`` (layout in the module docstring)."""
    idx, bin_path = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    try:
        with open(idx, "rb") as f:
            magic, version, code, n_seq, n_doc = MEGATRON_HEADER.unpack(f.read(MEGATRON_HEADER.size))
    except (OSError, struct.error) as exc:
        raise _corrupt(idx, f"cannot read its header ({type(exc).__name__})") from exc
    if magic != MEGATRON_MAGIC or version != 1:
        raise _corrupt(idx, f"not a Megatron MMIDIDX version-1 index (magic {magic!r}, version {version})")
    if code not in MEGATRON_DTYPES:
        raise _corrupt(idx, f"dtype code {code} is not an integer token type")
    dtype = np.dtype(MEGATRON_DTYPES[code])
    end = MEGATRON_HEADER.size + 12 * n_seq + 8 * n_doc
    if n_seq == 0 or idx.stat().st_size < end:
        raise _corrupt(idx, f"{idx.stat().st_size} bytes, expected at least {end} for {n_seq} sequences")
    lengths = np.memmap(idx, np.int32, "r", MEGATRON_HEADER.size, (n_seq,))
    pointers = np.memmap(idx, np.int64, "r", MEGATRON_HEADER.size + 4 * n_seq, (n_seq,))
    doc_index = np.memmap(idx, np.int64, "r", MEGATRON_HEADER.size + 12 * n_seq, (n_doc,))
    if not bin_path.is_file():
        raise DataError(f"Megatron index {idx} has no data file {bin_path}")
    n_tokens = int(pointers[-1]) // dtype.itemsize + int(lengths[-1])  # sequences are contiguous
    if bin_path.stat().st_size != n_tokens * dtype.itemsize:
        raise _corrupt(bin_path, f"{bin_path.stat().st_size} bytes, its index says {n_tokens * dtype.itemsize}")
    tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(n_tokens,))
    info = meta.of(bin_path, Path(f"{prefix}.json"))
    return TokenFile(bin_path, tokens, MegatronDocStarts(pointers, doc_index, dtype.itemsize)), info


def _is_megatron(path: Path) -> bool:
    idx = path.with_suffix(".idx") if path.suffix in (".bin", ".idx") else Path(f"{path}.idx")
    try:
        with open(idx, "rb") as f:
            return f.read(len(MEGATRON_MAGIC)) == MEGATRON_MAGIC
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------- datasets


def _listing(text: str) -> list[Path]:
    path = Path(text).expanduser()
    if _has_glob(text):
        files = [Path(p) for p in sorted(glob.glob(str(path)))]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
    else:
        files = [path]
    prefixes = {p.with_suffix("") for p in files if p.suffix == ".idx"}
    out = [p for p in files if _is_token_file(p) and p.suffix != ".idx" and p.with_suffix("") not in prefixes]
    out += sorted(prefixes)  # Megatron datasets are listed by their prefix
    if not out and Path(f"{path}.idx").is_file():
        out = [path]
    if not out:
        raise DataError(f"data.path {text} matches no token files (.bin, .npy or a Megatron .bin/.idx pair)")
    return sorted(out)


def _open(path: Path, meta: _Meta) -> tuple[TokenFile, dict]:
    if not path.exists() and not Path(f"{path}.idx").exists():
        raise DataError(f"data.path {path} does not exist")
    if _is_megatron(path):
        return read_megatron(path.with_suffix("") if path.suffix in (".bin", ".idx") else path, meta)
    return read_shard(path, meta)


def _common(infos: list[dict], files: list[TokenFile], key: str) -> int:
    """The value of ``key`` shared by every file; DataError naming the first file that disagrees."""
    first = int(infos[0][key])
    for file, info in zip(files, infos):
        if int(info[key]) != first:
            raise DataError(f"token files disagree on {key}: {files[0].path} has {first}, {file.path} has {info[key]}")
    return first


def open_tokens(text: str, tokenizer_spec: str, cache_dir: Path) -> TokenDataset:
    """Resolve a token path (formats in the module docstring) to memory-mapped files; reads no tokens."""
    path, meta = Path(text).expanduser(), _Meta(tokenizer_spec, cache_dir)
    train_bin, val_bin = path / "train.bin", path / "val.bin"
    nanogpt = path.is_dir() and train_bin.is_file() and val_bin.is_file() and not _is_megatron(train_bin)
    opened = [_open(p, meta) for p in ([train_bin] if nanogpt else _listing(text))]
    val = [_open(val_bin, meta)] if nanogpt else []
    files, infos = [f for f, _ in opened + val], [i for _, i in opened + val]
    megatron = any(isinstance(f.doc_starts, MegatronDocStarts) for f in files)
    kind = "nanogpt" if nanogpt else "megatron" if megatron else "shards"
    tokenizer = next((i["tokenizer"] for i in infos if isinstance(i.get("tokenizer"), str)), None)
    if tokenizer is None and bpe_vocab_size(tokenizer_spec) is None:
        tokenizer = tokenizer_spec  # sidecars without a tokenizer: data.tokenizer, when it names one that exists
    return TokenDataset(text, kind, files[: len(opened)], _common(infos, files, "vocab_size"),
                        _common(infos, files, "eos_id"), tokenizer, files[len(opened):])


def decoder_for(dataset: TokenDataset, cache_dir: Path) -> Tokenizer | None:
    """The tokenizer that decodes this dataset's ids, or ``None`` when it is unknown or does not fit the vocabulary."""
    if dataset.tokenizer is None:
        return None
    try:
        tok = load_tokenizer(dataset.tokenizer, cache_dir)
    except DataError:
        return None
    return tok if tok.vocab_size >= dataset.vocab_size else None


def verify_checksums(text: str, tokenizer_spec: str, cache_dir: str | Path) -> int:
    """Hash every token file of ``text`` whose sidecar records a sha256; DataError on the first mismatch. Returns
    how many files were checked (reads every byte: the explicit check ``python -m train.data --verify-shards``)."""
    dataset = open_tokens(text, tokenizer_spec, Path(cache_dir))
    checked = [f for f in dataset.files + dataset.val_files if f.sha256 is not None]
    for f in checked:
        if sha256_file(f.path) != f.sha256:
            raise DataError(f"token file {f.path} fails the sha256 check recorded in its sidecar (corrupt or modified)")
    return len(checked)
