"""Run configuration: TOML presets + ``--set key=value`` overrides → typed, validated dataclasses.

Each section maps to the dataclass of the package that owns the concept (``[model]`` → ``models.ModelConfig``,
``[model.moe]`` → ``moe.MoEConfig``, ``[optim]`` → ``hyperp.optim.OptimConfig``, ``[data]`` → ``train.data.DataConfig``).
Unknown keys, wrong types and impossible values raise :class:`~hyperp.errors.ConfigError` with one line naming the
key (with a "did you mean" hint for typos).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hyperp.errors import ConfigError, check_choice
from hyperp.optim.config import OptimConfig
from models.config import ModelConfig
from train.data import DataConfig
from train.monitors.config import MonitorConfig


@dataclass
class TrainConfig:
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 500
    warmup_steps: int = 0  # HyperP/ArchScale: no warmup under MuonH
    decay: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_mult: float = 0.1  # final lr = min_lr_mult × peak (ArchScale)
    eval_every: int = 100
    eval_batches: int = 8
    eval_per_source: bool = True  # also val/<source>/loss and /bpb per source (corpus member); train.eval.validation
    ckpt_every: int = 100
    keep_checkpoints: int = 3  # the newest N are kept, plus the pinned ones (the last before a spike or divergence)
    keep_pinned: int = 3  # pinned checkpoints kept (the newest N pins)
    log_every: int = 10
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast on CUDA, fp32 on CPU. float64: parameters and activations in fp64 (numerical tests:
    # rounding ~1e-16 makes two reduction orders comparable with a machine-independent bound).
    dtype: Literal["auto", "float32", "bfloat16", "float64"] = "auto"
    max_nonfinite: int = 5  # consecutive skipped (NaN/Inf) steps before the run stops
    # Data parallelism under torchrun (train.distributed; ignored in a plain single-process run). batch_size is
    # per rank: the global batch is batch_size × grad_accum × world_size.
    parallel: Literal["ddp", "fsdp"] = "ddp"
    # Expert parallelism under torchrun: the routed experts of every MoE layer sharded over groups of this many
    # ranks (a data-parallel × expert-parallel mesh; it must divide the world size and model.moe.num_experts).
    expert_parallel: int = 1
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    # torch.compile the model's forward (the optimizer runs eagerly, as it is); monitor steps run eagerly (hooks).
    compile: bool = False
    # A transformers Qwen3 / Qwen3-MoE save_pretrained directory to start from (train.init_from): its architecture
    # replaces [model]'s shape keys, its weights the init (see train/init_from.py).
    init_from: str | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_steps", "eval_every", "eval_batches", "ckpt_every",
                     "keep_checkpoints", "keep_pinned", "log_every", "max_nonfinite",
                     "expert_parallel"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        if self.warmup_steps < 0 or self.warmup_steps >= self.max_steps:
            raise ConfigError(f"train.warmup_steps={self.warmup_steps} must be in [0, train.max_steps)")
        if not 0.0 <= self.min_lr_mult <= 1.0:
            raise ConfigError(f"train.min_lr_mult={self.min_lr_mult} must be in [0, 1]")


@dataclass
class TransferConfig:
    """The base scale of HyperP's lr transfer (SPEC §3); unset fields default to the run's own scale (factor 1)."""

    base_width: int | None = None
    base_depth: int | None = None
    base_tokens: float | None = None
    base_batch_tokens: float | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and value <= 0:
                raise ConfigError(f"hyperp.{f.name}={value} must be > 0")


@dataclass
class LogConfig:
    wandb: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "hyperp-moe"
    wandb_entity: str | None = None  # team or user (default: the API key's default entity)
    wandb_group: str | None = None  # e.g. one sweep (train.sweep sets the sweep's name unless given)
    wandb_tags: tuple[str, ...] = ()
    wandb_name: str | None = None  # display name (default: the run's name)
    progress: bool = True


@dataclass
class RunConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hyperp: TransferConfig = field(default_factory=TransferConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\ "):
            raise ConfigError(f"name={self.name!r} must be a non-empty run name without slashes or spaces")
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        ep, moe = self.train.expert_parallel, self.model.moe
        if ep > 1 and moe is None:
            raise ConfigError(f"train.expert_parallel={ep} needs an MoE model (a [model.moe] section)")
        if ep > 1 and moe.num_experts % ep:
            raise ConfigError(f"train.expert_parallel={ep} must divide model.moe.num_experts={moe.num_experts}")

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))


def _drop_none(value: Any) -> Any:
    """TOML has no null: omit unset optional fields so a saved config loads back."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (tuple, list)):  # e.g. data.sources, a list of tables
        return [_drop_none(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- dict → dataclass


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}={value!r} has the wrong type")
    if origin is Literal:
        check_choice(key, value, typing.get_args(hint))
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        args = typing.get_args(hint)
        item_hint = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if item_hint is None and len(args) != len(value):
            raise ConfigError(f"{key}={value!r} must have {len(args)} items")
        hints = [item_hint] * len(value) if item_hint is not None else list(args)
        return tuple(_coerce(v, h, f"{key}[{i}]") for i, (v, h) in enumerate(zip(value, hints)))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return build(hint, value, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # e.g. undecodable bytes on the command line (surrogate escapes)
            raise ConfigError(f"{key}={value!r} is not valid UTF-8") from None
        return value
    return value


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (TOML) dict: unknown keys and wrong types raise ConfigError naming the key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{prefix + '.' if prefix else ''}{missing[0]} is required (no default)")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # A nested section validates itself with its own short prefix ("moe.top_k"); name the full key.
        short = prefix.rsplit(".", 1)[-1]
        if "." in prefix and str(err).startswith(short + "."):
            raise ConfigError(re.sub(rf"(?<![\w.]){short}\.", prefix + ".", str(err))) from None
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix or 'config'}: {str(err).splitlines()[0]}") from None


# ---------------------------------------------------------------------------------------------- files and overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.moe.top_k=4"`` → (["model", "moe", "top_k"], 4); values are TOML literals, else plain strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r} must look like section.key=value")
    raw = raw.strip()
    if any(c in text for c in "\n\r\x00"):
        raise ConfigError(f"--set {text!r} must be a single line")
    try:
        parsed = tomllib.loads(f"v = {raw}")
        value = parsed["v"] if list(parsed) == ["v"] else raw
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} is a value, not a section")
        node = child
    node[path[-1]] = value


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {str(err).splitlines()[0]}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    for text in overrides:
        apply_override(data, *parse_override(text))
    return build(RunConfig, data)


def dump_toml(cfg: RunConfig) -> str:
    """Serialise a config so that ``load_config`` reads back an equal one."""
    lines: list[str] = []

    def emit(table: dict[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if prefix and scalars:
            lines.append(f"\n[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{key} = {_toml_value(value)}")
        for key, value in table.items():
            if isinstance(value, dict):
                emit(value, f"{prefix}.{key}" if prefix else key)

    emit(cfg.to_dict(), "")
    return "\n".join(lines).lstrip() + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # a TOML basic string: JSON's escapes are valid TOML; DEL must be escaped too
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, float):
        return repr(value) if value == value and value not in (float("inf"), float("-inf")) else f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table (data.sources entries)
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)
