"""Step-time overhead of the stability monitors: tiny-moe with monitor.every ∈ {0, 1, 10, 100}, side by side.

``python benchmarks/monitor_overhead.py [--quick] [--steps N] [--config configs/tiny-moe.toml]``

One trainer per setting, identical seeds and data; steps are interleaved round-robin (the order rotates each
round) so that load from other processes hits every setting alike. Reported: mean step time per setting, its
overhead vs every=0, and the cost of one monitor step (monitor steps vs plain steps of every=1), from which the
overhead at every=N is also predicted as cost/N (less noisy than a difference of two means).
Writes ``benchmarks/results/monitor_overhead.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.build import build_components  # noqa: E402
from train.callbacks import build_callbacks  # noqa: E402
from train.config import load_config  # noqa: E402
from train.loop import Trainer  # noqa: E402

from _common import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

EVERY = (0, 1, 10, 100)


def make_trainer(config: str, every: int, steps: int, run_dir: Path) -> Trainer:
    cfg = load_config(config, [f"monitor.every={every}", f"train.max_steps={max(steps, 2)}", "log.wandb=\"disabled\"",
                               "log.progress=false", "train.warmup_steps=0"])
    run_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [cb for cb in build_callbacks(cfg) if type(cb).__name__ == "MonitorCallback"]
    trainer = Trainer(cfg, run_dir, build_components(cfg), callbacks)
    for cb in trainer.callbacks:
        cb.on_train_start(trainer)
    return trainer


def timed_step(trainer: Trainer) -> float:
    start = time.perf_counter()
    metrics = trainer.train_step()
    for cb in trainer.callbacks:
        cb.on_step_end(trainer, trainer.state.step, metrics)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 steps per setting (default 100)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per setting first")
    parser.add_argument("--config", default=str(ROOT / "configs/tiny-moe.toml"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/monitor_overhead.md")
    args = parser.parse_args(argv)
    steps = args.steps or (20 if args.quick else 100)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {e: make_trainer(args.config, e, steps + args.warmup, Path(tmp) / f"every{e}") for e in EVERY}
        times: dict[int, list[tuple[int, float]]] = {e: [] for e in EVERY}
        for r in range(steps + args.warmup):
            order = EVERY[r % len(EVERY):] + EVERY[: r % len(EVERY)]
            for e in order:
                t = timed_step(trainers[e])
                if r >= args.warmup:
                    times[e].append((trainers[e].state.step, t))
        device = trainers[0].device
        cfg = trainers[0].cfg
    # Paired by round (the four settings step back to back, so they share the machine's load at that moment):
    # b = extra cost of a monitor step (every=1 vs every=0), c = extra cost of a plain step (every=100 off its
    # monitor step vs every=0: the expert-count hook). Predicted overhead at every=N: (c + b/N) / plain step.
    t = {e: [x for _, x in times[e]] for e in EVERY}
    base = statistics.mean(t[0])
    b = statistics.median(x1 - x0 for x1, x0 in zip(t[1], t[0]))
    c = statistics.median(x - x0 for (s, x), x0 in zip(times[100], t[0]) if s % 100)
    lines = [
        "# Monitor overhead (tiny-moe step time)", "",
        f"- command: `python benchmarks/monitor_overhead.py{' --quick' if args.quick else ''}` "
        f"({steps} timed steps per setting after {args.warmup} warm-up steps, interleaved round-robin)",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical cores visible (shared with other jobs), "
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, device {device}",
        f"- model: {Path(args.config).name} ({cfg.model.n_layers} layers, hidden {cfg.model.hidden}, "
        f"{cfg.model.moe.num_experts if cfg.model.moe else 0} experts top-{cfg.model.moe.top_k if cfg.model.moe else 0}), "
        f"batch {cfg.train.batch_size}×{cfg.data.seq_len} tokens, monitor.sample_tokens={cfg.monitor.sample_tokens}",
        "", "| monitor.every | mean step (ms) | median step (ms) | overhead vs every=0, measured means | "
        "overhead, paired model (c + b/N) |", "|---:|---:|---:|---:|---:|",
    ]
    for e in EVERY:
        mean, med = statistics.mean(t[e]), statistics.median(t[e])
        measured = "–" if e == 0 else f"{(mean / base - 1) * 100:+.1f}%"
        predicted = "–" if e == 0 else f"{(c + b / e) / base * 100:+.2f}%"
        lines.append(f"| {e} | {mean * 1e3:.1f} | {med * 1e3:.1f} | {measured} | {predicted} |")
    lines += ["", f"Paired medians: one monitor step costs b = {b * 1e3:.1f} ms extra ({b / base * 100:.1f}% of a plain "
              f"step of {base * 1e3:.0f} ms); a plain step with monitors on costs c = {c * 1e3:+.1f} ms "
              f"({c / base * 100:+.2f}%). A monitor step computes the activation statistics on the first "
              "micro-batch, the optimizer health (one copy of the weights) and reads everything back with one "
              "`.tolist()`; other steps add only the on-device expert-count sum, no host sync. The measured-means "
              "column compares means on a shared machine and carries its noise.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
