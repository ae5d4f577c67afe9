"""Checkpoints run no code when loaded (issue 27): crafted pickles in every file a checkpoint reads, with a manifest
that matches them, are refused with one line and never run; old checkpoints convert only with --trust-checkpoint.

The payload is a ``__reduce__`` that writes a marker file; :func:`test_the_payload_runs_when_unpickled_in_full`
shows it is live (a full unpickle writes the marker), so a missing marker means it was refused, not that it was inert.
Manifests are rewritten here from the documented format (file → SHA-256 and size), independently of the code.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import io
import json
import os
import pickle
from collections import OrderedDict, deque, namedtuple
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.distributed as dist

from tests.conftest import tiny_overrides
from tests.runs import argv, assert_one_line_error, series
from train import checkpoint
from train.__main__ import main
from train.convert import main as convert_main
from train.errors import CheckpointError
from train.loop import TrainState
from train.serialization import plain


class _Payload:
    """Unpickling this writes ``marker``: what an attacker's checkpoint would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _rehash(ckpt: Path) -> None:
    """Rewrite the manifest so that every file it lists matches again (what an attacker can always do)."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (ckpt / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def _write_old_way(ckpt: Path, state: object, raw_pickle: bool = False) -> None:
    """A single-file checkpoint as the code before issue 27 wrote it: any picklable state, torch.save + manifest."""
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "state.pt").unlink(missing_ok=True)  # a new file: the state may be a memory map of the old one
    if raw_pickle:
        (ckpt / "state.pt").write_bytes(pickle.dumps(state))
    else:
        torch.save(state, ckpt / "state.pt")
    (ckpt / "manifest.json").write_text(json.dumps({"format": 1, "step": 1, "files": {"state.pt": {}}}))
    _rehash(ckpt)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _resume_error(sets: list[str], run: Path, capsys) -> tuple[int, str]:
    """Exit code and stderr of ``--resume`` without the 'skipping checkpoint' warnings."""
    capsys.readouterr()
    rc = main(argv(sets, run, "--resume"))
    err = capsys.readouterr().err
    return rc, "\n".join(line for line in err.splitlines() if not line.startswith("warning: "))


# ------------------------------------------------------------------------------------------------ single file


def test_the_payload_runs_when_unpickled_in_full(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    torch.save({"model": _Payload(marker)}, tmp_path / "state.pt")
    torch.load(tmp_path / "state.pt", weights_only=False)
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("raw_pickle", [False, True], ids=["torch-save", "raw-pickle"])
def test_crafted_state_pt_is_refused_and_never_runs(text_corpus: Path, cache: Path, tmp_path: Path, capsys,
                                                    raw_pickle: bool) -> None:
    marker, run = tmp_path / "marker", tmp_path / "run"
    ckpt = checkpoint.checkpoint_dir(run) / "step_000001"
    _write_old_way(ckpt, {"config": {}, "model": _Payload(marker)}, raw_pickle)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(ckpt)
    assert "\n" not in str(info.value) and str(ckpt / "state.pt") in str(info.value)
    rc, err = _resume_error(tiny_overrides(text_corpus, cache), run, capsys)
    assert_one_line_error(rc, err, "no valid checkpoint", str(ckpt / "state.pt"))
    assert rc == 2
    if not raw_pickle:  # weights_only names what it refused, and the way out for a trusted file
        assert "builtins.exec" in err and "--trust-checkpoint" in err
    assert not marker.exists()


def test_save_refuses_state_that_is_not_plain_data(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"state\.callbacks\.Best\.value: a numpy\.float64 is not a tensor"):
        checkpoint.save(tmp_path, 1, {"model": {"w": torch.ones(2)}, "callbacks": {"Best": {"value": np.float64(1)}}})
    assert checkpoint.list_checkpoints(tmp_path) == []


def test_plain_converts_old_objects() -> None:
    @dataclasses.dataclass
    class Counters:
        step: int

    Pair = namedtuple("Pair", "a b")
    Color = enum.Enum("Color", "RED")
    old = {"np": np.arange(3, dtype=np.uint32), "scalar": np.float64(0.5), "ids": {3, 1, 2}, "window": deque([1, 2]),
           "counters": Counters(7), "pair": Pair(1, np.int64(2)), "color": Color.RED, "keyed": {np.int64(4): "x"},
           "nested": [OrderedDict(w=torch.zeros(1))]}
    new = plain(old, convert=True)
    assert new["np"].dtype == torch.uint32 and new["np"].tolist() == [0, 1, 2]
    assert type(new["scalar"]) is float and new["scalar"] == 0.5
    assert new["ids"] == [1, 2, 3] and new["window"] == [1, 2] and new["counters"] == {"step": 7}
    assert type(new["pair"]) is tuple and new["pair"] == (1, 2) and type(new["pair"][1]) is int
    assert new["color"] == 1 and list(new["keyed"]) == [4] and type(list(new["keyed"])[0]) is int
    assert new["nested"][0] is old["nested"][0]  # plain parts are kept as they are
    with pytest.raises(CheckpointError, match=r"cannot convert state\.bad: a builtins\.object"):
        plain({"bad": object()}, convert=True)


def test_old_checkpoint_converts_only_with_trust_and_resumes_identically(text_corpus: Path, cache: Path,
                                                                         tmp_path: Path, capsys) -> None:
    """A run's checkpoint rewritten the old way, with non-plain objects such as older code or a user's callback put
    there, refuses to resume (pointing at the converter); the converted run continues exactly like an uninterrupted
    one."""
    sets = tiny_overrides(text_corpus, cache, **{"train.max_steps": 4, "train.eval_every": 2, "monitor.every": 1})
    straight, old, new = tmp_path / "straight", tmp_path / "old", tmp_path / "new"
    assert main(argv(sets, straight)) == 0
    assert main(argv(sets, old, "--stop-after", "2")) == 0
    ckpt = checkpoint.list_checkpoints(old)[-1]
    state = checkpoint.load(ckpt)
    keys = state["rng"]["numpy"]["keys"].clone()
    state["trainer"] = TrainState(**state["trainer"])
    state["rng"]["numpy"]["keys"] = keys.numpy().astype(np.uint32)
    alarms = state["callbacks"]["MonitorCallback"]["alarms"]
    alarms["first"] = {k: np.float64(v) for k, v in alarms["first"].items()}
    alarms["active"] = set(alarms["active"])
    _write_old_way(ckpt, state)

    rc, err = _resume_error(sets, old, capsys)
    assert_one_line_error(rc, err, "numpy", f"python -m train.convert {ckpt} --out NEW_RUN --trust-checkpoint")
    assert_one_line_error(convert_main([str(old), "--out", str(new)]), capsys.readouterr().err, "--trust-checkpoint")

    assert convert_main([str(old), "--out", str(new), "--trust-checkpoint"]) == 0
    converted = torch.load(checkpoint.list_checkpoints(new)[-1] / "state.pt", weights_only=True)
    assert converted["trainer"] == dataclasses.asdict(state["trainer"])
    assert torch.equal(converted["rng"]["numpy"]["keys"].to(torch.int64), keys)
    assert converted["callbacks"]["MonitorCallback"]["alarms"]["first"] == alarms["first"]
    assert main(argv(sets, new, "--resume")) == 0
    for key in ("train/loss", "val/loss"):
        assert series(new, key) == {s: v for s, v in series(straight, key).items() if s > 2}
    assert_one_line_error(convert_main([str(old), "--out", str(new), "--trust-checkpoint"]),
                          capsys.readouterr().err, "already has checkpoints")


# ------------------------------------------------------------------------------------------------ sharded


@pytest.fixture(scope="module")
def sharded(text_corpus: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A 2-step run saved by the sharded storage (a one-rank gloo group in this process) and its --set list."""
    from train.__main__ import run

    sets = tiny_overrides(text_corpus, cache, **{"train.max_steps": 2})
    out = tmp_path_factory.mktemp("sharded") / "run"
    with mock.patch.dict(os.environ, {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        try:
            run(argv(sets, out))
        finally:
            dist.destroy_process_group()
    assert checkpoint.is_sharded_checkpoint(checkpoint.list_checkpoints(out)[-1])
    return out, sets


def _trainer_pt_payload(ckpt: Path, marker: Path) -> str:
    torch.save({"config": _Payload(marker)}, ckpt / "trainer.pt")
    return "builtins.exec"


def _metadata_payload(ckpt: Path, marker: Path) -> str:
    (ckpt / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    return "builtins.exec"


def _bytes_item_payload(ckpt: Path, marker: Path) -> str:
    """Point one non-tensor item of the shards (an optimizer hyperparameter) at a pickled payload; its key."""
    metadata = pickle.loads((ckpt / ".metadata").read_bytes())
    index, info = next((i, s) for i, s in metadata.storage_data.items() if ".param_groups." in i.fqn)
    shard = ckpt / info.relative_path
    offset = shard.stat().st_size
    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)
    payload = buffer.getvalue()
    shard.write_bytes(shard.read_bytes() + payload)
    metadata.storage_data[index] = dataclasses.replace(info, offset=offset, length=len(payload))
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))
    return index.fqn


def _metadata_outside(ckpt: Path, marker: Path) -> str:
    """Every item read from ``../../secret``: a file of the run directory, outside the checkpoint."""
    (ckpt.parent.parent / "secret").write_bytes(bytes(1 << 20))
    metadata = pickle.loads((ckpt / ".metadata").read_bytes())
    for index, info in metadata.storage_data.items():
        metadata.storage_data[index] = dataclasses.replace(info, relative_path="../../secret")
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))
    return "outside its checkpoint directory"


ATTACKS = {  # each changes the checkpoint and returns what the one-line error must name
    "trainer.pt": _trainer_pt_payload,
    ".metadata": _metadata_payload,
    "shard-item": _bytes_item_payload,
    "metadata-outside": _metadata_outside,
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_crafted_sharded_checkpoint_is_refused_and_never_runs(sharded: tuple[Path, list[str]], tmp_path: Path,
                                                              capsys, attack: str) -> None:
    source, sets = sharded
    run, marker = tmp_path / "run", tmp_path / "marker"
    checkpoint.shutil.copytree(source, run)
    ckpt = checkpoint.list_checkpoints(run)[-1]
    needle = ATTACKS[attack](ckpt, marker)
    _rehash(ckpt)
    rc, err = _resume_error(sets, run, capsys)
    assert_one_line_error(rc, err, needle)
    assert rc == 2 and not marker.exists()


def test_sharded_checkpoint_resumes_and_old_trainer_state_converts(sharded: tuple[Path, list[str]], tmp_path: Path,
                                                                   capsys) -> None:
    """The untouched sharded checkpoint resumes through the restricted reader; an old trainer.pt (non-plain) refuses
    to, and converts with --trust-checkpoint."""
    source, sets = sharded
    run = tmp_path / "run"
    checkpoint.shutil.copytree(source, run)
    assert main(argv([*sets, "train.max_steps=3"], run, "--resume")) == 0
    ckpt = checkpoint.list_checkpoints(source)[-1]
    old = tmp_path / "old"
    checkpoint.shutil.copytree(source, old)
    old_ckpt = checkpoint.list_checkpoints(old)[-1]
    trainer = checkpoint.read_sharded(ckpt)
    trainer["trainer"]["last_val_loss"] = np.float64(trainer["trainer"]["last_val_loss"])
    torch.save(trainer, old_ckpt / "trainer.pt")
    _rehash(old_ckpt)
    rc, err = _resume_error(sets, old, capsys)
    assert_one_line_error(rc, err, "numpy", "--trust-checkpoint")
    assert convert_main([str(old), "--out", str(tmp_path / "new"), "--trust-checkpoint"]) == 0
    state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "new")[-1])
    assert type(state["trainer"]["last_val_loss"]) is float
    weights = checkpoint.model_weights(ckpt)
    assert weights.keys() == state["model"].keys()
    assert all(torch.equal(weights[k], state["model"][k]) for k in weights)
