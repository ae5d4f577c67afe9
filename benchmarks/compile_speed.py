"""Training step time with ``train.compile = true`` vs eager, side by side (issue 24.7).

``python benchmarks/compile_speed.py [--quick] [--steps N] [--device cpu|cuda] [--presets tiny-dense tiny-moe]
[--out FILE]``

Per preset two trainers are built from the same config and seed, differing only in ``train.compile``; monitors are
off (``monitor.every = 0``: monitor steps run eagerly by design, see ``train/compile.py``). The first step of each
is timed alone (for the compiled trainer: tracing and code generation), then ``--warmup`` untimed steps (dynamo may
recompile once for a new shape), then ``--steps`` steps interleaved eager/compiled with the order alternating, so
both see the same machine load. Reported: median step time, tokens/s and the speedup eager/compiled. Writes
``benchmarks/results/compile_speed.md`` (``compile_speed_quick.md`` with ``--quick``, ``compile_speed_gpu.md`` on
CUDA).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import RESULTS, ROOT, command, loadavg, machine, table, write  # noqa: I001 - puts the repo on sys.path

from monitor_overhead import timed_step  # noqa: E402
from train.build import build_components  # noqa: E402
from train.config import load_config  # noqa: E402
from train.loop import Trainer  # noqa: E402

QUICK_SETS = ["model.hidden=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1", "model.head_dim=16",
              "model.mlp_hidden=64", "model.max_seq_len=32", "data.seq_len=32", "train.batch_size=4"]


def _trainer(preset: str, compiled: bool, device: str, steps: int, quick: bool, run_dir: Path) -> Trainer:
    sets = [f"train.compile={str(compiled).lower()}", f"train.device=\"{device}\"", f"train.max_steps={steps}",
            "monitor.every=0", "log.wandb=\"disabled\"", "log.progress=false", "train.warmup_steps=0",
            *(QUICK_SETS if quick else [])]
    cfg = load_config(ROOT / "configs" / f"{preset}.toml", sets)
    torch.manual_seed(0)
    return Trainer(cfg, run_dir, build_components(cfg), [])


def _measure(preset: str, args: argparse.Namespace, tmp: Path) -> list[object]:
    total = 1 + args.warmup + args.steps
    trainers = {c: _trainer(preset, c, args.device, total, args.quick, tmp / f"{preset}-{c}") for c in (False, True)}
    first = {c: timed_step(t) for c, t in trainers.items()}
    for _ in range(args.warmup):
        for t in trainers.values():
            timed_step(t)
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.steps):
        for c in ((False, True) if r % 2 == 0 else (True, False)):
            times[c].append(timed_step(trainers[c]))
    cfg = trainers[False].cfg
    tokens = cfg.train.batch_size * cfg.train.grad_accum * cfg.data.seq_len
    eager, compiled = statistics.median(times[False]), statistics.median(times[True])
    shape = f"{cfg.model.n_layers}×{cfg.model.hidden}, batch {cfg.train.batch_size}×{cfg.data.seq_len}"
    return [preset, shape, f"{first[False]:.2f}", f"{first[True]:.1f}", f"{eager * 1e3:.1f}", f"{compiled * 1e3:.1f}",
            f"{tokens / eager:,.0f}", f"{tokens / compiled:,.0f}", f"{eager / compiled:.2f}×"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, 10 steps (a smoke test of the script)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per trainer (default 40, quick 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per trainer after the first")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--presets", nargs="+", default=["tiny-dense", "tiny-moe"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.steps = args.steps or (10 if args.quick else 40)
    suffix = "_quick" if args.quick else ("_gpu" if args.device == "cuda" else "")
    out = args.out or RESULTS / f"compile_speed{suffix}.md"
    before = loadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for preset in args.presets:
            rows.append(_measure(preset, args, Path(tmp)))
            print(" | ".join(map(str, rows[-1])), flush=True)  # a slow compile (MoE on CPU) leaves the rest shown
    header = ["preset", "shape", "first step eager (s)", "first step compiled (s)", "eager ms/step",
              "compiled ms/step", "eager tok/s", "compiled tok/s", "speedup"]
    lines = ["# train.compile: step time, compiled vs eager", "",
             f"`{command('compile_speed.py', argv if argv is not None else sys.argv[1:])}`", "",
             f"Machine: {machine(args.device)}; load average before/after: {before} / {loadavg()}; "
             f"{args.steps} timed steps per trainer, interleaved; {time.perf_counter() - started:.0f} s in all.", "",
             *table(header, rows), "",
             "First step compiled = tracing + code generation (paid once per process, again after a resume). "
             "Monitors off; a monitor step runs eagerly (train/compile.py)."]
    write(out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
