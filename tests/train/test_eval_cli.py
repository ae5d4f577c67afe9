"""``python -m train.eval``: held-out loss / bits per byte / perplexity of text files on a run and on its export,
against a direct computation (one unpadded forward per document); bad input is one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_overrides
from tests.runs import argv, assert_one_line_error
from train.__main__ import main as train_main
from train.checkpoint import load_model_from_run
from train.eval.__main__ import main as eval_main
from train.export import main as export_main

DOCS = {"a.txt": "The quick brown fox jumps over the lazy dog.\n", "b.txt": "où est le café? — naïve.\n"}


@pytest.fixture(scope="module")
def run_dir(text_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    assert train_main(argv(tiny_overrides(text_corpus, out.parent / "cache", **{"train.max_steps": 3}), out)) == 0
    return out


def direct(run: Path, texts: list[str]) -> tuple[float, float, int]:
    """(Σ nll, Σ bytes, tokens): each document conditioned on EOS, scored in one forward (all fit max_seq_len)."""
    model, tok = load_model_from_run(run)
    nll, nbytes, tokens = 0.0, 0, 0
    for text in texts:
        ids = tok.encode(text)
        assert len(ids) <= model.config.max_seq_len
        with torch.no_grad():
            logits = model(torch.tensor([[tok.eos_id, *ids[:-1]]])).logits[0]
        nll += float(F.cross_entropy(logits.double(), torch.tensor(ids), reduction="sum"))
        nbytes += len(text.encode("utf-8"))
        tokens += len(ids)
    return nll, nbytes, tokens


def test_text_scores_match_a_direct_computation_on_a_run_and_its_export(run_dir: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts"
    texts.mkdir()
    for name, text in DOCS.items():
        (texts / name).write_text(text)
    assert eval_main([str(run_dir), "--text", str(texts), "--out", str(tmp_path / "run.json")]) == 0
    got = json.loads((tmp_path / "run.json").read_text())["text"][str(texts)]
    nll, nbytes, tokens = direct(run_dir, list(DOCS.values()))
    assert (got["documents"], got["tokens"], got["bytes"]) == (2, tokens, nbytes)
    # fp32 logits summed in fp64: ~1e-6 relative per token
    assert got["loss"] == pytest.approx(nll / tokens, rel=1e-5)
    assert got["bpb"] == pytest.approx(nll / math.log(2) / nbytes, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    export = tmp_path / "export"
    assert export_main(["--run", str(run_dir), "--out", str(export)]) == 0
    assert eval_main([str(export), "--text", str(texts), "--out", str(tmp_path / "export.json")]) == 0
    exported = json.loads((tmp_path / "export.json").read_text())["text"][str(texts)]
    assert exported["tokens"] == tokens
    # residual multipliers folded into o_proj/down_proj on export: fp32 rounding of the product only
    assert exported["loss"] == pytest.approx(got["loss"], rel=1e-5)


def test_bad_eval_input_is_one_line(run_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "t.txt").write_text("hello world\n")
    cases = [([str(tmp_path / "nothing"), "--text", str(tmp_path / "t.txt")], "neither a run directory"),
             ([str(run_dir), "--text", str(tmp_path / "t.txt"), "--seq-len", "999"], "--seq-len must be in [1, 32]"),
             ([str(run_dir), "--text", str(tmp_path / "missing.txt")], "missing.txt")]
    for args, needle in cases:
        assert eval_main(args) == 2
        assert_one_line_error(2, capsys.readouterr().err, needle)


def test_in_loop_validation_per_source_is_each_sources_loss(text_corpus: Path, tmp_path: Path) -> None:
    """Two text sources: val/<source>/loss and /bpb are logged next to val/loss, and val/<source>/loss is the mean
    training loss of the final model over that source's validation batches."""
    from tests.runs import series
    from train.config import load_config
    from train.data import prepare

    docs = sorted(text_corpus.glob("*.txt"))
    for name, part in (("prose", docs[:40]), ("shout", docs[40:])):
        (tmp_path / name).mkdir()
        for doc in part:  # the second source upper-cased: a clearly different distribution
            (tmp_path / name / doc.name).write_text(doc.read_text().upper() if name == "shout" else doc.read_text())
    sources = f'data.sources=[{{path="{tmp_path / "prose"}", weight=0.5}}, {{path="{tmp_path / "shout"}", weight=0.5}}]'
    sets = [s for s in tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 4, "train.eval_every": 4})
            if not s.startswith("data.path=")] + [sources]
    run = tmp_path / "run"
    assert train_main(argv(sets, run)) == 0
    cfg = load_config("configs/tiny-dense.toml", sets)
    model, _ = load_model_from_run(run)
    by_source = prepare(cfg.data).val_batches_by_source(cfg.train.batch_size, cfg.train.eval_batches)
    assert sorted(by_source) == ["prose", "shout"]
    for name, batches in by_source.items():
        with torch.no_grad():
            expected = sum(float(model(x, y).loss) for x, y in batches) / len(batches)
        assert series(run, f"val/{name}/loss")[4] == pytest.approx(expected, rel=1e-5)  # fp32 means of equal batches
        # bpb = loss · tokens / (ln 2 · bytes) < loss: a 512-token BPE spells > 1/ln 2 = 1.44 bytes per token
        assert 0 < series(run, f"val/{name}/bpb")[4] < series(run, f"val/{name}/loss")[4]
