"""``[data]``: where tokens come from (one corpus/path, or a weighted mixture of sources) and how they are cut."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from hyperp.errors import ConfigError
from train.data.corpus import CORPORA

DECODE_ERRORS = ("strict", "replace")


def _check_path(value: object, key: str) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{key} must be a non-empty string or unset")


@dataclass
class SourceConfig:
    """One stream of a mixture: a built-in ``corpus`` or a ``path`` (text, or token files read in place), sampled
    with probability proportional to ``weight``. ``name`` labels its metrics (default: the corpus or the path's stem)."""

    path: str | None = None
    corpus: str | None = None
    weight: float = 1.0
    name: str | None = None

    def validate(self, key: str) -> None:
        _check_path(self.path, f"{key}.path")
        if (self.path is None) == (self.corpus is None):
            raise ConfigError(f"{key} needs exactly one of path or corpus")
        if self.corpus is not None and self.corpus not in CORPORA:
            raise ConfigError(f"{key}.corpus must be one of {', '.join(CORPORA)}, got {self.corpus!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not (
            math.isfinite(self.weight) and self.weight > 0
        ):
            raise ConfigError(f"{key}.weight must be a positive number, got {self.weight!r}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name or "/" in self.name):
            raise ConfigError(f"{key}.name must be a non-empty string without '/', got {self.name!r}")

    @property
    def label(self) -> str:
        if self.name or self.corpus:
            return self.name or self.corpus
        path = Path(str(self.path))
        return (path.parent.name if any(c in path.name for c in "*?[") else path.stem) or "source"


@dataclass
class DataConfig:
    """Where the text or tokens come from, how text is tokenized, and how tokens are cut into training windows.

    ``path`` overrides ``corpus``; ``sources`` (a list of :class:`SourceConfig`) replaces both with a weighted
    mixture. Relative ``path``/``cache_dir`` resolve against the working directory. ``doc_separator`` splits text
    files into documents (``"blank"`` = blank lines, else a literal string). ``decode_errors = "replace"`` decodes
    invalid UTF-8 with U+FFFD (counted in the data stats) instead of stopping. ``prefetch`` batches are built ahead
    in a background thread (0 = on the training thread).
    """

    corpus: str = "default"
    path: str | None = None
    tokenizer: str = "bpe-8k"
    seq_len: int = 256
    val_fraction: float = 0.01
    cache_dir: str = "data"
    seed: int = 0
    doc_separator: str | None = None
    sources: tuple[SourceConfig, ...] = ()
    decode_errors: str = "strict"
    prefetch: int = 2
    # A fault-injection hook (the instability suite's bad batch): at these optimizer steps (1-based) every training
    # window is its first token repeated, the degenerate batch behind many real loss spikes.
    repeat_token_at: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.sources = tuple(s if isinstance(s, SourceConfig) else SourceConfig(**s) for s in self.sources)
        self.repeat_token_at = tuple(self.repeat_token_at)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if self.path is None and self.corpus not in CORPORA:
            raise ConfigError(f"data.corpus must be one of {', '.join(CORPORA)}, got {self.corpus!r}")
        _check_path(self.path, "data.path")
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise ConfigError("data.tokenizer must be a non-empty string (bpe-8k, bpe-16k, qwen, gpt2, or a path)")
        for name in ("seq_len", "seed", "prefetch"):
            value, low = getattr(self, name), 1 if name == "seq_len" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"data.{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)):
            raise ConfigError(f"data.val_fraction must be a number, got {self.val_fraction!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if not isinstance(self.cache_dir, str) or not self.cache_dir:
            raise ConfigError("data.cache_dir must be a non-empty string")
        if self.doc_separator is not None and (not isinstance(self.doc_separator, str) or not self.doc_separator):
            raise ConfigError("data.doc_separator must be a non-empty string ('blank' = blank lines) or unset")
        if self.decode_errors not in DECODE_ERRORS:
            raise ConfigError(f"data.decode_errors must be one of {', '.join(DECODE_ERRORS)}, got {self.decode_errors!r}")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.repeat_token_at):
            raise ConfigError(f"data.repeat_token_at must list optimizer steps >= 1, got {list(self.repeat_token_at)}")
        self._validate_sources()

    def _validate_sources(self) -> None:
        if not self.sources:
            return
        if self.path is not None or self.corpus != "default":
            raise ConfigError("set either data.sources or data.corpus/data.path, not both")
        for i, source in enumerate(self.sources):
            source.validate(f"data.sources[{i}]")
        labels = [s.label for s in self.sources]
        dup = next((x for x in labels if labels.count(x) > 1), None)
        if dup is not None:
            raise ConfigError(f"data.sources has two sources named {dup!r}; give them distinct name = \"...\"")

    def source_list(self) -> list[SourceConfig]:
        """The sources to read: ``sources``, or the single ``path``/``corpus`` as one source of weight 1."""
        if self.sources:
            return list(self.sources)
        if self.path is not None:
            return [SourceConfig(path=self.path)]
        return [SourceConfig(corpus=self.corpus)]
