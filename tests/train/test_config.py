"""Config loading: presets parse, overrides apply, bad input gives one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperp.errors import ConfigError
from train.config import RunConfig, dump_toml, load_config, parse_override

PRESETS = sorted(Path("configs").glob("*.toml"))


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads_and_round_trips(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    again = tmp_path / "again.toml"
    again.write_text(dump_toml(cfg))
    assert load_config(again) == cfg


def test_override_types() -> None:
    assert parse_override("optim.lr=3e-3") == (["optim", "lr"], 3e-3)
    assert parse_override("model.mlp_only_layers=[0, 2]") == (["model", "mlp_only_layers"], [0, 2])
    assert parse_override("name=plain-string") == (["name"], "plain-string")
    cfg = load_config(None, ["model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.expert_hidden=16"])
    assert cfg.model.moe is not None and cfg.model.moe.top_k == 2


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.hiden=64", "model.hiden"),  # typo → named, with a hint
        ("optim.lr=-1", "optim.lr"),
        ("optim.name=sgd", "optim.name"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.max_steps=1.5", "train.max_steps"),
        ("model.n_kv_heads=3", "model.n_kv_heads"),
        ("model.moe.num_experts=4", "model.moe"),  # missing top_k / expert_hidden
        ("data.seq_len=4096", "data.seq_len"),
        ("log.wandb=maybe", "log.wandb"),
        ("noequals", "--set"),
        ("train=3", "train"),
    ],
)
def test_bad_values_name_the_key_in_one_line(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_typo_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean model.hidden"):
        load_config(None, ["model.hiden=64"])


def test_defaults_are_valid() -> None:
    assert isinstance(RunConfig(), RunConfig)
