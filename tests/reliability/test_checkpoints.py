"""Corrupt / truncated checkpoints, fallback on --resume, a resume with another model config, kill-safe save()."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from train.errors import CheckpointError
from tests.conftest import tiny_overrides
from tests.runs import argv, assert_one_line_error, series
from train import checkpoint
from train.__main__ import main


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "state-garbled": lambda d: _garble(d / "state.pt"),
    "state-truncated": lambda d: (d / "state.pt").write_bytes((d / "state.pt").read_bytes()[:100]),
    "state-missing": lambda d: (d / "state.pt").unlink(),
    "manifest-truncated": lambda d: (d / "manifest.json").write_text((d / "manifest.json").read_text()[:20]),
    "manifest-missing": lambda d: (d / "manifest.json").unlink(),
    "manifest-wrong-hash": lambda d: (d / "manifest.json").write_text(json.dumps(
        {"format": 1, "step": 3, "files": {"state.pt": {"sha256": "0" * 64, "bytes": 1}}})),
    "manifest-not-a-dict": lambda d: (d / "manifest.json").write_text("[1, 2]"),
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_corrupt_checkpoint_is_one_line_error_naming_the_file(tmp_path: Path, how: str) -> None:
    state = {"model": {"w": torch.arange(1000.0)}, "trainer": {"step": 3}}
    for step in (2, 3):
        checkpoint.save(tmp_path, step, state, keep=3)
    newest = checkpoint.list_checkpoints(tmp_path)[-1]
    CORRUPTIONS[how](newest)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(newest)
    message = str(info.value)
    assert "\n" not in message and str(newest) in message
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        path, loaded = checkpoint.load_latest(tmp_path)
    assert path.name == "step_000002" and torch.equal(loaded["model"]["w"], state["model"]["w"])


def test_a_non_checkpoint_pickle_is_rejected(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, 1, [1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="does not hold a training state"):
        checkpoint.load(checkpoint.list_checkpoints(tmp_path)[0])


def test_resave_and_prune_never_leave_a_half_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """A crash between the steps of a re-save or a prune leaves only complete step_* directories."""
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"step": step}, keep=3)

    real_rmtree = checkpoint.shutil.rmtree

    def crash(path, *args, **kwargs):
        if Path(path).name.startswith((".old-", ".trash-")):
            raise OSError("simulated crash")
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", crash)  # die right after the renames, before any delete
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, 3, {"step": 33}, keep=3)  # re-save of step 3: old copy renamed aside first
    monkeypatch.undo()
    for path in checkpoint.list_checkpoints(tmp_path):
        checkpoint.load(path)  # every visible checkpoint verifies
    assert checkpoint.load_latest(tmp_path)[1] == {"step": 33}
    checkpoint.save(tmp_path, 4, {"step": 4}, keep=2)  # the next save sweeps the leftovers
    root = checkpoint.checkpoint_dir(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["step_000003", "step_000004"]


def test_resume_falls_back_past_a_corrupt_checkpoint_and_continues_identically(
    text_corpus: Path, tmp_path: Path, capsys
) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 4, "train.ckpt_every": 1,
                                                    "train.keep_checkpoints": 3})
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(argv(sets, straight)) == 0
    assert main(argv(sets, split, "--stop-after", "3")) == 0
    _, second, newest = checkpoint.list_checkpoints(split)
    assert newest.name == "step_000003"
    _garble(newest / "state.pt")
    (second / "manifest.json").write_text("{")
    capsys.readouterr()
    assert main(argv(sets, split, "--resume")) == 0
    out, err = capsys.readouterr()
    assert "resumed from" in out and "step_000001" in out
    assert err.count("warning: skipping checkpoint") == 2 and str(newest / "state.pt") in err, err
    assert "Traceback" not in err
    assert series(straight, "train/loss") == series(split, "train/loss")
    assert series(straight, "val/loss") == series(split, "val/loss")
    # step 2 was re-saved over the corrupt one; the corrupt step 3 (newer than the resume point when step 2 was
    # saved) was moved out of the way so it can neither shadow nor evict good checkpoints
    names = sorted(p.name for p in checkpoint.checkpoint_dir(split).iterdir())
    assert names[0].startswith("rejected-step_000003-"), names
    assert names[1:] == ["step_000002", "step_000003", "step_000004"], names
    for path in checkpoint.list_checkpoints(split):
        checkpoint.load(path)


def test_every_checkpoint_corrupt_is_one_line_error(text_corpus: Path, tmp_path: Path, capsys) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 4})
    run = tmp_path / "run"
    assert main(argv(sets, run, "--stop-after", "1")) == 0
    for path in checkpoint.list_checkpoints(run):
        (path / "state.pt").write_bytes(b"")
    capsys.readouterr()
    rc = main(argv(sets, run, "--resume"))
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert_one_line_error(rc, "\n".join(line for line in err.splitlines() if not line.startswith("warning: ")),
                          "no valid checkpoint", "state.pt")
    assert len(warnings) == 1


def test_resume_with_another_model_config_changes_nothing(text_corpus: Path, tmp_path: Path, capsys) -> None:
    sets = tiny_overrides(text_corpus, tmp_path / "cache", **{"train.max_steps": 4})
    run = tmp_path / "run"
    assert main(argv(sets, run, "--stop-after", "2")) == 0
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    rc = main(argv([*sets, "model.hidden=64", "model.mlp_hidden=128"], run, "--resume"))
    assert_one_line_error(rc, capsys.readouterr().err, "different model config", "model.hidden: checkpoint 32, this run 64")
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # config.toml, tokenizer, metrics.jsonl and checkpoints untouched


def test_every_rng_is_restored(tmp_path: Path) -> None:
    """Python, NumPy, torch (and CUDA, where present) generators continue identically after a checkpoint round trip."""

    def draws() -> list[float]:
        cuda = [torch.rand(1, device="cuda").item()] if torch.cuda.is_available() else []
        return [random.random(), float(np.random.rand()), torch.rand(1).item(), *cuda]

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draws()  # not at the seed's start: the saved positions matter
    rng = checkpoint.RNGState()
    checkpoint.save(tmp_path, 1, {"rng": rng.state_dict()})
    expected = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    rng.load_state_dict(checkpoint.load(checkpoint.list_checkpoints(tmp_path)[0])["rng"])
    assert draws() == expected
