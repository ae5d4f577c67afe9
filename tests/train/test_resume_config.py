"""Resume semantics: every config key is classified; keys that must match or cannot change are one-line errors
that change nothing; keys that may change take effect from the resumed step (the lr against a closed form), are
reported, and config.toml records them."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from pathlib import Path

from tests.conftest import tiny_overrides
from tests.runs import argv, assert_one_line_error, records, series
from train.__main__ import main
from train.config import RunConfig
from train.resume import RESUME_RULES, OnResume, differences


def _leaf_keys(cls: type, prefix: str = "") -> set[str]:
    """Every key a config can hold, walked from the dataclasses (an optional section is a key itself; a list of
    tables, data.sources, is one key: resume compares it whole)."""
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        args = () if typing.get_origin(hint) is tuple else typing.get_args(hint)
        inner = [a for a in (hint, *args) if dataclasses.is_dataclass(a)]
        key = f"{prefix}{f.name}"
        if inner:
            out |= _leaf_keys(inner[0], key + ".")
            if type(None) in typing.get_args(hint):
                out.add(key)  # model.moe: present or not
        else:
            out.add(key)
    return out


def test_every_config_key_is_classified() -> None:
    keys = _leaf_keys(RunConfig)
    assert "model.moe.aux_weight" in keys and "optim.lr" in keys and "model.moe" in keys
    assert set(RESUME_RULES) == keys, (sorted(keys - set(RESUME_RULES)), sorted(set(RESUME_RULES) - keys))


def test_a_key_the_checkpoint_predates_counts_as_its_default() -> None:
    saved = {"train": {"max_steps": 5}}
    assert differences(saved, {"train": {"max_steps": 5, "keep_pinned": 3}}) == []  # 3 is the default
    (change,) = differences(saved, {"train": {"max_steps": 5, "keep_pinned": 4}})
    assert (change.key, change.saved, change.current) == ("train.keep_pinned", 3, 4)


def _snapshot(run: Path) -> dict[Path, bytes]:
    return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_keys_that_must_match_or_cannot_change_are_refused(text_corpus: Path, tmp_path: Path, capsys) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 4})
    run = tmp_path / "run"
    assert main(argv(sets, run, "--stop-after", "2")) == 0
    before = _snapshot(run)
    other = tmp_path / "other-corpus"
    other.mkdir()
    for doc in sorted(text_corpus.iterdir())[:40]:
        (other / doc.name).write_text(doc.read_text())
    assert RESUME_RULES["data.tokenizer"][0] is OnResume.MATCH
    assert RESUME_RULES["train.batch_size"][0] is OnResume.FIXED
    cases = [  # (the change, what the one line must say)
        (['data.tokenizer="bpe-600"', "model.vocab_size=600"],
         ("different data config", "data.tokenizer: checkpoint 'bpe-512', this run 'bpe-600'", "another --out")),
        ([f'data.path="{other}"'], ("different data config", "data.path: checkpoint")),
        (["train.batch_size=8"], ("global batch", "cannot change on resume", "checkpoint 4×1×1 = 4, this run 8×1×1 = 8")),
        (['optim.name="adamw"'], ("optim.name cannot change on resume", "'muonh'", "'adamw'")),
    ]
    for change, needles in cases:
        capsys.readouterr()
        rc = main(argv([*sets, *change], run, "--resume"))
        assert_one_line_error(rc, capsys.readouterr().err, *needles)
    assert _snapshot(run) == before  # tokenizer/, config.toml, metrics and checkpoints untouched


def test_same_global_batch_may_be_resplit_on_resume(text_corpus: Path, tmp_path: Path, capsys) -> None:
    """Per-rank batch × accumulation may be re-split (as another world size needs: tests/distributed resumes a world-2
    run at world 1); the global batch is what the data position and HyperP's batch factor count."""
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 4})
    run = tmp_path / "run"
    assert main(argv(sets, run, "--stop-after", "2")) == 0
    capsys.readouterr()
    assert main(argv([*sets, "train.batch_size=2", "train.grad_accum=2"], run, "--resume")) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("resumed with changes"))
    assert "train.batch_size 4 → 2" in line and "train.grad_accum 1 → 2" in line


def test_lr_and_cadence_changes_take_effect_on_resume(text_corpus: Path, tmp_path: Path, capsys) -> None:
    """Issue 22 (1): the lr restored from the optimizer's state dict used to win over --set optim.lr."""
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 6})
    run = tmp_path / "run"
    assert main(argv(sets, run, "--stop-after", "4")) == 0
    capsys.readouterr()
    new_lr, max_steps = 0.0002, 10
    changed = [*sets, f"optim.lr={new_lr}", f"train.max_steps={max_steps}", "train.eval_every=2",
               "optim.betas=[0.8, 0.9]"]
    assert main(argv(changed, run, "--resume")) == 0
    out = capsys.readouterr().out
    lr = series(run, "train/lr")
    # Closed form of the linear schedule (train.schedule: no warmup, decay to min_lr_mult = 0.1 of the peak) with no
    # [hyperp] base set (transfer factor 1): lr(step s, 1-based) = peak · (0.1 + 0.9 · (1 − (s − 1) / max_steps)).
    for step in range(5, max_steps + 1):
        assert abs(lr[step] - new_lr * (0.1 + 0.9 * (1 - (step - 1) / max_steps))) <= 1e-12 * new_lr, (step, lr[step])
    assert abs(lr[4] - 0.02 * (0.1 + 0.9 * (1 - 3 / 6))) <= 1e-12  # before the resume: the old peak and schedule
    assert sorted(series(run, "val/loss")) == [3, 6, 8, 10]  # eval every 3 until step 4, then every 2
    line = next(x for x in out.splitlines() if x.startswith("resumed with changes"))
    assert f"optim.lr 0.02 → {new_lr}" in line and "train.max_steps 6 → 10" in line and "peak lr sphere" in line
    event = next(r for r in records(run) if r.get("event") == "config_change")
    assert event["step"] == 5 and any(c.startswith("optim.betas") for c in event["changes"])
    saved = tomllib.loads((run / "config.toml").read_text())
    assert saved["optim"]["lr"] == new_lr and saved["train"]["max_steps"] == max_steps
    assert saved["optim"]["betas"] == [0.8, 0.9]


def test_resume_without_config_reads_the_run_config(text_corpus: Path, tmp_path: Path, capsys) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 4})
    run = tmp_path / "run"
    assert main(argv(sets, run, "--stop-after", "2")) == 0
    capsys.readouterr()
    assert main(["--out", str(run), "--resume", "--set", "optim.lr=0.001"]) == 0
    assert "optim.lr 0.02 → 0.001" in capsys.readouterr().out
    assert tomllib.loads((run / "config.toml").read_text())["optim"]["lr"] == 0.001
    assert sorted(series(run, "train/loss")) == [1, 2, 3, 4]
    rc = main(["--out", str(tmp_path / "elsewhere"), "--resume"])
    assert_one_line_error(rc, capsys.readouterr().err, "config.toml", "--config")


def test_a_different_tokenizer_under_the_same_settings_is_refused(text_corpus: Path, tmp_path: Path, capsys) -> None:
    """Issue 22 (2): the run's tokenizer/ was overwritten by whatever the data settings produced on resume."""
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 4})
    run = tmp_path / "run"
    assert main(argv(sets, run, "--stop-after", "2")) == 0
    saved = run / "tokenizer" / "tokenizer.json"
    spec = json.loads(saved.read_text())
    vocab = spec["model"]["vocab"]
    a, b = list(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two token ids swapped: the same vocabulary size, other text per id
    saved.write_text(json.dumps(spec))
    before = _snapshot(run)
    capsys.readouterr()
    rc = main(argv(sets, run, "--resume"))
    assert_one_line_error(rc, capsys.readouterr().err, "tokenizer", str(run / "tokenizer"), "differs")
    assert _snapshot(run) == before
