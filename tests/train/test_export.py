"""``python -m train.export`` on a hand-built run directory: transformers loads the export offline with our logits."""

from __future__ import annotations

import pytest
import torch

from tests.models.test_hf_moe import build, max_diff, tiny_moe
from train.checkpoint import save
from train.config import DataConfig, RunConfig
from train.export import main
from train.tokenizer import train_bpe


@pytest.mark.parametrize("kind", ["dense", "softmax", "sqrt-shared"])
def test_export_cli_from_run_directory(tmp_path, kind: str) -> None:
    from transformers import AutoModelForCausalLM

    kw = {"dense": {"moe": None}, "softmax": {}, "sqrt-shared": {"gate": "sqrt", "shared": True}}[kind]
    cfg = tiny_moe(vocab_size=300, **kw)
    ours = build(cfg, seed=6)
    run_dir = tmp_path / "run"
    state = {"config": RunConfig(name="tiny", model=cfg, data=DataConfig(seq_len=32)).to_dict(), "model": ours.state_dict()}
    save(run_dir, 3, state)
    train_bpe(["the router routes every token to two experts."] * 4, 300, "bpe-300").save(run_dir / "tokenizer")
    out = tmp_path / "hf"
    assert main(["--run", str(run_dir), "--out", str(out)]) == 0
    assert (out / "tokenizer.json").is_file()
    assert (out / "modeling_hyperp_moe.py").is_file() == (kind == "sqrt-shared")
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, local_files_only=True).eval()
    ids = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert max_diff(loaded(ids).logits, ours(ids).logits) <= 1e-4


def test_export_cli_reports_a_missing_checkpoint_in_one_line(tmp_path, capsys) -> None:
    assert main(["--run", str(tmp_path / "nope"), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
