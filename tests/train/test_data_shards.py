"""Parallel tokenization into shards (python -m train.data tokenize) and the background prefetcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from train.errors import DataError
from train.data import DataConfig, Prefetcher, prepare
from train.data.shards import main as tokenize_main
from train.tokenizer import load_tokenizer, train_bpe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """60 text files in nested folders, and a BPE saved as tokenizer.json."""
    tmp = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    words = "the of and a to in is was he for it with as his on be at by".split()
    for i in range(60):
        sub = tmp / "text" / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        paras = ["\n".join(" ".join(rng.choice(words, 12)) for _ in range(4)) for _ in range(3)]
        (sub / f"f{i:02d}.txt").write_text(f"File {i}.\n" + "\n\n".join(paras) + "\n")
    tok = train_bpe([p.read_text() for p in (tmp / "text").rglob("*.txt")], 600, "bpe-600")
    tok.save(tmp / "tok")
    return tmp / "text", tmp / "tok" / "tokenizer.json"


def reference_stream(text: Path, tokenizer: Path, separator: str | None = None) -> tuple[np.ndarray, list[int]]:
    """Serial tokenization of every file in sorted order: each document + EOS; and the document starts."""
    tok = load_tokenizer(str(tokenizer))
    ids, starts = [], []
    for path in sorted(text.rglob("*.txt")):
        body = path.read_text()
        docs = [p.strip() + "\n" for p in body.split("\n\n") if p.strip()] if separator == "blank" else [body]
        for doc in docs:
            starts.append(len(ids))
            ids += tok.encode(doc) + [tok.eos_id]
    return np.asarray(ids), starts


def shards_of(out: Path) -> tuple[np.ndarray, list[int]]:
    ids, starts = [], []
    for b in sorted(out.glob("shard_*.bin")):
        offset = len(ids)
        ids += np.fromfile(b, dtype=np.uint16).tolist()
        starts += (np.load(b.with_name(b.stem + ".docs.npy")) + offset).tolist()
    return np.asarray(ids), starts


@pytest.mark.parametrize("workers,separator", [(2, None), (1, "blank")])
def test_parallel_tokenization_equals_a_serial_reference(corpus, tmp_path, workers, separator):
    text, tokenizer = corpus
    out = tmp_path / "out"
    args = [str(text), "--out", str(out), "--tokenizer", str(tokenizer), "--workers", str(workers), "--shard-mb", "0.004"]
    assert tokenize_main(args + (["--doc-separator", separator] if separator else [])) == 0
    ids, starts = shards_of(out)
    ref_ids, ref_starts = reference_stream(text, tokenizer, separator)
    assert len(list(out.glob("shard_*.bin"))) > 4
    assert np.array_equal(ids, ref_ids) and starts == ref_starts
    data = prepare(DataConfig(path=str(out), tokenizer="bpe-8k", seq_len=16, val_fraction=0.05, prefetch=0,
                              cache_dir=str(tmp_path / "c")))
    assert data.tokenizer.vocab_size == load_tokenizer(str(tokenizer)).vocab_size  # from the sidecars' tokenizer
    assert sum(len(a) for s in data.sources for a in s.train + s.val) == len(ref_ids)


def test_bpe_is_trained_on_a_sample_and_saved_with_the_shards(corpus, tmp_path, capsys):
    text, _ = corpus
    out = tmp_path / "out"
    assert tokenize_main([str(text), "--out", str(out), "--tokenizer", "bpe-512", "--workers", "2", "--shard-mb", "0.01"]) == 0
    err = capsys.readouterr().err
    assert "ETA" in err and "shards]" in err  # the progress line
    tok = load_tokenizer(str(out / "tokenizer.json"))
    ids, _ = shards_of(out)
    first = sorted(text.rglob("*.txt"))[0].read_text()
    assert ids[: len(tok.encode(first))].tolist() == tok.encode(first)
    assert json.loads((out / "shard_00000.json").read_text())["tokenizer"] == "tokenizer.json"


def test_killed_run_keeps_finished_shards_and_resumes(corpus, tmp_path):
    text, tokenizer = corpus
    out = tmp_path / "out"
    args = [str(text), "--out", str(out), "--tokenizer", str(tokenizer), "--workers", "1", "--shard-mb", "0.0005"]
    proc = subprocess.Popen([sys.executable, "-m", "train.data", "tokenize", *args], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # a real process to SIGKILL
    deadline = time.time() + 120
    while not list(out.glob("shard_*.bin")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(out.glob("shard_*.bin"))
    n_planned = len(json.loads((out / "tokenize.json").read_text())["shards"])
    assert 1 <= len(done) < n_planned, "the kill came too late to test a resume"
    before = {p.name: p.stat().st_mtime_ns for p in done}
    partial = prepare(DataConfig(path=str(out), tokenizer=str(tokenizer), seq_len=16, prefetch=0, cache_dir=str(tmp_path / "c")))
    assert len(partial.sources[0].train) == len(done)  # finished shards are usable at once
    assert tokenize_main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in done} == before  # not redone
    ids, starts = shards_of(out)
    ref_ids, ref_starts = reference_stream(text, tokenizer)
    assert np.array_equal(ids, ref_ids) and starts == ref_starts
    assert not list(out.glob("*.tmp-*"))


def test_errors_are_one_line(corpus, tmp_path, capsys):
    text, tokenizer = corpus
    out = tmp_path / "out"
    assert tokenize_main([str(text), "--out", str(out), "--tokenizer", str(tokenizer), "--shard-mb", "1"]) == 0
    capsys.readouterr()
    assert tokenize_main([str(text), "--out", str(out), "--tokenizer", "bpe-512"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "tokenizer differs" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_text("fine\n")
    (bad / "b.txt").write_bytes(b"caf\xe9\n")
    args = [str(bad), "--out", str(tmp_path / "out2"), "--tokenizer", str(tokenizer), "--workers", "2", "--shard-mb", "1e-6"]
    assert tokenize_main(args) == 2  # raised in a worker process, reported by the parent
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: ") and "b.txt is not valid UTF-8 at byte offset 3" in err[-1]
    assert all(line.startswith("tokenize [") for line in err[:-1])  # progress lines of finished shards only


# ------------------------------------------------------------------------------------------------ prefetch


def test_prefetcher_serves_exactly_the_sampler_batches(tmp_path):
    stream = np.arange(1, 5001) % 250 + 1
    stream.astype(np.uint16).tofile(tmp_path / "t.bin")
    (tmp_path / "t.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 300, "eos_id": 0}))
    data = prepare(DataConfig(path=str(tmp_path / "t.bin"), seq_len=16, prefetch=3, cache_dir=str(tmp_path / "c")))
    sampler = data.sampler(4, grad_accum=2)
    loader = data.loader(4, 0, 1, 2, torch.device("cpu"))
    assert isinstance(loader, Prefetcher)
    in_order = [(s, m) for s in range(6) for m in range(2)]
    for i, (step, micro) in enumerate(in_order + [(2, 1), (3, 0), (0, 0), (9, 1)]):  # in order, then jumps
        x, y = loader.batch_at(step, micro)
        x0, y0 = sampler.batch_at(step, micro)
        assert torch.equal(x, x0) and torch.equal(y, y0)
        if i == 0:
            thread = loader._thread
        elif i < len(in_order):
            assert loader._thread is thread  # consumed in order: served from the same thread, never restarted
    loader.close()
    assert loader._thread is None


def test_prefetcher_reraises_data_errors(tmp_path):
    stream = np.full(400, 7, dtype=np.uint16)
    stream[100:] = 999  # outside the vocabulary
    stream.tofile(tmp_path / "t.bin")
    (tmp_path / "t.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 300, "eos_id": 0}))
    loader = prepare(DataConfig(path=str(tmp_path / "t.bin"), seq_len=8, cache_dir=str(tmp_path / "c"))).loader(
        8, 0, 1, 1, torch.device("cpu"))
    with pytest.raises(DataError, match="999"):
        for step in range(10):
            loader.batch_at(step)


@pytest.mark.gpu
def test_prefetcher_on_cuda_matches_the_sampler(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    stream = (np.arange(1, 20001) % 250 + 1).astype(np.uint16)
    stream.tofile(tmp_path / "t.bin")
    (tmp_path / "t.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 300, "eos_id": 0}))
    data = prepare(DataConfig(path=str(tmp_path / "t.bin"), seq_len=64, cache_dir=str(tmp_path / "c")))
    sampler, loader = data.sampler(8), data.loader(8, 0, 1, 1, torch.device("cuda"))
    for step in range(20):
        x, y = loader.batch_at(step)
        assert x.is_cuda and torch.equal(x.cpu(), sampler.batch_at(step)[0]) and torch.equal(y.cpu(), sampler.batch_at(step)[1])
        torch.cuda.synchronize()
