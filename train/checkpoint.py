"""Checkpoints: the whole save and resume path of a run, in one file.

A run's state is a dict of Stateful objects (torchtitan ``components/checkpoint.py``: a ``CheckpointManager`` over
``{"model", "optimizer", …, "train_state"}``, the trainer being one of them): ``model``, ``optimizer``, ``trainer``
(its counters), ``callbacks`` and ``rng``, plus the run config. :class:`Checkpointer` saves and restores them
through one of two storages:

- single file (a plain process): ``state.pt`` holds every state dict;
- sharded (a torchrun process group): torch.distributed.checkpoint shards of ``model`` and ``optimizer`` (keyed by
  parameter name and resharded on load, so any world size and any expert-parallel size — a single process
  included — resumes them; expert-parallel experts are DTensors like FSDP's shards) and ``trainer.pt`` with the
  other states (written by rank 0).

Both are written the same way: into a temporary directory, every file fsync'd, ``manifest.json`` (format, step, and
the SHA-256 and size of every file) last, then renamed into place (atomic on POSIX), so a crash or kill at any
moment leaves the previous set or the new one, never a half checkpoint that looks valid. Every destructive change is
a rename first and a delete second (re-saving a step, pruning to the newest ``keep``). Resume takes the newest
checkpoint whose files all verify (or a step asked for), checks the config key by key (:mod:`train.resume`) before
anything is changed, and restores every state and every RNG (Python, NumPy, torch CPU and CUDA).

Recovery after a divergence: the checkpoint before a loss spike or a non-finite streak is *pinned*
(``checkpoints/pins.json``; pruning skips it), and the checkpoint saved when such a divergence stops the run names it
(``rollback_to``), so a plain resume starts from the pinned state rather than the poisoned one.

What goes into the files and how they are read back is :mod:`train.serialization`: tensors and plain data only,
loaded without running code (``weights_only``, a restricted DCP reader) and memory-mapped rather than read.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import random
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from hyperp.optim import CompositeOptimizer
from hyperp.optim.sharded import is_sharded
from train import serialization
from train.distributed import DistEnv
from train.errors import CheckpointError, naming
from train.resume import check_resume

FORMAT_VERSION = 1  # the single-file manifest's "format"
SHARDED_FORMAT = "dcp"
TENSOR_STATES = ("model", "optimizer")  # what the sharded storage writes through torch.distributed.checkpoint
STATE_FILE, TRAINER_FILE, MANIFEST = "state.pt", "trainer.pt", "manifest.json"
ROLLBACK = "rollback_to"  # a checkpoint's entry naming the checkpoint a plain resume of it starts from
WORLD_SIZE = "world_size"  # ranks that trained it: another world size may re-split the same global batch
PINS = "pins.json"  # checkpoints/pins.json: {step: why} of checkpoints that pruning never deletes
_PREFIX, _REJECTED = "step_", "rejected-"
_T = TypeVar("_T")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ------------------------------------------------------------------------------------------------ files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    """Write a single file atomically (temp file in the same directory, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_file(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_state(path: Path, state: Any) -> dict[str, Any]:
    """Write ``state`` (tensors and plain data) to ``path``, fsync'd, streaming; returns its manifest entry."""
    with open(path, "wb") as fh:
        entry = serialization.dump(state, fh)
        os.fsync(fh.fileno())
    return entry


def _file_entry(path: Path) -> dict[str, Any]:
    """SHA-256 and size of a file, read in chunks (a shard may not fit in memory twice)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


# ------------------------------------------------------------------------------------------------ layout


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _step_of(path: Path) -> int:
    """The step of ``step_000012`` (and of ``rejected-step_000012-<pid>``); -1 for any other name."""
    name = path.name.removeprefix(_REJECTED)
    try:
        return int(name[len(_PREFIX):].split("-")[0])
    except ValueError:
        return -1


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))


def _publish(tmp: Path, step: int, keep: int) -> Path:
    """Move the complete directory ``tmp`` into place as checkpoint ``step``, then prune to the newest ``keep``.

    A kill at any moment leaves each ``step_*`` directory complete or absent: re-saving a step moves the old copy
    aside before the new one lands, and pruned checkpoints leave the ``step_*`` namespace before they are deleted.
    Checkpoints *newer* than ``step`` belong to a timeline abandoned by a resume that fell back past them (they failed
    verification) or rolled back (``--resume-from``, a divergence); they are renamed ``rejected-step_*`` so they can
    neither shadow nor evict this one, and pruned once a checkpoint of their age would be.
    """
    root = tmp.parent
    final = root / f"{_PREFIX}{step:06d}"
    rejected = [newer for newer in list_checkpoints(root.parent) if _step_of(newer) > step]
    pins = read_pins(root.parent) if rejected else None
    if pins is not None:  # a pin on the abandoned timeline must not pin a new checkpoint of the same step
        _write_pins(root.parent, {s: pin for s, pin in pins.items() if s <= step})
    for newer in rejected:
        os.rename(newer, _unused(root / f"{_REJECTED}{newer.name}-{os.getpid()}"))
    old = root / f".old-{_PREFIX}{step:06d}-{os.getpid()}"
    if final.exists():  # re-saving the same step (e.g. stop right after a periodic save): swap, then delete
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(root)
    shutil.rmtree(old, ignore_errors=True)
    _prune(root, keep)
    return final


def _unused(path: Path) -> Path:
    """``path``, or ``path-1``, ``path-2``…: a step can be abandoned twice by one process (two rollbacks past it)."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _prune(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` unpinned checkpoints (pinned ones are never pruned, see :func:`pin_before`), and the
    ``rejected-step_*`` of an abandoned timeline as long as a checkpoint of their age would be kept."""
    pins = read_pins(root.parent)
    if pins is None:  # unreadable pins.json (warned): deleting nothing is the safe side
        return
    unpinned = [p for p in list_checkpoints(root.parent) if _step_of(p) not in pins]
    oldest_kept = _step_of(unpinned[-keep]) if len(unpinned) >= keep else -1
    rejected = [p for p in root.glob(f"{_REJECTED}{_PREFIX}*") if _step_of(p) < oldest_kept]
    for path in [*unpinned[:-keep], *rejected]:
        trash = root / f".trash-{path.name}-{os.getpid()}"
        os.rename(path, trash)  # out of the step_* namespace first: a kill mid-delete leaves no half checkpoint
        shutil.rmtree(trash, ignore_errors=True)
    for stale in [*root.glob(".old-*"), *root.glob(".trash-*")]:  # a killed or failed swap/prune: no longer listed
        shutil.rmtree(stale, ignore_errors=True)
    for stale in root.glob(f".tmp-{_PREFIX}*"):  # leftovers of a killed save (not one this process is writing)
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ pins


def _pins_path(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / PINS


@dataclass(frozen=True)
class Pin:
    """Why a checkpoint is pinned: ``why`` (an alarm name, "non-finite loss or gradient") happened at step ``at``."""

    why: str
    at: int


def read_pins(run_dir: Path) -> dict[int, Pin] | None:
    """``{checkpoint step: Pin}`` (``{}`` when none; None, with a warning, when pins.json is corrupt)."""
    path = _pins_path(run_dir)
    try:
        return {int(step): Pin(str(pin["why"]), int(pin["at"])) for step, pin in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        warnings.warn(f"{path} is unreadable: no checkpoint is pruned until it is fixed or removed", stacklevel=2)
        return None


def _newest_before(run_dir: Path, step: int) -> int | None:
    older = [s for s in map(_step_of, list_checkpoints(run_dir)) if s < step - 1]
    return older[-1] if older else None


def pin_before(run_dir: Path, step: int, why: str, keep_pinned: int) -> int | None:
    """Pin the newest checkpoint whose weights precede those that produced step ``step``'s metrics (a checkpoint
    older than step ``step - 1``): later saves never prune it. Only the newest ``keep_pinned`` pins are kept.

    Step ``step``'s loss is computed with the weights of step ``step - 1``, so a spike or a non-finite value at
    ``step`` condemns checkpoint ``step - 1`` too. Returns the pinned step, or None when no such checkpoint exists.
    """
    target, pins = _newest_before(run_dir, step), read_pins(run_dir)
    if target is None or pins is None:
        return None
    pins.setdefault(target, Pin(why, step))
    _write_pins(run_dir, {s: pins[s] for s in sorted(pins)[-keep_pinned:]})
    return target


def rollback_point(run_dir: Path, step: int, window: int) -> int | None:
    """Where a run that diverged at step ``step`` rolls back to: the checkpoint pinned before the *earliest* spike or
    non-finite step within the last ``window`` steps — a loss spike a few steps before a non-finite streak is the
    same incident, and the checkpoint before the streak already holds the damage (the runs of issue 22 did)."""
    pins = read_pins(run_dir) or {}
    recent = [s for s, pin in pins.items() if step - window <= pin.at <= step]
    return min(recent) if recent else None


def _write_pins(run_dir: Path, pins: dict[int, Pin]) -> None:
    path = _pins_path(run_dir)
    if pins:
        data = {str(s): dataclasses.asdict(pin) for s, pin in sorted(pins.items())}
        write_atomic(path, json.dumps(data, indent=1).encode())
    elif path.exists():
        path.unlink()


def _fresh_tmp(run_dir: Path, step: int, tag: str) -> Path:
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{_PREFIX}{step:06d}-{tag}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _seal(tmp: Path, manifest: dict[str, Any], step: int, keep: int) -> Path:
    """Write the manifest last, fsync the directory and publish it."""
    _write_file(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
    _fsync_dir(tmp)
    return _publish(tmp, step, keep)


# ------------------------------------------------------------------------------------------------ verification


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST} (incomplete or not a checkpoint)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint manifest {manifest_path} is corrupt") from None
    except OSError as err:
        raise CheckpointError(f"checkpoint manifest {manifest_path} cannot be read: {err.strerror}") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"checkpoint manifest {manifest_path} is corrupt")
    return manifest


def _verify(path: Path, required: tuple[str, ...]) -> dict[str, Any]:
    """The manifest of checkpoint ``path`` after checking every file it lists (``required`` among them)."""
    manifest = _read_manifest(path)
    files = manifest.get("files")
    if (not isinstance(files, dict) or any(name not in files for name in required)
            or not all(isinstance(entry, dict) for entry in files.values())):
        raise CheckpointError(f"checkpoint manifest {path / MANIFEST} is corrupt")
    for name, entry in files.items():
        file = path / name
        try:
            found = _file_entry(file)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint file {file} is missing") from None
        except OSError as err:
            raise CheckpointError(f"checkpoint file {file} cannot be read: {err.strerror}") from None
        if found != {"sha256": entry.get("sha256"), "bytes": entry.get("bytes")}:
            raise CheckpointError(f"checkpoint file {file} is corrupt or truncated (checksum mismatch)")
    return manifest


def _read_state(file: Path, map_location: str | torch.device = "cpu", trusted: bool = False) -> dict[str, Any]:
    load = serialization.load_trusted if trusted else serialization.load
    state = load(file, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint file {file} does not hold a training state")
    return state


def _newest_valid(run_dir: Path, read: Callable[[Path], _T], warn: bool = True) -> tuple[Path, _T]:
    """The newest checkpoint that ``read`` accepts; corrupt newer ones are reported and skipped."""
    candidates = list_checkpoints(run_dir)
    if not candidates:
        raise CheckpointError(f"no checkpoint found in {checkpoint_dir(run_dir)}")
    problems: list[str] = []
    for path in reversed(candidates):
        try:
            return path, read(path)
        except CheckpointError as err:
            problems.append(str(err))
            if warn:
                warnings.warn(f"skipping checkpoint: {err}", stacklevel=3)
    raise CheckpointError(f"no valid checkpoint in {checkpoint_dir(run_dir)}: {problems[0]}")


# ------------------------------------------------------------------------------------------------ single file


def save(run_dir: Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` (every state dict of a run) as single-file checkpoint ``step``; prune to the newest ``keep``."""
    tmp = _fresh_tmp(run_dir, step, str(os.getpid()))
    entry = _write_state(tmp / STATE_FILE, state)
    return _seal(tmp, {"format": FORMAT_VERSION, "step": step, "files": {STATE_FILE: entry}}, step, keep)


def load(path: Path, map_location: str | torch.device = "cpu", trusted: bool = False) -> dict[str, Any]:
    """Load one single-file checkpoint directory after verifying it; any problem → CheckpointError naming the file.
    ``trusted``: unpickle objects other than tensors and plain data (runs any code they hold; the converter's
    ``--trust-checkpoint`` for old checkpoints)."""
    _verify(path, (STATE_FILE,))
    return _read_state(path / STATE_FILE, map_location, trusted)


def load_latest(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
    """The newest single-file checkpoint that verifies; corrupt newer ones are reported and skipped."""
    return _newest_valid(run_dir, lambda path: load(path, map_location))


# ------------------------------------------------------------------------------------------------ sharded (DCP)


def is_sharded_checkpoint(path: Path) -> bool:
    try:
        return _read_manifest(Path(path)).get("format") == SHARDED_FORMAT
    except CheckpointError:
        return False


def save_sharded(run_dir: Path, step: int, plain: dict[str, Any], model: nn.Module, optimizer: CompositeOptimizer,
                 env: DistEnv, keep: int) -> Path:
    """Collective: every rank writes its shards of ``model``/``optimizer``; rank 0 adds ``plain`` (the other
    states) as trainer.pt, hashes every file once all ranks are done, and seals and publishes the directory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    serialization.plain(plain)  # on every rank, before any collective: a refusal on rank 0 alone would hang the rest
    tmp = checkpoint_dir(run_dir) / f".tmp-{_PREFIX}{step:06d}-{SHARDED_FORMAT}"  # one name for every rank
    if env.is_main:
        _fresh_tmp(run_dir, step, SHARDED_FORMAT)
    env.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer.optimizers)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))  # returns once every rank has written
    final = checkpoint_dir(run_dir) / f"{_PREFIX}{step:06d}"
    if env.is_main:
        _write_state(tmp / TRAINER_FILE, plain)
        files = {p.name: _file_entry(p) for p in sorted(tmp.iterdir())}
        _seal(tmp, {"format": SHARDED_FORMAT, "step": step, "world_size": env.world_size, "files": files}, step, keep)
    env.barrier()
    return final


def read_sharded(path: Path, trusted: bool = False) -> dict[str, Any]:
    """Verify a sharded checkpoint and return its trainer.pt (every state but the model and optimizer shards);
    ``trusted`` as in :func:`load`. The shards' index is read (safely) here too, so that a bad one is refused before
    the checkpoint is chosen."""
    _verify(path, (TRAINER_FILE, serialization.DCP_METADATA))
    serialization.PlainReader(path).read_metadata()
    return _read_state(path / TRAINER_FILE, trusted=trusted)


def load_sharded(path: Path, model: nn.Module, optimizer: CompositeOptimizer) -> None:
    """Load the shards into ``model`` / ``optimizer`` at this process's world size (plain, DDP-inner or
    FSDP2-sharded modules alike; no process group needed for a single process)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    # get_state_dict initialises empty optimizer state with a zero-lr step; it runs before the weights are loaded.
    model_sd, optim_sd = get_state_dict(model, optimizer.optimizers)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        with warnings.catch_warnings():  # a single process reading shards is intended here
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(state, storage_reader=serialization.PlainReader(path))
        set_state_dict(model, optimizer.optimizers, model_state_dict=state["model"], optim_state_dict=state["optim"])
    except (Exception, dcp.api.CheckpointException) as err:  # noqa: BLE001 - DCP raises many types (one a BaseException)
        raise serialization.refusal(err) or _does_not_fit(path, err) from None


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict of a sharded checkpoint, without building a model or optimizer."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        return _load_state_dict_from_keys(keys={"model"}, storage_reader=serialization.PlainReader(path))["model"]


# ------------------------------------------------------------------------------------------------ the checkpointer


class RNGState:
    """Every random generator of the process as one Stateful: Python, NumPy, torch CPU and every CUDA device.

    Kept as tensors and plain numbers. Under torchrun rank 0's states are saved and restored on every rank (all ranks
    are seeded alike); CUDA states are restored for the devices this process sees.
    """

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        _, keys, pos, has_gauss, cached = np.random.get_state()
        return {"python": [version, list(internal), gauss],
                "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                          "cached_gaussian": float(cached)},
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "python" in state:  # checkpoints written before these were saved restore torch's generators only
            version, internal, gauss = state["python"]
            random.setstate((version, tuple(internal), gauss))
            n = state["numpy"]
            np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                                 n["cached_gaussian"]))
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


@dataclass
class Resumed:
    """What :meth:`Checkpointer.resume` loaded and what differs from the checkpoint."""

    path: Path
    changes: list[str]  # "optim.lr 0.02 → 0.0002" per changed config key, then effective peak lrs that changed
    rolled_back: bool  # an older checkpoint than the newest: the newer ones are an abandoned timeline
    why: str | None = None  # why the newest checkpoint was not the one loaded, when the checkpoint decided


class Checkpointer:
    """Saves and resumes ``states`` (name → Stateful; ``model`` and ``optimizer`` required) with the run ``config``.

    Single-file storage in a plain process, sharded storage under torchrun (``env.active``); resume reads either.
    The config decides the optimizer's hyperparameters (lr, betas, …), the checkpoint its state (moments, radii):
    see :mod:`train.resume` for which config keys may differ from the checkpoint's.
    """

    def __init__(self, run_dir: Path, states: dict[str, Stateful], config: dict[str, Any], keep: int,
                 env: DistEnv = DistEnv(), map_location: str | torch.device = "cpu", keep_pinned: int = 3) -> None:
        self.run_dir, self.states, self.config, self.keep = Path(run_dir), states, config, keep
        self.env, self.map_location, self.keep_pinned = env, map_location, keep_pinned
        self.model: nn.Module = states["model"]  # type: ignore[assignment]
        self.optimizer: CompositeOptimizer = states["optimizer"]  # type: ignore[assignment]
        self.rollback_to: int | None = None  # saved with each checkpoint: where a plain resume of it starts

    def save(self, step: int) -> Path:
        plain = {"config": self.config, ROLLBACK: self.rollback_to, WORLD_SIZE: self.env.world_size}
        plain |= {k: s.state_dict() for k, s in self.states.items() if k not in TENSOR_STATES}
        with naming(checkpoint_dir(self.run_dir)):  # a full disk names the folder it could not write
            if self.env.active:
                return save_sharded(self.run_dir, step, plain, self.model, self.optimizer, self.env, self.keep)
            tensors = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
            return save(self.run_dir, step, plain | tensors, self.keep)

    def pin_before(self, step: int, why: str) -> int | None:
        """Pin the newest checkpoint older than the weights that produced step ``step`` (:func:`pin_before`)."""
        if self.env.is_main:
            return pin_before(self.run_dir, step, why, self.keep_pinned)
        return _newest_before(self.run_dir, step)  # rank 0 writes pins.json

    def roll_back_on_resume(self, step: int, window: int) -> int | None:
        """The run diverged at ``step``: checkpoints saved from now on send a plain resume to the rollback point."""
        self.rollback_to = rollback_point(self.run_dir, step, window)
        return self.rollback_to

    def resume(self, step: int | None = None) -> Resumed:
        """Load checkpoint ``step`` (None: the newest valid one, or the checkpoint it says to roll back to); a
        mismatching config → one line naming the key, before anything is changed (:func:`train.resume.check_resume`)."""
        path, plain, why = self._select(step)
        try:
            changes = [str(c) for c in check_resume(plain["config"], self.config, f"checkpoint {path}",
                                                    plain.get(WORLD_SIZE), self.env.world_size)]
        except (KeyError, TypeError):
            raise CheckpointError(f"checkpoint {path} has no run config (not a training checkpoint)") from None
        sharded = is_sharded_checkpoint(path)
        if not sharded and any(is_sharded(p) for p in self.model.parameters()):
            raise CheckpointError("train.parallel='fsdp' and train.expert_parallel > 1 resume only distributed "
                                  "checkpoints; resume this one with ddp and no expert parallelism")
        configured = _hyperparameters(self.optimizer)
        try:
            if sharded:
                load_sharded(path, self.model, self.optimizer)
            for name, stateful in self.states.items():
                if name not in TENSOR_STATES or not sharded:
                    stateful.load_state_dict(plain[name])
        except CheckpointError:  # a refusal of the shards' contents says so itself
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise _does_not_fit(path, err) from None
        changes += _peak_lr_changes(_hyperparameters(self.optimizer), configured)
        for group, settings in zip(self.optimizer.param_groups, configured, strict=True):
            group.update(settings)  # torch's load_state_dict restored the checkpoint's lr, betas, …: the config wins
        newest = max(map(_step_of, list_checkpoints(self.run_dir)))
        return Resumed(path, changes, _step_of(path) < newest, why)

    def _read(self, path: Path) -> dict[str, Any]:
        return read_sharded(path) if is_sharded_checkpoint(path) else load(path, self.map_location)

    def _select(self, step: int | None) -> tuple[Path, dict[str, Any], str | None]:
        """Checkpoint ``step`` as asked; else the newest valid one, unless it stopped a diverging run and names the
        pinned checkpoint to roll back to (:attr:`rollback_to`) — that one then, if it still verifies."""
        if step is not None:
            path = checkpoint_dir(self.run_dir) / f"{_PREFIX}{step:06d}"
            kept = [_step_of(p) for p in list_checkpoints(self.run_dir)]
            if step not in kept:
                raise CheckpointError(f"--resume-from {step}: no checkpoint {path.name} in {path.parent} "
                                      f"(kept: {', '.join(map(str, kept)) or 'none'})")
            return path, self._read(path), None
        newest, plain = _newest_valid(self.run_dir, self._read, warn=self.env.is_main)
        target = plain.get(ROLLBACK)
        if target is None:
            return newest, plain, None
        path = checkpoint_dir(self.run_dir) / f"{_PREFIX}{target:06d}"
        try:
            rolled = self._read(path)
        except CheckpointError as err:
            if self.env.is_main:
                warnings.warn(f"cannot roll back to step {target} ({err}); resuming the stopped state", stacklevel=2)
            return newest, plain, None
        return path, rolled, (f"rolled back to step {target}, the last checkpoint before the divergence that stopped "
                              f"the run ({newest.name} is the stopped state: --resume-from {_step_of(newest)} "
                              f"continues it)")


def _hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Every group's settings but its parameters (what the config decides)."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def _peak_lr_changes(loaded: list[dict[str, Any]], configured: list[dict[str, Any]]) -> list[str]:
    """``"peak lr sphere 0.02 → 0.0002"`` for each group whose peak lr (the schedule's ``base_lr``) the config changes:
    it moves with optim.lr and with whatever HyperP derives it from (max_steps, the [hyperp] base)."""
    return [f"peak lr {new.get('name', i)} {old['base_lr']!r} → {new['base_lr']!r}"
            for i, (old, new) in enumerate(zip(loaded, configured, strict=True))
            if "base_lr" in new and old.get("base_lr") != new["base_lr"]]


def _does_not_fit(path: Path, err: BaseException) -> CheckpointError:
    first = (str(err).strip().splitlines() or [""])[0][:200]  # torch's load_state_dict messages span lines
    return CheckpointError(f"checkpoint {path} does not fit this run ({type(err).__name__}: {first})")


def load_model_from_run(run_dir: Path, map_location: str = "cpu", step: int | None = None):  # -> (Qwen3, Tokenizer | None)
    """The model of a run's checkpoint ``step`` (default: the newest valid one), single-file or sharded, in eval
    mode, and the tokenizer saved with the run."""
    from models.qwen3 import build_model
    from train.config import RunConfig, build
    from train.tokenizer import load_tokenizer

    read = functools.partial(_model_state, map_location=map_location)
    state = _newest_valid(Path(run_dir), read)[1] if step is None else read(step_dir(Path(run_dir), step))
    cfg = build(RunConfig, state["config"])
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    tok_dir = Path(run_dir) / "tokenizer"
    tokenizer = load_tokenizer(str(tok_dir)) if tok_dir.is_dir() else None
    return model.eval(), tokenizer


def _model_state(path: Path, map_location: str) -> dict[str, Any]:
    """``{"config", "model"}`` of checkpoint ``path``; a sharded one is gathered into full tensors in this process."""
    if is_sharded_checkpoint(path):
        return {"config": read_sharded(path)["config"], "model": model_weights(path)}
    return load(path, map_location)


def step_dir(run_dir: Path, step: int) -> Path:
    path = checkpoint_dir(run_dir) / f"{_PREFIX}{step:06d}"
    if not path.is_dir():
        have = ", ".join(str(_step_of(p)) for p in list_checkpoints(run_dir)) or "none"
        raise CheckpointError(f"no checkpoint of step {step} in {checkpoint_dir(run_dir)} (steps there: {have})")
    return path
