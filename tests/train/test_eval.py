"""The evaluation core (train.eval.scoring, token bytes): each against an independent reference — the training loss
(model(inputs, targets).loss), UTF-8 byte counts of the text, one window scored alone, lm-eval's own rolling-window
code."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.config import ModelConfig
from models.qwen3 import Qwen3
from moe.config import MoEConfig
from train.eval.scoring import rolling_windows, score_batches, target_logprobs
from train.tokenizer import token_byte_lengths, train_bpe

TEXTS = ["The cat sat on the mat; où est le café? 北京 is large. naïve façade — ünïcödé.\n",
         "def f(x):\n    return x ** 2  # squares\n", "To be, or not to be, that is the question.\n"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(TEXTS * 10, 320, "bpe-test")


def tiny(vocab: int, moe: bool = False) -> Qwen3:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, hidden=32, n_layers=2, n_heads=2, n_kv_heads=1, mlp_hidden=64, max_seq_len=24,
                      moe=MoEConfig(num_experts=4, top_k=2, expert_hidden=32) if moe else None)
    model = Qwen3(cfg).double().eval()
    with torch.no_grad():
        model.embed.weight.normal_()  # visible logits
    return model


def test_token_bytes_add_up_to_the_texts_utf8_length(tokenizer) -> None:
    lengths = token_byte_lengths(tokenizer)
    assert lengths[tokenizer.eos_id] == 0
    for text in [*TEXTS, "一二三 ẞ 🙂 mixed ascii"]:  # multi-byte characters split across tokens still add up
        assert sum(int(lengths[i]) for i in tokenizer.encode(text)) == len(text.encode("utf-8")), text


def test_score_batches_is_the_training_loss_and_bits_per_byte(tokenizer) -> None:
    model = tiny(tokenizer.vocab_size)
    ids = torch.tensor(tokenizer.encode("".join(TEXTS * 3))[:97])
    ids[40] = tokenizer.eos_id  # an EOS target: counted in loss, not in bpb
    batches = [(ids[:48].view(2, 24), ids[1:49].view(2, 24)), (ids[48:72].view(1, 24), ids[49:73].view(1, 24))]
    lengths = token_byte_lengths(tokenizer)
    score = score_batches(model, batches, torch.device("cpu"), torch.from_numpy(lengths))
    with torch.no_grad():
        losses = [model(x, y).loss * y.numel() for x, y in batches]  # the training objective, a mean per batch
        nll = torch.cat([F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten(), reduction="none")
                         for x, y in batches])
    targets = torch.cat([y.flatten() for _, y in batches])
    assert score.tokens == 72
    assert score.loss == pytest.approx(float(sum(losses)) / 72, rel=1e-12)
    text = tokenizer.decode([t for t in targets.tolist() if t != tokenizer.eos_id])
    text_nll = float(nll[targets != tokenizer.eos_id].sum())
    assert score.bpb == pytest.approx(text_nll / math.log(2) / len(text.encode("utf-8")), rel=1e-12)
    assert score.perplexity == pytest.approx(math.exp(score.loss), rel=1e-12)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_padded_batches_score_each_window_as_if_alone(moe: bool) -> None:
    model = tiny(50, moe)
    gen = torch.Generator().manual_seed(0)
    windows = []
    for n in (24, 7, 13, 1, 24, 5):
        inputs = torch.randint(1, 50, (n,), generator=gen).tolist()
        k = min(n, 4)
        windows.append((inputs, torch.randint(1, 50, (k,), generator=gen).tolist()))
    got = target_logprobs(model, windows, batch_size=4, device=torch.device("cpu"), pad_id=0)
    for (inputs, targets), (logprobs, greedy) in zip(windows, got, strict=True):
        with torch.no_grad():
            alone = torch.log_softmax(model(torch.tensor([inputs])).logits[0, -len(targets):], dim=-1)
        expected = alone.gather(-1, torch.tensor(targets)[:, None])[:, 0]
        # fp64, same math, other shapes: only the reduction blocking may differ (~1e-15)
        torch.testing.assert_close(logprobs, expected, rtol=0, atol=1e-10)
        assert greedy == bool((alone.argmax(-1) == torch.tensor(targets)).all())


@pytest.mark.parametrize("n", [1, 5, 15, 16, 17, 40])
def test_rolling_windows_are_lm_evals(n: int) -> None:
    lm_eval_utils = pytest.importorskip("lm_eval.utils", reason="optional extra: pip install -e .[eval]")
    get_rolling_token_windows, make_disjoint_window = (lm_eval_utils.get_rolling_token_windows,
                                                       lm_eval_utils.make_disjoint_window)

    tokens = list(range(100, 100 + n))
    reference = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 0, 16, 1)]
    # lm-eval feeds (context + continuation)[:-1] and scores the continuation
    assert rolling_windows(tokens, 0, 16) == [((c + t)[:-1], t) for c, t in reference]
    assert [t for _, targets in rolling_windows(tokens, 0, 16) for t in targets] == tokens


def test_validation_segments_per_corpus_member(tmp_path) -> None:
    """The default corpus is cached as one stream: its validation documents (sorted by member, each followed by EOS)
    are cut back into one segment per member through the document index; hand-made index, hand-computed cuts."""
    import json

    import numpy as np

    from train.data.cache import val_by_member

    (tmp_path / "docs.json").write_text(json.dumps({"train": [], "val": [
        ["pydoc/a", 0, 3], ["pydoc/b", 4, 1], ["wiki/x", 6, 2], ["wiki/y", 9, 4]]}))
    val = np.arange(14)
    members = {"source": {"members": ["pydoc", "wiki"]}}
    got = val_by_member(tmp_path, members, val)
    assert {k: [s.tolist() for s in v] for k, v in got.items()} == {"pydoc": [list(range(0, 6))],
                                                                    "wiki": [list(range(6, 14))]}
    assert val_by_member(tmp_path, {"source": {"members": ["wiki"]}}, val) == {}  # one member: nothing to split
