"""Checkpoint files hold tensors and plain data only, and are read without ever running code from them.

A pickle can call any function while it is loaded, and a checkpoint's SHA-256 manifest cannot help: whoever crafts
the payload writes the manifest next to it. So every file a checkpoint holds is read by a decoder that constructs
only tensors and plain data (numbers, strings, lists, tuples, dicts, None, dtypes) and refuses anything else before
it runs:

- ``state.pt`` / ``trainer.pt``: ``torch.save``'s zip format, read with ``torch.load(weights_only=True)`` (PyTorch's
  allowlisting unpickler, the default since 2.6 for this reason); :func:`plain` checks every state at save time, so a
  Stateful that returns, say, a NumPy scalar fails when the checkpoint is written (naming its key), not at resume.
- torch.distributed.checkpoint shards: DCP reads tensors with ``weights_only=True`` itself, but its ``.metadata`` is a
  raw pickle (``pickle.load`` in ``filesystem.py``) and non-tensor items (optimizer hyperparameters) are decoded with
  ``torch.load(weights_only=False)`` (``default_planner.py``, ``load_bytes``). :class:`PlainReader` closes both.

Why ``torch.save`` + ``weights_only`` rather than safetensors + a JSON trainer state: a safetensors parser cannot run
code at all, a stronger guarantee than an allowlisting unpickler (``weights_only`` had bypasses: CVE-2025-32434, fixed
in torch 2.6, and CVE-2026-24747, fixed in 2.10; the CPU install pins 2.13, the GPU machines have 2.11). But (1) both storages would still need ``weights_only``: DCP shards are torch.save records either way;
(2) the states are nested and not JSON: optimizer state is keyed by integer parameter ids, holds tuples (betas),
dtypes, NaN/inf floats (``last_val_loss``) and per-parameter tensors; a safetensors + JSON split needs a flattening
and type-encoding layer between every Stateful and the file, a second place for every new state to go wrong;
(3) ``torch.load(mmap=True)`` gives the same zero-copy load safetensors is chosen for (below); (4) no new dependency.

Streaming: a load maps the file (``mmap=True``) instead of reading it: tensors are views of the page cache, so resume
never holds the serialized file and a deserialized copy at once (``read_bytes`` + ``BytesIO`` did: about twice the
checkpoint in RAM; ``benchmarks/results/checkpoint_memory.md``). The module's ``load_state_dict`` copies into the
parameters; the optimizer keeps the mapped tensors (copy-on-write, ``MAP_PRIVATE``: its first step writes them into
process memory), so the resumed-from file stays mapped — and its disk blocks allocated, if it is pruned — until the
process exits. Writing streams too: ``torch.save`` into the file through a hashing writer, whose SHA-256 goes into
the manifest without a second read.

Old checkpoints whose pickles hold other objects are refused with how to convert them: ``python -m train.convert
--trust-checkpoint`` unpickles them in full (:func:`load_trusted`: runs any code they hold) and :func:`plain` turns
NumPy values, sets, deques, dataclasses, … into plain data.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import pickle
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from train.errors import CheckpointError

DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of a sharded checkpoint
_LEAVES = frozenset({type(None), bool, int, float, str, torch.dtype, torch.Tensor, nn.Parameter})  # exact types:
# np.float64 subclasses float, but weights_only refuses it
_MAPPINGS, _SEQUENCES = frozenset({dict, OrderedDict}), frozenset({list, tuple})


# ------------------------------------------------------------------------------------------------ plain data


def plain(obj: Any, where: str = "state", convert: bool = False) -> Any:
    """``obj`` itself if it holds only tensors and plain data; else CheckpointError naming the key of the first other
    object — or, with ``convert`` (old checkpoints, :func:`load_trusted`), a copy with each one made plain."""
    kind = type(obj)
    if kind in _LEAVES:
        return obj
    if kind in _MAPPINGS:
        pairs = [(plain(k, f"{where} key {k!r}", convert), plain(v, f"{where}.{k}", convert)) for k, v in obj.items()]
        same = all(a is k and b is v for (a, b), (k, v) in zip(pairs, obj.items()))
        return obj if same else kind(pairs)  # unchanged: keep the object (a module state dict carries _metadata)
    if kind in _SEQUENCES:
        items = [plain(v, f"{where}[{i}]", convert) for i, v in enumerate(obj)]
        return obj if all(a is b for a, b in zip(items, obj)) else kind(items)
    if not convert:
        raise CheckpointError(f"cannot save {where}: a {_qualname(kind)} is not a tensor or plain data (checkpoints "
                              "hold only tensors, numbers, strings, lists, tuples, dicts and None, so that loading one "
                              "runs no code)")
    return plain(_plain_equivalent(obj, where), where, convert)


def _plain_equivalent(obj: Any, where: str) -> Any:
    """The plain-data form of one non-plain object of an old checkpoint (its contents are converted afterwards)."""
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return torch.from_numpy(obj.copy())  # NumPy RNG keys, cached arrays
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)  # a set has no order; sorted keeps the file reproducible
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (list, deque)):
        return list(obj)
    if isinstance(obj, tuple):  # namedtuples
        return tuple(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    for base in (int, float, str):  # subclasses of plain types
        if isinstance(obj, base):
            return base(obj)
    raise CheckpointError(f"cannot convert {where}: a {_qualname(type(obj))} has no plain-data equivalent")


def _qualname(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


# ------------------------------------------------------------------------------------------------ files


class _HashingWriter:
    """What ``torch.save`` writes to (it needs ``write`` and ``flush``): the file, and its SHA-256 on the way.

    It keeps the first OSError of the file: torch's zip writer swallows it and fails later with a RuntimeError
    ("unexpected pos …") that names neither the reason nor the file (a full disk must say both, issue 22 (8))."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file, self.digest, self.size = file, hashlib.sha256(), 0
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._checked(self.file.write, data)

    def flush(self) -> None:
        self._checked(self.file.flush)

    def _checked(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except OSError as err:
            self.error = self.error or err
            raise


def dump(obj: Any, file: IO[bytes]) -> dict[str, Any]:
    """``torch.save`` plain ``obj`` into the open ``file``; returns its manifest entry (SHA-256 and size). A failed
    write raises the file's OSError (e.g. ENOSPC), not torch's RuntimeError about it."""
    writer = _HashingWriter(file)
    try:
        torch.save(plain(obj), writer)  # type: ignore[arg-type] - a file-like with write/flush
    except RuntimeError:
        if writer.error is not None:
            raise writer.error from None
        raise
    return {"sha256": writer.digest.hexdigest(), "bytes": writer.size}


def load(file: Path, map_location: str | torch.device = "cpu") -> Any:
    """Tensors and plain data of ``file``, memory-mapped; anything else is refused before it runs."""
    try:
        return torch.load(file, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError:  # weights_only met a global outside its allowlist and stopped there
        raise CheckpointError(_not_plain(file)) from None
    except Exception as err:  # noqa: BLE001 - any other failure is a file that is not a checkpoint
        raise _unreadable(file, err) from None


def load_trusted(file: Path, map_location: str | torch.device = "cpu") -> Any:
    """Full unpickling (**runs any code the file holds**), then :func:`plain` with conversion: old checkpoints only,
    behind the converter's ``--trust-checkpoint``."""
    try:
        state = torch.load(file, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise _unreadable(file, err) from None
    return plain(state, "state", convert=True)


def _unreadable(file: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(f"checkpoint file {file} cannot be read: {type(err).__name__}")


def _not_plain(file: Path) -> str:
    try:  # lists the file's globals without running them
        found = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(file)[:3])
    except Exception:  # noqa: BLE001 - naming them is a courtesy
        found = ""
    return (f"checkpoint file {file} holds objects other than tensors and plain data{f' ({found})' if found else ''}, "
            f"which could run code when loaded; if it is an older checkpoint from a source you trust, convert it: "
            f"python -m train.convert {file.parent} --out NEW_RUN --trust-checkpoint")


# ------------------------------------------------------------------------------------------------ DCP


_DCP_GLOBALS = {  # what DCP pickles into .metadata (torch 2.13); found by recording find_class on our checkpoints
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                                              "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # a name → torch.layout lookup
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},  # StorageMeta.checkpoint_id
}


class _MetadataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only DCP's metadata types and torch dtypes: "Restricting Globals" in the
    :mod:`pickle` docs. Constructing those runs no code beyond setting their fields."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _DCP_GLOBALS.get(module, ()) or (module == "torch"
                                                     and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


class PlainReader(FileSystemReader):
    """DCP's file reader, reading nothing that can run code: ``.metadata`` through :class:`_MetadataUnpickler`, every
    item from a file inside the checkpoint directory, non-tensor items checked with ``weights_only`` before DCP's
    planner unpickles them. Pass it as ``storage_reader`` to any DCP load."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        file = Path(self.path) / DCP_METADATA
        try:
            with open(file, "rb") as fh:
                metadata = _MetadataUnpickler(fh).load()
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"checkpoint file {file} holds {err}, which is not checkpoint metadata (loading it "
                                  "could run code)") from None
        except Exception as err:  # noqa: BLE001 - truncated or not a pickle
            raise _unreadable(file, err) from None
        if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
            raise CheckpointError(f"checkpoint file {file} is not checkpoint metadata")
        names = {getattr(info, "relative_path", None) for info in metadata.storage_data.values()}
        if any(not isinstance(n, str) or n in ("", ".", "..") or Path(n).name != n for n in names):
            raise CheckpointError(f"checkpoint file {file} points to files outside its checkpoint directory")
        metadata.storage_meta = metadata.storage_meta or StorageMeta()  # what FileSystemReader.read_metadata does
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan: Any, planner: Any) -> Any:
        return super().read_data(plan, _CheckedBytes(planner))


class _CheckedBytes:
    """A DCP load planner whose ``load_bytes`` sees an item only after ``weights_only`` decoded it (the planner then
    decodes the same bytes with ``weights_only=False``: they hold nothing but plain data by then)."""

    def __init__(self, planner: Any) -> None:
        self._planner = planner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._planner, name)

    def load_bytes(self, read_item: Any, value: Any) -> None:
        try:
            torch.load(value, weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointError(f"checkpoint item {read_item.dest_index.fqn} holds objects other than tensors and "
                                  "plain data (loading it could run code)") from None
        value.seek(0)
        self._planner.load_bytes(read_item, value)


def refusal(err: BaseException) -> CheckpointError | None:
    """The CheckpointError a :class:`PlainReader` raised inside a DCP load (DCP wraps it per rank), if any."""
    failures = getattr(err, "failures", None) or {}
    return next((exc for exc, _ in failures.values() if isinstance(exc, CheckpointError)), None)
