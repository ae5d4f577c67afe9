"""Bad input everywhere → one ``error: ...`` line naming the problem, exit code 2, no traceback, nothing written.

Property-based: random ``--set`` strings / values and random command lines never raise anything but a one-line
ConfigError at config-build level (no training inside the hypothesis loops).
"""

from __future__ import annotations

import dataclasses
import string
import tomllib
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperp.errors import ConfigError
from tests.conftest import tiny_overrides
from tests.runs import argv, assert_one_line_error
from train.__main__ import build_parser, main
from train.config import RunConfig, build, dump_toml, load_config


def _run(capsys, args: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(args)
    return rc, capsys.readouterr().err


CASES = {  # extra --set strings (after the tiny ones) / extra CLI args → text the one error line must contain
    "unknown-key": (["model.hiden=64"], [], "did you mean model.hidden"),
    "unknown-section": (["trian.max_steps=3"], [], "did you mean train"),
    "mistyped-int": (["train.max_steps=abc"], [], "train.max_steps='abc' must be an integer"),
    "float-for-int": (["model.hidden=32.5"], [], "model.hidden"),
    "string-for-bool": (["log.progress=maybe"], [], "log.progress"),
    "top_k-above-experts": (["model.moe.num_experts=4", "model.moe.top_k=9", "model.moe.expert_hidden=8"], [],
                            "top_k=9 must be <="),
    "moe-field-missing": (["model.moe.num_experts=4", "model.moe.top_k=2"], [], "model.moe.expert_hidden is required"),
    "kv-heads-not-dividing-heads": (["model.n_kv_heads=2", "model.n_heads=3"], [], "n_kv_heads"),
    "seq-len-above-max": (["data.seq_len=64"], [], "data.seq_len"),
    "infinite-lr": (["optim.lr=inf"], [], "optim.lr"),
    "nan-lr": (["optim.lr=nan"], [], "optim.lr"),
    "negative-lr": (["optim.lr=-1"], [], "optim.lr"),
    "bad-optimizer": (["optim.name=sgd"], [], "optim.name"),
    "value-as-section": (["name.x=1"], [], "name"),
    "no-equals": (["model.hidden"], [], "section.key=value"),
    "multi-line-value": (["train.max_steps=3\nfoo=1"], [], "single line"),
    "max-steps-not-int": ([], ["--max-steps", "abc"], "invalid int value"),
    "max-steps-zero": ([], ["--max-steps", "0"], "train.max_steps=0"),
    "stop-after-zero": ([], ["--stop-after", "0"], "--stop-after=0"),
    "unknown-flag": ([], ["--frobnicate"], "unrecognized arguments"),
    "resume-nothing": ([], ["--resume"], "no checkpoint"),
    "missing-data": (["data.path=\"/nonexistent/corpus\""], [], "/nonexistent/corpus"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line(case: str, text_corpus: Path, tmp_path: Path, capsys) -> None:
    sets, extra, needle = CASES[case]
    out = tmp_path / "run"
    rc, err = _run(capsys, argv([*tiny_overrides(text_corpus, tmp_path / "cache"), *sets], out, *extra))
    assert rc == 2
    assert_one_line_error(rc, err, needle)
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize(("sets", "needle"), [
    (["model.hidden=30", "model.n_heads=4"], "model.n_heads=4 must divide model.hidden=30"),
    (["model.head_dim=7", "model.n_heads=2", "model.n_kv_heads=1"], "even for RoPE"),
    (["model.moe.num_experts=0", "model.moe.top_k=1", "model.moe.expert_hidden=8"], "num_experts"),
    (["model.moe.num_experts=4", "model.moe.top_k=0", "model.moe.expert_hidden=8"], "top_k"),
    (["model.mlp_only_layers=[5]"], "mlp_only_layers"),
    (["train.warmup_steps=500", "train.max_steps=10"], "warmup_steps"),
    (["optim.betas=[0.9]"], "optim.betas"),
    (["model.vocab_size=-5"], "model.vocab_size"),
])
def test_impossible_shapes_are_one_line_config_errors(sets: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, sets)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_missing_and_corrupt_config_file(tmp_path: Path, capsys) -> None:
    assert_one_line_error(*_run(capsys, ["--config", str(tmp_path / "nope.toml")]), "nope.toml", "not found")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nhidden = ")
    assert_one_line_error(*_run(capsys, ["--config", str(bad)]), "bad.toml", "not valid TOML")
    bad.write_bytes(b"\xff\xfe\x00")
    assert_one_line_error(*_run(capsys, ["--config", str(bad)]), "bad.toml")


def test_out_is_a_file_or_under_a_file(text_corpus: Path, tmp_path: Path, capsys) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(*_run(capsys, argv(sets, blocker)), str(blocker), "not a directory")
    assert_one_line_error(*_run(capsys, argv(sets, blocker / "run")), str(blocker / "run"), "Not a directory")
    assert blocker.read_text() == "x"


def test_corrupt_data_cache_is_one_line(text_corpus: Path, tmp_path: Path, capsys) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 1})
    assert main(argv(sets, tmp_path / "ok")) == 0
    manifests = list((tmp_path / "cache").rglob("manifest.json"))
    token_files = [p for p in manifests[0].parent.iterdir() if p.name.startswith("train") and p.suffix != ".json"]
    assert token_files, list(manifests[0].parent.iterdir())
    data = token_files[0].read_bytes()
    token_files[0].write_bytes(data[: len(data) // 2])
    rc, err = _run(capsys, argv(sets, tmp_path / "truncated"))
    assert_one_line_error(rc, err, str(token_files[0]))
    token_files[0].write_bytes(data)
    manifests[0].write_text("{not json")
    rc, err = _run(capsys, argv(sets, tmp_path / "manifest"))
    assert_one_line_error(rc, err, "manifest")
    assert not (tmp_path / "truncated").exists() and not (tmp_path / "manifest").exists()


# ------------------------------------------------------------------------------------------------ properties


def _keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        target = hint if dataclasses.is_dataclass(hint) else (inner[0] if inner else None)
        key = f"{prefix}{f.name}"
        out.append(key)
        if target is not None:
            out += _keys(target, key + ".")
    return out


KEYS = _keys(RunConfig)
VALUES = st.one_of(
    st.sampled_from(["0", "1", "-1", "2", "4", "64", "1e9", "99999999999999999999999", "0.5", "-0.0", "inf", "-inf",
                     "nan", "true", "false", '""', '"x"', '"muonh"', '"sqrt"', "[]", "[1, 2]", "[0.9, 0.95]",
                     "{}", "{a = 1}", "{num_experts = 4, top_k = 2}", "[[1]]", "1979-05-27", "'", '"', "=", "[",
                     "\\", "\t", "🙂", "\x00", "\n1", "\x1f", "\x7f", "\udcff"]),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
KEY = st.one_of(st.sampled_from(KEYS), st.text(alphabet=string.ascii_letters + "._=- ", max_size=20))
BASE = "configs/tiny-moe.toml"


def _one_line_config_error(overrides: list[str]) -> RunConfig | None:
    try:
        cfg = load_config(BASE, overrides)
    except ConfigError as err:
        message = str(err)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        return None
    return cfg


@settings(max_examples=int(__import__("os").environ.get("HYP_N", 150)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(KEY, VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"), min_size=1, max_size=3))
def test_random_overrides_give_a_config_or_a_one_line_error(overrides: list[str]) -> None:
    cfg = _one_line_config_error(overrides)
    if cfg is not None:  # whatever is accepted round-trips through the run dir's config.toml
        assert build(RunConfig, tomllib.loads(dump_toml(cfg))) == cfg


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(["--config", BASE, "--set", "--max-steps", "--stop-after", "--out",
                                           "--resume", "-1", "0", "3", "x", "--", "-h2", "--max", "model.hidden=8"]),
                          st.text(max_size=8)), max_size=6))
def test_random_command_lines_parse_or_give_a_one_line_error(args: list[str]) -> None:
    if any(a in ("-h", "--help") or (a.startswith("--h") and "--help".startswith(a)) for a in args):
        return  # --help prints usage and exits 0 by design
    try:
        ns = build_parser().parse_args(args)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    overrides = list(ns.overrides) + ([f"train.max_steps={ns.max_steps}"] if ns.max_steps is not None else [])
    try:
        load_config(ns.config, overrides)
    except ConfigError as err:
        assert "\n" not in str(err)
