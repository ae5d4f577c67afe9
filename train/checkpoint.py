"""Atomic, verified checkpoints.

Layout: ``RUN_DIR/checkpoints/step_000123/{state.pt, manifest.json}``. A checkpoint is written into a temporary
directory, every file is fsync'd, then the directory is renamed into place (atomic on POSIX) and the parent fsync'd,
so a crash or kill at any moment leaves either the previous set or the new one, never a half checkpoint that looks
valid. The manifest records the SHA-256 and size of ``state.pt``; loading verifies it, and ``latest`` falls back to
the newest checkpoint that verifies. Only the newest ``keep`` checkpoints are kept, deleted after the new one landed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from train.errors import CheckpointError

FORMAT_VERSION = 1
_PREFIX = "step_"


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


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _step_of(path: Path) -> int:
    try:
        return int(path.name[len(_PREFIX):])
    except ValueError:
        return -1


def save(run_dir: Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` as checkpoint ``step`` atomically, then prune to the newest ``keep``.

    Every destructive change is a rename first (atomic) and a delete second, so a kill at any moment leaves each
    ``step_*`` directory either complete or absent: re-saving a step moves the old copy aside before the new one
    lands, and pruned checkpoints are renamed out of the ``step_*`` namespace before they are deleted.
    Checkpoints *newer* than ``step`` belong to a timeline abandoned by a resume that fell back past them (they
    failed verification); they are renamed ``rejected-step_*`` so they can neither shadow nor evict this one.
    """
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:06d}"
    tmp = root / f".tmp-{_PREFIX}{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    _write_file(tmp / "state.pt", payload)
    manifest = {
        "format": FORMAT_VERSION,
        "step": step,
        "files": {"state.pt": {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}},
    }
    _write_file(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
    _fsync_dir(tmp)
    for newer in list_checkpoints(run_dir):
        if _step_of(newer) > step:
            os.rename(newer, root / f"rejected-{newer.name}-{os.getpid()}")
    old = root / f".old-{_PREFIX}{step:06d}-{os.getpid()}"
    if final.exists():  # re-saving the same step (e.g. stop right after a periodic save): swap, then delete
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(root)
    shutil.rmtree(old, ignore_errors=True)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    for path in list_checkpoints(root.parent)[:-keep]:
        trash = root / f".trash-{path.name}-{os.getpid()}"
        os.rename(path, trash)  # out of the step_* namespace first: a kill mid-delete leaves no half checkpoint
        shutil.rmtree(trash, ignore_errors=True)
    for stale in [*root.glob(".old-*"), *root.glob(".trash-*")]:  # a killed or failed swap/prune: no longer listed
        shutil.rmtree(stale, ignore_errors=True)
    for stale in root.glob(f".tmp-{_PREFIX}*"):  # leftovers of a killed save (not one this process is writing)
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint directory, verifying its manifest; any problem → CheckpointError naming the file."""
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        entry = manifest["files"]["state.pt"]
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no manifest.json (incomplete or not a checkpoint)") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint manifest {manifest_path} is corrupt") from None
    except OSError as err:
        raise CheckpointError(f"checkpoint manifest {manifest_path} cannot be read: {err.strerror}") from None
    if not isinstance(entry, dict):
        raise CheckpointError(f"checkpoint manifest {manifest_path} is corrupt")
    state_path = path / "state.pt"
    try:
        payload = state_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {state_path} is missing") from None
    except OSError as err:
        raise CheckpointError(f"checkpoint file {state_path} cannot be read: {err.strerror}") from None
    if len(payload) != entry.get("bytes") or hashlib.sha256(payload).hexdigest() != entry.get("sha256"):
        raise CheckpointError(f"checkpoint file {state_path} is corrupt or truncated (checksum mismatch)")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a corrupt checkpoint to the user
        raise CheckpointError(f"checkpoint file {state_path} cannot be read: {type(err).__name__}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint file {state_path} does not hold a training state")
    return state


def load_latest(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint that verifies; corrupt newer ones are reported and skipped."""
    candidates = list_checkpoints(run_dir)
    if not candidates:
        raise CheckpointError(f"no checkpoint found in {checkpoint_dir(run_dir)}")
    problems: list[str] = []
    for path in reversed(candidates):
        try:
            return path, load(path, map_location)
        except CheckpointError as err:
            problems.append(str(err))
            warnings.warn(f"skipping checkpoint: {err}", stacklevel=2)
    raise CheckpointError(f"no valid checkpoint in {checkpoint_dir(run_dir)}: {problems[0]}")


def load_model_from_run(run_dir: Path, map_location: str = "cpu"):  # -> tuple[Qwen3, Tokenizer | None]
    """The model of a run's newest valid checkpoint (eval mode) and the tokenizer saved with the run."""
    from models.qwen3 import build_model
    from train.config import build, RunConfig
    from train.tokenizer import load_tokenizer

    path, state = load_latest(Path(run_dir), map_location)
    cfg = build(RunConfig, state["config"])
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    tok_dir = Path(run_dir) / "tokenizer"
    tokenizer = load_tokenizer(str(tok_dir)) if tok_dir.is_dir() else None
    return model.eval(), tokenizer
