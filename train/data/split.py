"""Train/validation splits that honour ``data.val_fraction``, for text documents and for token files read in place.

Text: whole documents are held out by the hash of their id (deterministic, independent of order) when that gives
a validation share within ``SPLIT_TOLERANCE`` of ``val_fraction`` — true for corpora of many small documents
(the default corpus: 0.90 % of bytes for 1 %). Otherwise documents are taken in hash order until the share is
reached, if whole documents can get within the tolerance at all. A few large documents cannot (5 files gave 22 %),
so then the last ``val_fraction`` of *every* document is held out instead, cut at a line boundary.

Token files: the tail of each file from the document boundary nearest to ``(1 - val_fraction) · n`` (within a
quarter of the target either way, else exactly there) is validation. Nothing is rewritten: both splits are views
of the same memory map.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence

import numpy as np

from train.data.corpus import Document

SPLIT_TOLERANCE = 0.25  # relative: a realised validation share within ±25 % of val_fraction honours it
MAX_EOS_SCAN = 1 << 20  # tokens read on each side of the target when a file has no document index


def stable_hash(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def is_val_doc(doc_id: str, val_fraction: float) -> bool:
    """Deterministic split by document: a doc is held out when the hash of its id falls below val_fraction."""
    return int(stable_hash("val", doc_id)[:15], 16) / 16**15 < val_fraction


def honours(share: float, val_fraction: float) -> bool:
    return abs(share - val_fraction) <= SPLIT_TOLERANCE * val_fraction


def _n_bytes(docs: Sequence[Document]) -> int:
    return sum(len(d.text.encode()) for d in docs)


def _hash_split(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    flags = [is_val_doc(d.id, val_fraction) for d in docs]
    if not any(flags):
        flags[min(range(len(docs)), key=lambda i: stable_hash("val", docs[i].id))] = True
    if all(flags):
        flags[0] = False
    return [d for d, f in zip(docs, flags) if not f], [d for d, f in zip(docs, flags) if f]


def _fill_split(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Whole documents in hash order into validation while they fit under the target share."""
    sizes = [len(d.text.encode()) for d in docs]
    target, val_bytes, flags = val_fraction * sum(sizes), 0, [False] * len(docs)
    for i in sorted(range(len(docs)), key=lambda i: stable_hash("val", docs[i].id)):
        if val_bytes >= target:
            break
        if val_bytes + sizes[i] <= target * (1 + SPLIT_TOLERANCE):
            flags[i], val_bytes = True, val_bytes + sizes[i]
    return [d for d, f in zip(docs, flags) if not f], [d for d, f in zip(docs, flags) if f]


def _tail_cut_text(text: str, val_fraction: float) -> int:
    pos = min(len(text) - 1, math.ceil((1 - val_fraction) * len(text)))
    newline = text.find("\n", pos)
    return newline + 1 if 0 <= newline < len(text) - 1 else pos


def _tail_split(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    train, val = [], []
    for doc in docs:
        cut = _tail_cut_text(doc.text, val_fraction)
        if cut > 0:
            train.append(Document(doc.id, doc.text[:cut]))
        val.append(Document(f"{doc.id}#tail", doc.text[cut:]))
    return train, val


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document], dict]:
    """(train, val, description): whole documents when they can honour ``val_fraction``, else every document's tail."""
    whole_share = None
    for rule in (_hash_split, _fill_split) if len(docs) >= 2 else ():
        train, val = rule(docs, val_fraction)
        share = _n_bytes(val) / max(1, _n_bytes(docs))
        if train and val and honours(share, val_fraction):
            return train, val, {"method": "documents", "val_fraction": val_fraction}
        whole_share = share if whole_share is None else whole_share
    train, val = _tail_split(docs, val_fraction)
    return train, val, {"method": "document tails", "val_fraction": val_fraction, "whole_documents_share": whole_share}


def describe(split: dict, val_share: float) -> str:
    """One line for the data stats: how the split was made and the share of tokens it gave validation."""
    method, f = split.get("method", "documents"), split.get("val_fraction", float("nan"))
    how = {
        "documents": "whole documents held out by hash",
        "document tails": "the last {f:.2%} of every document held out",
        "file tails": "the tail of every token file held out (at a document boundary)",
        "files": "validation from its own files (data.val_fraction unused)",
    }.get(method, method).format(f=f)
    if method == "document tails" and split.get("whole_documents_share") is not None:
        how += f" (whole documents would give {split['whole_documents_share']:.1%})"
    return f"{how}: validation {val_share:.2%} of tokens, data.val_fraction {f:g}"


def tail_cut(tokens: np.ndarray, val_fraction: float, doc_starts: Sequence[int] | None, eos_id: int) -> int:
    """Where the validation tail of one token file starts (see the module docstring); reads O(log docs) index
    entries, or at most ``2 · MAX_EOS_SCAN`` tokens around the target when documents are marked only by EOS."""
    n = len(tokens)
    target = n - max(1, round(val_fraction * n))
    slack = int(val_fraction * n / 4)
    if doc_starts is not None:
        i = bisect.bisect_left(doc_starts, target)
        candidates = [int(doc_starts[j]) for j in (i - 1, i) if 0 <= j < len(doc_starts)]
    else:
        reach = min(slack, MAX_EOS_SCAN)
        lo, hi = max(0, target - reach - 1), min(n - 1, target + reach)  # EOS at p: a document starts at p + 1
        after_eos = np.flatnonzero(np.asarray(tokens[lo:hi]) == eos_id) + lo + 1
        j = int(np.searchsorted(after_eos, target))
        candidates = [int(after_eos[k]) for k in (j - 1, j) if 0 <= k < len(after_eos)]
    best = min(candidates, key=lambda c: abs(c - target), default=target)
    return best if 0 < best < n and abs(best - target) <= slack else target
