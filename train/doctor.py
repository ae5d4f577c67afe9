"""``python -m train.doctor [--cache-dir DIR ...]``: what this machine can run, on one screen.

torch / CUDA / GPU (name, capability, memory, bf16), which ``moe.backend`` values work here and, for each that does
not, the exact reason (megablocks' import error text), whether ``F.grouped_mm`` runs in bf16 on the device, wandb,
the offline switch, and the token caches found with whether their tokenizer loads without a download. It only
reads: nothing is downloaded (the cache checks run with HYPERP_OFFLINE=1) and nothing is written.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from hyperp.errors import HyperpError
from train.downloads import OFFLINE_ENV

Row = tuple[str, str]


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


def platform_rows() -> list[Row]:
    rows = [("python", f"{platform.python_version()} ({sys.executable})"),
            ("torch", f"{torch.__version__}, CUDA runtime {torch.version.cuda or 'none (CPU build)'}")]
    if not torch.cuda.is_available():
        return rows + [("device", "cpu only: no CUDA device (torch.cuda.is_available() is False)")]
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        rows.append((f"cuda:{i}", f"{p.name}, capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
                                  f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'NO'}"))
    return rows


def grouped_mm_status(device: torch.device) -> str:
    """Run one small bf16 ``F.grouped_mm`` on ``device`` against per-group matmuls: "ok" or the exact failure."""
    if not hasattr(F, "grouped_mm"):
        return f"missing: torch {torch.__version__} has no torch.nn.functional.grouped_mm"
    try:
        a = torch.randn(48, 64, device=device, dtype=torch.bfloat16)
        w = torch.randn(3, 64, 32, device=device, dtype=torch.bfloat16)
        offs = torch.tensor([16, 16, 48], device=device, dtype=torch.int32)  # the middle group is empty
        out = F.grouped_mm(a, w, offs=offs).float()
        ref = torch.cat([a[:16].float() @ w[0].float(), a[16:].float() @ w[2].float()])
        err = float((out - ref).abs().max() / ref.abs().max())
    except Exception as err:  # noqa: BLE001 - the reason is the report
        return f"fails on {device.type}: {_first_line(err)}"
    return f"ok in bf16 on {device.type}" if err < 2**-6 else f"WRONG on {device.type}: max rel error {err:.2e}"


def backend_rows(device: torch.device) -> list[Row]:
    from moe.dispatch import get_dispatch, megablocks

    gmm = grouped_mm_status(device)
    torch_note = "" if gmm.startswith("ok") else " only through its per-expert fallback (slow)"
    rows = [("backend loop", "usable (reference, slow)"),
            ("backend torch", f"usable{torch_note}; F.grouped_mm: {gmm}")]
    reason = megablocks.unavailable_reason()
    rows.append(("backend megablocks", "usable" if reason is None else f"UNAVAILABLE: {reason}"))
    chosen = get_dispatch("auto", device).__module__.rsplit(".", 1)[-1]
    rows.append(("backend auto", f"→ {chosen} on {device.type}"))
    return rows


def wandb_row() -> Row:
    spec = importlib.util.find_spec("wandb")
    if spec is None:
        return ("wandb", "not installed: log.wandb='offline' is skipped with a warning, 'online' is an error "
                         "(pip install -e .[wandb])")
    from importlib.metadata import version

    return ("wandb", f"{version('wandb')} installed")


def cache_rows(cache_dirs: list[Path]) -> list[Row]:
    from train.tokenizer import load_tokenizer

    rows = []
    for cache in cache_dirs:
        manifests = sorted(cache.glob("tokens/*/*/manifest.json"))
        if not manifests:
            rows.append((f"cache {cache}", "no token caches"))
        for path in manifests:
            key = path.parent.parent.name
            try:
                m = json.loads(path.read_text())
                load_tokenizer(m["tokenizer"], cache, None, key)
                ready = "tokenizer ready offline"
            except (HyperpError, OSError, ValueError, KeyError) as err:
                ready = f"NOT usable offline: {_first_line(err)}"
            size = sum(f.stat().st_size for f in path.parent.iterdir()) / 2**20
            tokens = m.get("n_tokens", 0) if isinstance(m, dict) else 0
            rows.append((f"cache {key}/{path.parent.name}",
                         f"{tokens / 1e6:.2f}M tokens, vocab {m.get('vocab_size')}, {size:.1f} MiB ({cache}); {ready}"))
    return rows


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """The doctor never downloads: cache checks run with the offline switch on, restored afterwards."""
    old = os.environ.get(OFFLINE_ENV)
    os.environ[OFFLINE_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ[OFFLINE_ENV]
        else:
            os.environ[OFFLINE_ENV] = old


def report(cache_dirs: list[Path]) -> list[Row]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = platform_rows() + backend_rows(device) + [wandb_row()]
    offline = os.environ.get(OFFLINE_ENV, "") not in ("", "0")
    rows.append(("offline", f"{OFFLINE_ENV}={os.environ.get(OFFLINE_ENV, '')!r}: "
                            + ("downloads refused" if offline else "data prep may download (PyPI, Debian)")))
    with _offline():
        return rows + cache_rows(cache_dirs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", action="append", default=None, metavar="DIR",
                        help="token cache directory to list (repeatable; default: data)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = report([Path(d) for d in (args.cache_dir or ["data"])])
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {text}" for name, text in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
