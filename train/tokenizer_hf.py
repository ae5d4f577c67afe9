"""Our tokenizers as files that ``transformers.AutoTokenizer.from_pretrained(dir)`` reads and encodes with exactly.

Two things decide whether transformers encodes like we do:

- ``tokenizer.json`` must hold the whole pipeline. For tiktoken BPEs (qwen, gpt2) it is built here from the ranks:
  vocabulary = ranks (bytes written with GPT-2's byte → printable-character map), merges = every split of a token
  into two tokens, ordered by the rank of the merged token (the order tiktoken merges in; the same derivation as
  transformers' ``TikTokenConverter``), the same split regex, and ``ignore_merges`` because tiktoken takes a piece
  that is a whole token directly.
- ``tokenizer_config.json`` must name the generic fast tokenizer. Without it transformers picks the model type's
  class (``Qwen2Tokenizer`` for a Qwen3 export), which rebuilds its own pre-tokenizer and splits digits one by one
  ("In 1850, the city of": 10 ids instead of our 7). It also sets eos/pad, and ``split_special_tokens`` because we
  encode text literally: a ``<|endoftext|>`` inside a document is data, not the end-of-text id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from train.errors import DataError

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


def _byte_to_char() -> dict[int, str]:
    """GPT-2's reversible byte → printable unicode map (openai/gpt-2 ``encoder.py:bytes_to_unicode``), the alphabet
    of byte-level BPE vocabularies in ``tokenizer.json``."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def bpe_from_ranks(ranks: Mapping[bytes, int], pattern: str, specials: Mapping[str, int]):  # -> tokenizers.Tokenizer
    """A ``tokenizers`` BPE that encodes like ``tiktoken.Encoding(pat_str=pattern, mergeable_ranks=ranks)``'s
    ``encode_ordinary`` and knows ``specials`` (string → id) as special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    table = str.maketrans({chr(b): c for b, c in _byte_to_char().items()})
    text = {token: token.decode("latin-1").translate(table) for token in ranks}  # bytes → vocabulary string
    merges: list[tuple[int, str, str]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in text and right in text:
                merges.append((rank, text[left], text[right]))
    merges.sort()
    vocab = {text[token]: rank for token, rank in ranks.items()} | dict(specials)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, a, b in merges], ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    wrong = {s: tok.token_to_id(s) for s, i in specials.items() if tok.token_to_id(s) != i}
    if wrong:
        raise DataError(f"special tokens got other ids in tokenizer.json: {wrong}")
    return tok


def write_transformers_config(directory: Path, eos_token: str) -> Path:
    """``tokenizer_config.json`` next to a ``tokenizer.json``: the generic fast class, eos = pad = ``eos_token``
    (Qwen's choice: no separate pad token), no BOS and nothing added around a text, special strings in text encoded
    literally (``split_special_tokens``), decoding without space clean-up."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # transformers 4 and 5: the tokenizer.json backend as is
        "eos_token": eos_token,
        "pad_token": eos_token,
        "bos_token": None,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
    }
    path = Path(directory) / TOKENIZER_CONFIG
    path.write_text(json.dumps(config, indent=1) + "\n")
    return path
