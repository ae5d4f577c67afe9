"""``python -m train.generate``: top-k / top-p filtering against transformers' logits warpers, stopping at eos, and the
CLI's --checkpoint, --prompt-file and --num-samples on a hand-built run directory."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from tests.models.test_hf_moe import build, tiny_moe
from train.checkpoint import save
from train.config import DataConfig, RunConfig
from train.generate import filter_logits, main, sample
from train.tokenizer import train_bpe

VOCAB = 300


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (0, 0.9), (0, 0.3), (5, 1.0), (5, 0.7), (1, 0.5)])
def test_filtering_matches_transformers_warpers(top_k: int, top_p: float) -> None:
    """The reference applies TopKLogitsWarper then TopPLogitsWarper, as transformers' sampling does. Random logits
    have no ties and no cumulative sum within rounding of p, so the kept sets are equal exactly."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    for seed in range(20):
        logits = torch.randn(64, generator=torch.Generator().manual_seed(seed)) * 3
        ref = logits[None].clone()
        if top_k:
            ref = TopKLogitsWarper(top_k)(None, ref)
        if top_p < 1:
            ref = TopPLogitsWarper(top_p)(None, ref)
        assert torch.equal(filter_logits(logits, top_k, top_p), ref[0])


class _Scripted(torch.nn.Module):
    """A 'model' whose next token is the next entry of a script, whatever the context."""

    def __init__(self, script: list[int]) -> None:
        super().__init__()
        self.script, self.calls = script, 0
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = types.SimpleNamespace(max_seq_len=8)

    def forward(self, ids: torch.Tensor):
        logits = torch.full((1, ids.shape[1], 16), -10.0)
        logits[0, -1, self.script[self.calls]] = 10.0
        self.calls += 1
        return types.SimpleNamespace(logits=logits)


def test_sampling_stops_at_eos_and_returns_only_new_tokens() -> None:
    model = _Scripted([3, 4, 15, 5])
    assert sample(model, [1, 2], max_new_tokens=10, temperature=0, eos_id=15) == [3, 4]
    assert model.calls == 3  # nothing generated after eos
    model = _Scripted([3, 4, 5, 6])
    assert sample(model, [1, 2], max_new_tokens=3, temperature=1.0, top_k=1, eos_id=15) == [3, 4, 5]


def _run_dir(tmp_path: Path) -> tuple[Path, dict[int, torch.nn.Module], object]:
    """A run with checkpoints at steps 3 and 5 holding different weights, and its tokenizer."""
    cfg = tiny_moe(vocab_size=VOCAB, moe=None)
    run_dir, models = tmp_path / "run", {}
    for step, seed in ((3, 1), (5, 2)):
        models[step] = build(cfg, seed=seed)
        save(run_dir, step, {"config": RunConfig(name="tiny", model=cfg, data=DataConfig(seq_len=32)).to_dict(),
                             "model": models[step].state_dict()})
    tok = train_bpe(["In 1850, the router routed 1850 tokens to 2 experts."] * 4, VOCAB, "bpe-300")
    tok.save(run_dir / "tokenizer")
    return run_dir, models, tok


def _greedy(model: torch.nn.Module, ids: list[int], n: int, eos: int) -> list[int]:
    """Reference: argmax of the full forward, one token at a time."""
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
    return out


def test_cli_checkpoint_prompt_file_and_samples(tmp_path: Path, capsys) -> None:
    run_dir, models, tok = _run_dir(tmp_path)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("In 1850, the", encoding="utf-8")
    ids = tok.encode("In 1850, the")
    greedy = ["--run", str(run_dir), "--prompt-file", str(prompt), "--temperature", "0", "--max-new-tokens", "6"]
    for step in (3, 5):
        assert main([*greedy, "--checkpoint", str(step)]) == 0
        assert capsys.readouterr().out == "In 1850, the" + tok.decode(_greedy(models[step], ids, 6, tok.eos_id)) + "\n"
    assert _greedy(models[3], ids, 6, tok.eos_id) != _greedy(models[5], ids, 6, tok.eos_id)  # the step mattered

    sampled = ["--run", str(run_dir), "--prompt", "the", "--num-samples", "3", "--top-k", "0", "--top-p", "0.95",
               "--temperature", "1.5", "--max-new-tokens", "8", "--seed", "4"]
    assert main(sampled) == 0
    first = capsys.readouterr().out
    assert main(sampled) == 0
    assert capsys.readouterr().out == first  # reproducible from --seed
    texts = first.split("--- sample ")[1:]
    assert [t.split("\n", 1)[0] for t in texts] == ["1/3", "2/3", "3/3"]
    assert len({t.split("\n", 1)[1] for t in texts}) > 1  # independent samples


@pytest.mark.parametrize(("args", "needle"), [(["--checkpoint", "4"], "no checkpoint of step 4"),
                                              (["--top-p", "0"], "--top-p"), (["--num-samples", "0"], "--num-samples")])
def test_cli_bad_arguments_are_one_line(tmp_path: Path, capsys, args: list[str], needle: str) -> None:
    run_dir, _, _ = _run_dir(tmp_path)
    assert main(["--run", str(run_dir), "--prompt", "the", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err
