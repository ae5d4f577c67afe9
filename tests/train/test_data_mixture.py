"""Weighted mixtures (data.sources) and the O(1)-memory window permutation: proportions, determinism, resume, ranks."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperp.errors import ConfigError
from train.errors import DataError
from tests.conftest import tiny_overrides
from tests.runs import argv, records
from train.config import dump_toml, load_config
from train.data import DataConfig, Interleave, SourceConfig, load_doc_index, permute, prepare
from train.tokenizer import load_tokenizer, train_bpe

SEQ = 8


# ------------------------------------------------------------------------------------------------ permutation


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 1000, 4097])
def test_permute_is_a_bijection(n):
    for key in (0, 1, 2**63 + 5):
        assert sorted(permute(np.arange(n), n, key).tolist()) == list(range(n))


@pytest.mark.parametrize("n", [10, 100])
def test_permute_looks_uniform(n):
    """Where elements land over 3,000 keys: for each of the first 10 elements a chi-square statistic of its position
    counts against uniform (n - 1 degrees of freedom). Their mean concentrates at n - 1 for a uniform shuffle (sd of
    the mean ≈ sqrt(2 (n - 1) / 10)); 4 Feistel rounds give 2.5x that at n = 10. Bound: mean < (n - 1) + 5 sd."""
    keys = 3000
    positions = np.stack([permute(np.arange(n), n, k) for k in range(keys)])  # (keys, n): where element e went
    chi2 = [float(((np.bincount(positions[:, e], minlength=n) - keys / n) ** 2 / (keys / n)).sum()) for e in range(10)]
    assert np.mean(chi2) < (n - 1) + 5 * math.sqrt(2 * (n - 1) / 10), chi2
    assert abs(float((positions[:, 0] < positions[:, 1]).mean()) - 0.5) < 5 * 0.5 / math.sqrt(keys)  # order of a pair
    assert not np.array_equal(permute(np.arange(100), 100, 1), permute(np.arange(100), 100, 2))


# ------------------------------------------------------------------------------------------------ interleave


@pytest.mark.parametrize("weights", [[0.5, 0.3, 0.2], [0.7, 0.2, 0.05, 0.05], [1.0, 1e-3], [3, 1, 1, 1, 1, 1, 1, 1, 1]])
def test_interleave_realised_proportions_within_stated_bound(weights):
    """Every prefix of G samples holds G·w_s ± (⌈log2 S⌉ + G·2^-23) samples of source s (the documented bound),
    and each source's samples are its own 0, 1, 2, ... in order."""
    mix = Interleave(weights)
    g = np.arange(20_000)
    source, local = mix.route(g)
    w = np.asarray(weights, dtype=float) / sum(weights)
    prefix = np.stack([np.cumsum(source == s) for s in range(len(w))], 1)  # counts among the first G+1 samples
    expected = (g[:, None] + 1) * w[None, :]
    bound = math.ceil(math.log2(len(w))) + (g[:, None] + 1) * 2.0**-23
    assert np.all(np.abs(prefix - expected) <= bound + 1e-9)
    for s in range(len(w)):
        assert local[source == s].tolist() == list(range(int((source == s).sum())))
    assert mix.counts(20_000) == prefix[-1].tolist()


# ------------------------------------------------------------------------------------------------ mixture data


def shard(path: Path, lo: int, hi: int, n_docs: int, seed: int) -> None:
    """A token shard whose ids all lie in [lo, hi) (so every window names its source), docs ending in EOS 0."""
    rng = np.random.default_rng(seed)
    stream = np.concatenate([np.append(rng.integers(lo, hi, rng.integers(10, 40)), 0) for _ in range(n_docs)])
    stream.astype(np.uint16).tofile(path)
    path.with_suffix(".json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 300, "eos_id": 0}))


RANGES = {"a": (1, 100), "b": (100, 200), "c": (200, 300)}


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mix")
    for i, (name, (lo, hi)) in enumerate(RANGES.items()):
        shard(tmp / f"{name}.bin", lo, hi, n_docs=(40, 120, 15)[i], seed=i)
    sources = tuple(SourceConfig(path=str(tmp / f"{n}.bin"), weight=w) for n, w in zip(RANGES, (5, 3, 2)))
    return prepare(DataConfig(sources=sources, seq_len=SEQ, val_fraction=0.1, cache_dir=str(tmp / "c"), prefetch=0))


def source_of(x: torch.Tensor) -> list[str]:
    """Each row's source, read off its token ids (EOS 0 aside)."""
    out = []
    for row in x.tolist():
        ids = [t for t in row if t]
        out.append(next(n for n, (lo, hi) in RANGES.items() if lo <= ids[0] < hi))
        assert all(RANGES[out[-1]][0] <= t < RANGES[out[-1]][1] for t in ids)
    return out


def test_mixture_batches_follow_the_weights(mixture):
    s = mixture.sampler(6, grad_accum=2)
    seen = []
    for step in range(40):
        for micro in range(2):
            seen += source_of(s.batch_at(step, micro)[0])
    total = len(seen)
    for name, w in zip(RANGES, (0.5, 0.3, 0.2)):
        assert abs(seen.count(name) - total * w) <= 2, (name, seen.count(name), total * w)  # ⌈log2 3⌉ = 2
    metrics = s.metrics(40)
    for name in RANGES:  # the logged counts are those of the batches actually drawn
        assert metrics[f"data/tokens/{name}"] == seen.count(name) * SEQ
    assert sum(metrics[f"data/tokens/{n}"] for n in RANGES) == 40 * 12 * SEQ


def test_mixture_is_a_pure_function_of_step_and_resumes(mixture):
    a, b = mixture.sampler(4, grad_accum=2), mixture.sampler(4, grad_accum=2)
    for _ in range(9):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))
    b.load_state_dict(state)
    for _ in range(7):
        (x1, y1), (x2, y2) = next(a), next(b)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(mixture.sampler(4, grad_accum=2).batch_at(8, 1)[0], a.batch_at(8, 1)[0])
    other = prepare(DataConfig(sources=mixture.config.sources[:2], seq_len=SEQ, val_fraction=0.1,
                               cache_dir=mixture.config.cache_dir, prefetch=0))
    with pytest.raises(DataError, match="n_windows"):
        other.sampler(4, grad_accum=2).load_state_dict(state)


def test_mixture_ranks_are_disjoint_and_cover_the_global_batch(mixture):
    world, per_rank = 4, 3
    whole = mixture.sampler(per_rank * world)
    for step in (0, 7, 50):
        parts = [mixture.sampler(per_rank, rank=r, world_size=world).window_ids(step) for r in range(world)]
        src = np.concatenate([p[0] for p in parts])
        win = np.concatenate([p[1] for p in parts])
        ref_src, ref_win = whole.window_ids(step)
        assert src.tolist() == ref_src.tolist() and win.tolist() == ref_win.tolist()
        assert len(set(zip(src.tolist(), win.tolist()))) == len(src)  # no window twice in one global batch


def test_each_source_covers_its_windows_once_per_epoch(mixture):
    s = mixture.sampler(1)
    visits: dict[int, list[int]] = {0: [], 1: [], 2: []}
    step = 0
    while any(len(v) < n for v, n in zip(visits.values(), s.n_windows)):
        src, win = s.window_ids(step)
        visits[int(src[0])].append(int(win[0]))
        step += 1
    for k, n in enumerate(s.n_windows):
        assert sorted(visits[k][:n]) == list(range(n))


def test_validation_per_source_and_mixed(mixture):
    by_source = mixture.val_batches_by_source(2, 3)
    assert list(by_source) == list(RANGES)
    for name, batches in by_source.items():
        assert all(set(source_of(x)) == {name} for x, _ in batches)
    mixed = mixture.val_batches(2, 10)  # 10 batches at 0.5/0.3/0.2 → 5/3/2
    assert [source_of(x)[0] for x, _ in mixed] == ["a"] * 5 + ["b"] * 3 + ["c"] * 2


# ------------------------------------------------------------------------------------------------ config


def test_sources_config_round_trip_and_errors(tmp_path):
    cfg = load_config("configs/tiny-moe.toml", ['data.sources=[{corpus="wiki", weight=0.3}, {path="x/web", weight=0.7}]'])
    assert [s.label for s in cfg.data.sources] == ["wiki", "web"]
    (tmp_path / "c.toml").write_text(dump_toml(cfg))
    assert load_config(tmp_path / "c.toml").data == cfg.data
    bad = {
        '[{path="a", corpus="wiki"}]': "exactly one of path or corpus",
        '[{path="a", weight=0}]': "data.sources[0].weight",
        '[{path="x/a"}, {path="y/a"}]': "two sources named 'a'",
        '[{path="a", wieght=2}]': "did you mean",
    }
    for value, needle in bad.items():
        with pytest.raises(ConfigError, match=re.escape(needle)):
            load_config(None, [f"data.sources={value}"])
    with pytest.raises(ConfigError, match="not both"):
        DataConfig(path="a", sources=(SourceConfig(path="b"),))


def test_sources_must_share_a_vocabulary(tmp_path):
    shard(tmp_path / "a.bin", 1, 100, 20, 0)
    shard(tmp_path / "b.bin", 1, 100, 20, 1)
    (tmp_path / "b.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 512, "eos_id": 0}))
    sources = (SourceConfig(path=str(tmp_path / "a.bin")), SourceConfig(path=str(tmp_path / "b.bin")))
    with pytest.raises(DataError, match="'a' and 'b' have different vocab_size"):
        prepare(DataConfig(sources=sources, seq_len=SEQ, cache_dir=str(tmp_path / "c")))


def test_sources_must_come_from_one_tokenizer(tmp_path):
    """Same vocabulary size, different BPEs (trained on different text): the mixture is refused."""
    for name, text in (("a", "alpha beta gamma delta " * 50), ("b", "one two three four five " * 50)):
        tok = train_bpe([text] * 10, 512, "bpe-512")
        tok.save(tmp_path / f"tok_{name}")
        shard(tmp_path / f"{name}.bin", 1, 100, 20, 0)
        side = {"dtype": "uint16", "vocab_size": 100, "eos_id": 0, "tokenizer": f"tok_{name}"}
        (tmp_path / f"{name}.json").write_text(json.dumps(side))
    both = (SourceConfig(path=str(tmp_path / "a.bin")), SourceConfig(path=str(tmp_path / "b.bin")))
    with pytest.raises(DataError, match="'a' and 'b' come from different tokenizers"):
        prepare(DataConfig(sources=both, seq_len=SEQ, cache_dir=str(tmp_path / "c")))
    (tmp_path / "b.json").write_text((tmp_path / "a.json").read_text())  # now both say tok_a
    assert len(prepare(DataConfig(sources=both, seq_len=SEQ, cache_dir=str(tmp_path / "c"))).sources) == 2


def test_text_sources_share_one_tokenizer_trained_on_both(text_corpus, tmp_path):
    half = tmp_path / "half"
    half.mkdir()
    for p in sorted(text_corpus.iterdir())[:20]:
        (half / p.name).write_text(p.read_text().upper())
    cfg = DataConfig(sources=(SourceConfig(path=str(text_corpus), weight=2), SourceConfig(path=str(half), name="upper")),
                     tokenizer="bpe-512", seq_len=SEQ, val_fraction=0.1, cache_dir=str(tmp_path / "c"), prefetch=0)
    data = prepare(cfg)
    (tok_dir,) = (tmp_path / "c" / "tokenizers").iterdir()
    assert tok_dir.name.startswith("bpe-512-mix-")  # one BPE, keyed by both sources
    tok = load_tokenizer(str(tok_dir))
    for source, root in zip(data.sources, (text_corpus, half)):
        assert source.stats["tokenizer"].startswith("bpe-512.mix-")
        doc_id, start, n = load_doc_index(source.directory)["train"][0]
        assert np.asarray(source.train[0][start : start + n]).tolist() == tok.encode((root / doc_id).read_text())
    mtime = (data.sources[1].directory / "train.bin").stat().st_mtime_ns
    assert (prepare(cfg).sources[1].directory / "train.bin").stat().st_mtime_ns == mtime  # cached


def test_training_on_a_mixture_logs_per_source_tokens(text_corpus, tmp_path):
    """A text source (tokenized into the cache) and a token shard made with the same tokenizer, trained together."""
    from train.__main__ import main

    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 4})
    assert main(argv(sets + ["train.max_steps=1"], tmp_path / "warm")) == 0  # trains and caches the BPE
    (tok_dir,) = (tmp_path / "cache" / "tokenizers").iterdir()
    tok = load_tokenizer(str(tok_dir))
    ids = [i for p in sorted(text_corpus.iterdir())[:30] for i in tok.encode(p.read_text()) + [tok.eos_id]]
    np.asarray(ids, dtype=np.uint16).tofile(tmp_path / "toks.bin")
    (tmp_path / "toks.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": tok.vocab_size, "eos_id": tok.eos_id}))
    mix = f'data.sources=[{{path="{text_corpus}", weight=3, name="text"}}, {{path="{tmp_path / "toks.bin"}", name="tok"}}]'
    sets = [s for s in sets if not s.startswith("data.path=")] + [mix]
    assert main(argv(sets, tmp_path / "run")) == 0
    steps = [r for r in records(tmp_path / "run") if "data/tokens/text" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        text, toks = r["data/tokens/text"], r["data/tokens/tok"]
        assert text + toks == r["train/tokens"]
        assert abs(text - 0.75 * r["train/tokens"]) <= 32  # within ⌈log2 2⌉ = 1 window of seq_len 32
