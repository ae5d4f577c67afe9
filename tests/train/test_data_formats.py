"""Token files read in place: our .bin/.npy shards (+ sidecar, binary doc index), nanoGPT, Megatron-LM indexed datasets."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from train.errors import DataError
from train.data import DataConfig, prepare
from train.data.formats import verify_checksums
from train.data.split import SPLIT_TOLERANCE, tail_cut
from train.tokenizer import train_bpe

EOS, VOCAB = 0, 300


def random_docs(seed: int, n: int, lo: int = 20, hi: int = 80) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, rng.integers(lo, hi)).tolist() for _ in range(n)]


def write_shard(path: Path, docs: list[list[int]], index: bool, dtype: str = "uint16", sidecar: bool = True) -> np.ndarray:
    """A raw token file (each doc + EOS), its sidecar, and optionally its binary document index."""
    stream = np.array([t for d in docs for t in d + [EOS]], dtype=dtype)
    if path.suffix == ".npy":
        np.save(path, stream)
    else:
        stream.tofile(path)
    if sidecar:
        path.with_suffix(".json").write_text(json.dumps({"dtype": dtype, "vocab_size": VOCAB, "eos_id": EOS,
                                                         "n_tokens": int(stream.size)}))
    if index:
        starts = np.cumsum([0] + [len(d) + 1 for d in docs[:-1]]).astype(np.int64)
        np.save(path.with_name(path.stem + ".docs.npy"), starts)
    return stream


def cfg(path: Path | str, tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(**{"path": str(path), "seq_len": 8, "val_fraction": 0.1, "cache_dir": str(tmp_path / "cache"),
                         "prefetch": 0, **kw})


def joined(source, split: str) -> np.ndarray:
    return np.concatenate([np.asarray(s) for s in getattr(source, split)])


# ------------------------------------------------------------------------------------------------ shards


def test_shard_directory_is_read_in_place_and_split_at_document_boundaries(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    streams = [write_shard(d / "a.bin", random_docs(0, 40), index=True),
               write_shard(d / "b.bin", random_docs(1, 50), index=False),  # documents marked by EOS only
               write_shard(d / "c.npy", random_docs(2, 30), index=True, dtype="int32")]
    data = prepare(cfg(d, tmp_path))
    (source,) = data.sources
    assert not (tmp_path / "cache").exists()  # nothing copied or cached
    assert data.vocab_size == VOCAB and data.eos_id == EOS and source.stats["format"] == "shards"
    for stream, train, val, name in zip(streams, source.train, source.val, ("a.bin", "b.bin", "c.npy")):
        assert isinstance(train, np.memmap) and Path(train.filename).name == name  # a view of the file itself
        assert np.array_equal(np.concatenate([train, val]), stream)  # split without rewriting or losing tokens
        assert int(train[-1]) == EOS  # the cut is a document boundary: validation starts a document
        share = len(val) / len(stream)
        assert abs(share - 0.1) <= SPLIT_TOLERANCE * 0.1
    x, y = data.get_batch("train", 0, 4)
    assert x.shape == (4, 8) and np.array_equal(x[:, 1:], y[:, :-1])


def test_glob_and_legacy_json_offsets(tmp_path):
    docs = random_docs(3, 30)
    stream = write_shard(tmp_path / "part-0.bin", docs, index=False, sidecar=False)
    starts = np.cumsum([0] + [len(d) + 1 for d in docs[:-1]]).tolist()
    (tmp_path / "part-0.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": VOCAB, "eos_id": EOS,
                                                      "doc_offsets": starts}))
    write_shard(tmp_path / "part-1.bin", random_docs(4, 30), index=True)
    (tmp_path / "other.bin").write_bytes(b"\x00\x00")  # not matched by the glob
    data = prepare(cfg(tmp_path / "part-*.bin", tmp_path))
    (source,) = data.sources
    assert [Path(s.filename).name for s in source.train] == ["part-0.bin", "part-1.bin"]
    assert np.array_equal(np.concatenate([source.train[0], source.val[0]]), stream)
    assert int(source.val[0][0]) != EOS and int(source.train[0][-1]) == EOS
    assert source.name == tmp_path.name  # a glob is named after its directory


def test_tail_cut_against_a_direct_search():
    rng = np.random.default_rng(5)
    lengths = rng.integers(5, 200, 300)
    starts = np.cumsum(np.concatenate([[0], lengths[:-1] + 1]))
    tokens = np.concatenate([np.append(rng.integers(1, 50, n), 0) for n in lengths])
    for f in (0.01, 0.05, 0.2):
        target = len(tokens) - round(f * len(tokens))
        best = starts[np.argmin(np.abs(starts - target))]  # nearest document start, found by brute force
        expected = best if abs(best - target) <= int(f * len(tokens) / 4) else target
        assert tail_cut(tokens, f, starts, 0) == expected
        assert tail_cut(tokens, f, None, 0) == expected  # the same boundaries found from EOS alone
    one_doc = np.arange(1, 1001) % 50 + 1  # no boundary near the target: cut mid-document, exactly at the target
    assert tail_cut(one_doc, 0.1, None, 0) == 900


def test_nanogpt_train_val_files(tmp_path):
    tok = train_bpe(["some text for a tokenizer"] * 20, VOCAB, "bpe-300")
    tok.save(tmp_path / "tok")
    d = tmp_path / "nano"
    d.mkdir()
    train = np.array([t % tok.vocab_size for doc in random_docs(6, 60) for t in doc + [EOS]], dtype=np.uint16)
    val = np.array([t % tok.vocab_size for doc in random_docs(7, 10) for t in doc + [EOS]], dtype=np.uint16)
    train.tofile(d / "train.bin")
    val.tofile(d / "val.bin")
    with pytest.raises(DataError) as exc:  # no sidecar, and bpe-8k says nothing about how the ids were made
        prepare(cfg(d, tmp_path))
    assert "\n" not in str(exc.value) and "train.bin" in str(exc.value) and "data.tokenizer" in str(exc.value)
    data = prepare(cfg(d, tmp_path, tokenizer=str(tmp_path / "tok")))  # nanoGPT's way: the tokenizer is known
    (source,) = data.sources
    assert source.stats["format"] == "nanogpt" and source.stats["split"]["method"] == "files"
    assert np.array_equal(joined(source, "train"), train) and np.array_equal(joined(source, "val"), val)
    assert data.vocab_size == tok.vocab_size and data.tokenizer is not None
    x, y = data.get_batch("val", 0, 2)
    assert x.shape == (2, 8)


# ------------------------------------------------------------------------------------------------ Megatron


def write_megatron(prefix: Path, docs: list[list[list[int]]], dtype: np.dtype, code: int) -> np.ndarray:
    """An MMapIndexedDataset written from its documented layout (independently of our reader): each document is a
    list of sequences; .bin holds the sequences back to back; .idx = header + lengths + byte pointers + doc indices."""
    sequences = [seq for doc in docs for seq in doc]
    lengths = [len(s) for s in sequences]
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1])]) * np.dtype(dtype).itemsize
    doc_index = np.cumsum([0] + [len(doc) for doc in docs])
    stream = np.array([t for s in sequences for t in s], dtype=dtype)
    stream.tofile(f"{prefix}.bin")
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", code))
        f.write(struct.pack("<Q", len(sequences)))
        f.write(struct.pack("<Q", len(doc_index)))
        f.write(np.asarray(lengths, dtype=np.int32).tobytes())
        f.write(np.asarray(pointers, dtype=np.int64).tobytes())
        f.write(np.asarray(doc_index, dtype=np.int64).tobytes())
    Path(f"{prefix}.json").write_text(json.dumps({"vocab_size": VOCAB, "eos_id": EOS}))
    return stream


@pytest.mark.parametrize("dtype,code", [(np.uint16, 8), (np.int32, 4)])
def test_megatron_indexed_dataset_token_exact(tmp_path, dtype, code):
    rng = np.random.default_rng(8)
    docs = [[rng.integers(1, VOCAB, rng.integers(3, 40)).tolist() + [EOS] for _ in range(rng.integers(1, 4))]
            for _ in range(80)]  # documents of 1-3 sequences (Megatron's sentence-split layout)
    stream = write_megatron(tmp_path / "corpus_text_document", docs, dtype, code)
    doc_starts = np.cumsum([0] + [sum(len(s) for s in doc) for doc in docs[:-1]])
    for spec in ("corpus_text_document", "corpus_text_document.bin", "corpus_text_document.idx", ""):
        data = prepare(cfg(tmp_path / spec, tmp_path))
        (source,) = data.sources
        assert source.stats["format"] == "megatron"
        assert np.array_equal(np.concatenate([joined(source, "train"), joined(source, "val")]), stream)
        assert len(source.train[0]) in doc_starts  # validation starts at a document


def test_megatron_corrupt_index(tmp_path):
    docs = [[[1, 2, 3, EOS]], [[4, 5, EOS]]] * 20
    write_megatron(tmp_path / "m", docs, np.uint16, 8)
    idx = tmp_path / "m.idx"
    raw = idx.read_bytes()
    idx.write_bytes(raw[:40])  # header fine, arrays cut off
    with pytest.raises(DataError, match="m.idx"):
        prepare(cfg(tmp_path / "m", tmp_path))
    idx.write_bytes(raw)
    (tmp_path / "m.bin").write_bytes((tmp_path / "m.bin").read_bytes()[:-2])  # one token short
    with pytest.raises(DataError, match="m.bin"):
        prepare(cfg(tmp_path / "m", tmp_path))


# ------------------------------------------------------------------------------------------------ errors


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


def test_corrupt_and_inconsistent_shards(tmp_path):
    write_shard(tmp_path / "a.bin", random_docs(9, 30), index=False)
    raw = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "a.bin").write_bytes(raw[:-2])  # truncated: one token fewer than the sidecar says
    with pytest.raises(DataError) as exc:
        prepare(cfg(tmp_path / "a.bin", tmp_path))
    _one_line(exc, "a.bin", "truncated")
    (tmp_path / "a.bin").write_bytes(raw[:-1])  # not a whole number of uint16
    with pytest.raises(DataError) as exc:
        prepare(cfg(tmp_path / "a.bin", tmp_path))
    _one_line(exc, "a.bin")
    (tmp_path / "a.bin").write_bytes(raw)
    write_shard(tmp_path / "b.bin", random_docs(10, 30), index=False)
    (tmp_path / "b.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": VOCAB + 1, "eos_id": EOS}))
    with pytest.raises(DataError) as exc:
        prepare(cfg(tmp_path, tmp_path))
    _one_line(exc, "vocab_size", "a.bin", "b.bin")
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(DataError) as exc:
        prepare(cfg(tmp_path / "b.bin", tmp_path))
    _one_line(exc, "b.json")


def test_out_of_vocabulary_ids_are_caught_per_batch(tmp_path):
    docs = random_docs(11, 30)
    stream = write_shard(tmp_path / "a.bin", docs, index=False)
    stream[5] = VOCAB + 7  # a corrupt id; start-up reads no tokens, the batch that contains it must refuse
    stream.tofile(tmp_path / "a.bin")
    data = prepare(cfg(tmp_path / "a.bin", tmp_path))
    with pytest.raises(DataError) as exc:
        for step in range(200):  # every window is visited within the first epoch
            data.get_batch("train", step, 4)
    _one_line(exc, str(VOCAB + 7), "vocabulary")


def test_verify_checksums(tmp_path):
    write_shard(tmp_path / "a.bin", random_docs(12, 30), index=True)
    side = json.loads((tmp_path / "a.json").read_text())
    side["sha256"] = hashlib.sha256((tmp_path / "a.bin").read_bytes()).hexdigest()
    (tmp_path / "a.json").write_text(json.dumps(side))
    assert verify_checksums(str(tmp_path), "bpe-8k", tmp_path) == 1
    raw = bytearray((tmp_path / "a.bin").read_bytes())
    raw[10] ^= 1
    (tmp_path / "a.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError) as exc:
        verify_checksums(str(tmp_path), "bpe-8k", tmp_path)
    _one_line(exc, "a.bin", "sha256")
