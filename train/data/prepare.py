"""``prepare(DataConfig)`` → :class:`PreparedData`: every source's train/val tokens as memory maps, and the samplers.

A source is a built-in corpus or a path. Text (a corpus, a text file or directory) is tokenized once into the
token cache (:mod:`train.data.cache`); token files are read where they are (:mod:`train.data.formats`) and split
without rewriting (:mod:`train.data.split`). Several sources (``data.sources``) form a weighted mixture; they must
share one vocabulary. With a corpus-trained BPE (``bpe-<N>``), the tokenizer is trained on the training split of all
text sources together and cached under their joint key.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from train.errors import DataError
from train.data.batches import BatchSampler, Windows, val_windows
from train.data.cache import (FORMAT_VERSION, build_cache, corpus_identity, manifest_matches, open_split,
                              read_manifest, safe_name, val_by_member)
from train.data.config import DataConfig, SourceConfig
from train.data.corpus import Document, load_corpus, read_text_path
from train.data.formats import TokenDataset, decoder_for, is_token_path, open_tokens
from train.data.prefetch import Prefetcher
from train.data.split import split_documents, stable_hash, tail_cut
from train.tokenizer import Tokenizer, bpe_path, bpe_vocab_size, load_tokenizer


@dataclass
class Source:
    """One prepared stream: its train/val token segments (memory maps or views of them) and its statistics
    (``stats``: the cache manifest for text, a description for token files; both have ``split`` and ``splits``)."""

    name: str
    weight: float
    train: list[np.ndarray]
    val: list[np.ndarray]
    stats: dict
    directory: Path | None = None  # the token cache of a text source

    def val_parts(self) -> dict[str, list[np.ndarray]]:
        """The validation segments to report separately: each member of a built-in corpus of several
        (``default/wiki``, …: :func:`~train.data.cache.val_by_member`), else the whole source under its name."""
        members = val_by_member(self.directory, self.stats, self.val[0]) if self.directory is not None else {}
        return {f"{self.name}/{m}": segments for m, segments in members.items()} or {self.name: self.val}


@dataclass
class PreparedData:
    """The sources of a run, their shared vocabulary, and the tokenizer that decodes them (``None`` if unknown)."""

    config: DataConfig
    tokenizer: Tokenizer | None
    sources: list[Source]
    vocab_size: int
    eos_id: int
    _samplers: dict = field(default_factory=dict, repr=False)

    def sampler(self, batch_size: int, rank: int = 0, world_size: int = 1, grad_accum: int = 1) -> BatchSampler:
        """A resumable sampler of training batches (micro-batch ``batch_size`` per rank) over all sources."""
        windows = [Windows(s.train, self.config.seq_len) for s in self.sources]
        return BatchSampler(windows, batch_size, self.config.seed, rank, world_size, grad_accum,
                            weights=[s.weight for s in self.sources], names=[s.name for s in self.sources],
                            vocab_size=self.vocab_size, repeat_token_at=self.config.repeat_token_at)

    def loader(self, batch_size: int, rank: int, world_size: int, grad_accum: int,
               device: torch.device) -> BatchSampler | Prefetcher:
        """What the training loop reads: the sampler, behind a background prefetcher when ``data.prefetch > 0``."""
        sampler = self.sampler(batch_size, rank, world_size, grad_accum)
        return Prefetcher(sampler, device, self.config.prefetch) if self.config.prefetch > 0 else sampler

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

    def val_batches_by_source(
        self, batch_size: int, n_batches: int, rank: int = 0, world_size: int = 1
    ) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
        """``n_batches`` fixed validation batches of each source, and of each member of a built-in corpus of several
        (the default corpus: ``default/pydoc``, ``default/shakespeare``, ``default/wiki``), for per-source losses. A
        corpus member whose validation text holds no window of ``seq_len + 1`` tokens is left out with a warning."""
        out = {}
        for source in self.sources:
            parts = source.val_parts()
            for name, segments in parts.items():
                windows = Windows(segments, self.config.seq_len)
                if windows.n < 1 and len(parts) > 1:
                    warnings.warn(f"validation text of {name} has no window of data.seq_len + 1 = "
                                  f"{self.config.seq_len + 1} tokens; not evaluated separately", stacklevel=2)
                    continue
                out[name] = val_windows(windows, batch_size, n_batches, rank, world_size, name)
        return out

    def val_batches(
        self, batch_size: int, n_batches: int, rank: int = 0, world_size: int = 1
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed set of validation batches (same for every call). For a mixture, each source contributes a number
        of batches proportional to its weight (at least one), so their mean loss is the mixture's."""
        shares = _apportion([s.weight for s in self.sources], n_batches)
        out = []
        for source, k in zip(self.sources, shares):
            out += val_windows(Windows(source.val, self.config.seq_len), batch_size, k, rank, world_size, source.name)
        return out


def _apportion(weights: list[float], total: int) -> list[int]:
    """``total`` split in proportion to ``weights`` by largest remainders, each part at least 1."""
    quotas = [w / sum(weights) * total for w in weights]
    parts = [max(1, int(q)) for q in quotas]
    for i in sorted(range(len(weights)), key=lambda i: int(quotas[i]) - quotas[i])[: max(0, total - sum(parts))]:
        parts[i] += 1
    return parts


# ------------------------------------------------------------------------------------------------ text sources


def _read_documents(source: SourceConfig, cfg: DataConfig, cache: Path) -> tuple[list[Document], dict]:
    if source.path is not None:
        docs, replaced = read_text_path(Path(source.path).expanduser(), cfg.doc_separator, cfg.decode_errors)
        return docs, {"path": {"n_docs": len(docs), "n_bytes": sum(len(d.text.encode()) for d in docs),
                               "replaced_chars": replaced}}
    by_source = load_corpus(source.corpus, cache)
    docs = [d for src in sorted(by_source) for d in by_source[src]]
    return docs, {s: {"n_docs": len(v), "n_bytes": sum(len(d.text.encode()) for d in v)} for s, v in by_source.items()}


def _cache_layout(cfg: DataConfig, entries: list[SourceConfig], cache: Path) -> tuple[str, list[Path], list[dict]]:
    """(tokenizer key, cache directory and identity of each text source). One text source keeps the historical layout
    ``tokens/<key>/<spec>``; a BPE trained on several is keyed by all of them (``<spec>.mix-<hash>``)."""
    keys = [corpus_identity(e, cfg.val_fraction, cfg.doc_separator, cfg.decode_errors) for e in entries]
    tok_key = keys[0][0] if len(entries) == 1 else "mix-" + stable_hash(*sorted(k for k, _ in keys))[:10]
    joint = len(entries) > 1 and bpe_vocab_size(cfg.tokenizer) is not None
    tag = f"{cfg.tokenizer}.{tok_key}" if joint else cfg.tokenizer
    dirs = [cache / "tokens" / key / safe_name(tag) for key, _ in keys]
    identities = [{"format_version": FORMAT_VERSION, "source": ident, "val_fraction": cfg.val_fraction,
                   "tokenizer": tag} for _, ident in keys]
    return tok_key, dirs, identities


def _text_sources(cfg: DataConfig, entries: list[SourceConfig], cache: Path, verify: bool) -> tuple[Tokenizer, list[Source]]:
    """Tokenize (once) and memory-map the text sources; one tokenizer for all of them."""
    tok_key, dirs, identities = _cache_layout(cfg, entries, cache)
    splits: dict[int, tuple] = {}

    def split_of(i: int) -> tuple:  # (train docs, val docs, manifest info), read only when needed
        if i not in splits:
            docs, counts = _read_documents(entries[i], cfg, cache)
            train, val, how = split_documents(docs, cfg.val_fraction)
            splits[i] = (train, val, {"sources": counts, "split": how})
        return splits[i]

    needs_docs = bpe_vocab_size(cfg.tokenizer) is not None and not bpe_path(cfg.tokenizer, cache, tok_key).is_file()
    tok = load_tokenizer(cfg.tokenizer, cache, [d.text for i in range(len(entries)) for d in split_of(i)[0]]
                         if needs_docs else None, tok_key)
    sources = []
    for i, (entry, directory) in enumerate(zip(entries, dirs)):
        manifest = read_manifest(directory)
        if not manifest_matches(manifest, identities[i]):
            train, val, info = split_of(i)
            manifest = build_cache(directory, identities[i], tok, {"train": train, "val": val}, info)
        elif (tok.vocab_size, tok.eos_id) != (manifest.get("vocab_size"), manifest.get("eos_id")):
            raise DataError(f"tokenizer {cfg.tokenizer} (vocab {tok.vocab_size}, eos {tok.eos_id}) does not match the "
                            f"token cache {directory / 'manifest.json'}; delete {directory} and re-run")
        arrays = {s: open_split(directory, manifest, s, verify) for s in ("train", "val")}
        sources.append(Source(entry.label, entry.weight, [arrays["train"]], [arrays["val"]], manifest, directory))
    return tok, sources


# ------------------------------------------------------------------------------------------------ token sources


def _token_source(entry: SourceConfig, cfg: DataConfig, cache: Path) -> tuple[Source, TokenDataset]:
    """Token files memory-mapped in place and split without rewriting (validation files, or each file's tail)."""
    ds = open_tokens(str(entry.path), cfg.tokenizer, cache)
    if ds.val_files:
        train, val = [f.tokens for f in ds.files], [f.tokens for f in ds.val_files]
        how = {"method": "files", "val_fraction": cfg.val_fraction}
    else:
        cuts = [tail_cut(f.tokens, cfg.val_fraction, f.doc_starts, ds.eos_id) for f in ds.files]
        train = [f.tokens[:c] for f, c in zip(ds.files, cuts)]
        val = [f.tokens[c:] for f, c in zip(ds.files, cuts)]
        how = {"method": "file tails", "val_fraction": cfg.val_fraction}
    stats = {"format": ds.kind, "path": ds.where, "n_files": len(ds.files) + len(ds.val_files),
             "vocab_size": ds.vocab_size, "eos_id": ds.eos_id, "tokenizer_name": ds.tokenizer, "split": how,
             "splits": {k: {"n_tokens": int(sum(len(a) for a in v))} for k, v in (("train", train), ("val", val))}}
    return Source(entry.label, entry.weight, train, val, stats), ds


def prepare(cfg: DataConfig, verify: bool = True) -> PreparedData:
    """Download, tokenize and cache text once, open token files in place; afterwards just memory-map.
    ``verify`` checks the sha256 of cached text splits (token files read in place are size-checked only)."""
    cfg.validate()
    cache = Path(cfg.cache_dir).expanduser()
    entries = cfg.source_list()
    text = [i for i, e in enumerate(entries) if e.corpus is not None or not is_token_path(str(e.path))]
    tokens = [i for i in range(len(entries)) if i not in text]
    tok, prepared = _text_sources(cfg, [entries[i] for i in text], cache, verify) if text else (None, [])
    by_index: dict[int, Source] = dict(zip(text, prepared))
    decoders: dict[int, Tokenizer | None] = dict.fromkeys(text, tok)
    for i in tokens:
        by_index[i], dataset = _token_source(entries[i], cfg, cache)
        decoders[i] = decoder_for(dataset, cache)
    sources = [by_index[i] for i in range(len(entries))]
    vocab, eos = _shared_vocabulary(sources)
    _same_tokenizer([s.name for s in sources], [decoders[i] for i in range(len(entries))])
    return PreparedData(cfg, tok if text else decoders[tokens[0]], sources, vocab, eos)


PROBE = "Tokenizers agree: In 1850, naïve café — 日本語 <|endoftext|>\n\n  x"


def _same_tokenizer(names: list[str], tokenizers: list[Tokenizer | None]) -> None:
    """Sources with the same vocabulary size can still come from different tokenizers (two BPEs trained on different
    text): wherever a source's tokenizer is known, it must encode a probe text exactly like the others."""
    known = [(n, t) for n, t in zip(names, tokenizers) if t is not None]
    for name, other in known[1:]:
        if other.encode(PROBE) != known[0][1].encode(PROBE):
            raise DataError(f"data.sources {known[0][0]!r} and {name!r} come from different tokenizers ({known[0][1].name} "
                            f"vs {other.name}: they encode the same text differently); a mixture needs one tokenizer")


def _shared_vocabulary(sources: list[Source]) -> tuple[int, int]:
    first = sources[0]
    for s in sources[1:]:
        for key in ("vocab_size", "eos_id"):
            if s.stats[key] != first.stats[key]:
                raise DataError(f"data.sources {first.name!r} and {s.name!r} have different {key} ({first.stats[key]} vs "
                                f"{s.stats[key]}); a mixture needs one tokenizer")
    return int(first.stats["vocab_size"]), int(first.stats["eos_id"])
