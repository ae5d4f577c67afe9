"""One-GPU FSDP2 step vs the plain step: the same losses and weights, and the step time side by side.

``python benchmarks/gpu/fsdp_step.py [--quick] [--preset d12-moe] [--layers 2] [--batch-size 2] [--steps 4]
[--out FILE] [--json FILE]``

This process opens a one-rank NCCL process group (as ``torchrun --nproc_per_node 1`` would) and builds two trainers
from one config and seed: plain, and FSDP2 (``train.parallel="fsdp"``: ``fully_shard`` per block and root).

- **fp32** (``train.dtype="float32"``, TF32 off, Newton–Schulz in fp32): FSDP2 must equal the plain run. With one
  rank nothing is reduced; only the summation order of sharded norms differs (~1e-7, which Adam's division by √v
  amplifies on near-zero gradients), so every step's loss (relative) and every parameter element after the last step
  (|a − b| ≤ 1e-5 + 1e-5·|b|) must agree to 1e-5: the criterion of tests/distributed/test_distributed.py on CPU.
- **bf16** (``train.dtype="auto"``): plain = fp32 weights under autocast, FSDP2 = bf16 parameters with fp32
  gradient reduction, so the two differ by bf16 rounding; reported: losses side by side, median step times.
The MoE preset runs with ``moe.backend="torch"`` (this check must not wait for the MegaBlocks build).
Without CUDA it prints why and exits 0 (nothing written).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))

from _common import ROOT, command, machine, sync, table, write, write_json  # noqa: E402

from hyperp.optim.sharded import full  # noqa: E402
from moe.dispatch.precision import relative_error  # noqa: E402

FP32_TOL = 1e-5


def open_one_rank_group() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def make_trainer(config: str, overrides: list[str], fsdp: bool, run_dir: Path):
    from train import distributed
    from train.build import build_components
    from train.config import load_config
    from train.loop import Trainer

    cfg = load_config(config, [*overrides, f'train.parallel="{"fsdp" if fsdp else "ddp"}"'])
    env = distributed.init(cfg) if fsdp else distributed.DistEnv()
    trainer = Trainer(cfg, run_dir, build_components(cfg, env), callbacks=[])
    if cfg.train.dtype == "float32":  # MuonH runs Newton–Schulz in bf16 on CUDA by default; exactness needs fp32
        for group in trainer.optimizer.param_groups:
            if "ns_dtype" in group:
                group["ns_dtype"] = torch.float32
    return trainer


def compare(config: str, overrides: list[str], steps: int, tmp: Path) -> dict:
    """Both trainers stepped alternately; losses, step times and the final parameters compared."""
    plain = make_trainer(config, overrides, False, tmp / "plain")
    fsdp = make_trainer(config, overrides, True, tmp / "fsdp")
    losses: dict[str, list[float]] = {"plain": [], "fsdp": []}
    times: dict[str, list[float]] = {"plain": [], "fsdp": []}
    for _ in range(steps):
        for name, trainer in (("plain", plain), ("fsdp", fsdp)):
            start = time.perf_counter()
            metrics = trainer.train_step()  # ends in a host sync (the finite check); the sync below is for safety
            sync(trainer.device)
            times[name].append(time.perf_counter() - start)
            losses[name].append(metrics["train/loss"])
    params = dict(plain.model.named_parameters())
    pairs = [(full(q.detach()), params[n].detach()) for n, q in fsdp.model.named_parameters()]
    loss_err = max(abs(a - b) / abs(b) for a, b in zip(losses["fsdp"], losses["plain"]))
    return {"losses": losses, "max_rel_loss_diff": loss_err,
            "max_rel_param_diff": max(relative_error(a, b) for a, b in pairs),
            "max_abs_param_diff": max(float((a - b).abs().max()) for a, b in pairs),
            "params_close": all(torch.allclose(a, b, rtol=FP32_TOL, atol=FP32_TOL) for a, b in pairs),
            "step_ms": {n: statistics.median(t[1:] or t) * 1e3 for n, t in times.items()},
            "tokens_per_step": plain.tokens_per_step}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 layer, micro-batch 1, 2 steps (smoke run)")
    parser.add_argument("--preset", default="d12-moe", help="configs/<name>.toml")
    parser.add_argument("--layers", type=int, default=None, help="model.n_layers (default 2; quick 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="micro-batch (default 2; quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per trainer (default 4; quick 2)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke run of this script")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help='config override, e.g. --set data.cache_dir=".gpu-data"')
    parser.add_argument("--out", default=None, help="markdown report (default: printed only)")
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    return parser


def setup(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The config file and the overrides both trainers share (dtype and parallel mode are added per run)."""
    from train.config import load_config

    config = str(ROOT / "configs" / f"{args.preset}.toml")
    args.steps = args.steps or (2 if args.quick else 4)
    base = [f"model.n_layers={args.layers or (1 if args.quick else 2)}", "train.grad_accum=1",
            f"train.batch_size={args.batch_size or (1 if args.quick else 2)}", f'train.device="{args.device}"',
            "monitor.every=0", 'log.wandb="disabled"', "log.progress=false", f"train.max_steps={args.steps}",
            "train.warmup_steps=0", *args.overrides]
    if load_config(config).model.moe is not None:
        base.append('model.moe.backend="torch"')
    return config, base


def check(args: argparse.Namespace) -> None:
    """Dry run (no CUDA): the config with its overrides loads and its token cache is found (offline when set)."""
    from train.config import load_config
    from train.data import prepare

    config, base = setup(args)
    prepare(load_config(config, [*base, 'train.parallel="fsdp"']).data)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("fsdp_step: no CUDA device; skipped (nothing written)")
        return 0
    config, base = setup(args)
    open_one_rank_group()
    torch.backends.cuda.matmul.allow_tf32 = False
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, dtype in (("fp32", "float32"), ("bf16", "auto")):
            results[mode] = compare(config, [*base, f'train.dtype="{dtype}"'], args.steps, Path(tmp) / mode)
            torch.cuda.empty_cache()
    exact = results["fp32"]["max_rel_loss_diff"] <= FP32_TOL and results["fp32"]["params_close"]
    argv_used = list(argv if argv is not None else sys.argv[1:])
    rows = [[mode, f"{r['max_rel_loss_diff']:.2e}", f"{r['max_rel_param_diff']:.2e}", f"{r['max_abs_param_diff']:.2e}",
             " / ".join(f"{a:.4f}" for a in r["losses"]["plain"]), " / ".join(f"{a:.4f}" for a in r["losses"]["fsdp"]),
             f"{r['step_ms']['plain']:.1f}", f"{r['step_ms']['fsdp']:.1f}"] for mode, r in results.items()]
    lines = [
        "# One-GPU FSDP2 step vs the plain step", "",
        f"- command: `{command('gpu/fsdp_step.py', argv_used)}`", f"- machine: {machine(args.device)}",
        f"- model: {args.preset} with overrides {' '.join(base)}; {results['fp32']['tokens_per_step']} tokens per step",
        "", *table(["dtype", "max rel loss diff", "max rel param diff (normwise)", "max abs param diff",
                    "losses plain", "losses FSDP2", "plain step ms", "FSDP2 step ms"], rows),
        "", f"Verdict: FSDP2 {'matches' if exact else '**does not match**'} the plain step in fp32 (tolerance "
        f"{FP32_TOL:g}); the bf16 rows differ by design (bf16 parameters vs autocast).",
    ]
    if args.out:
        write(Path(args.out), lines)
    else:
        print("\n".join(lines))
    write_json(args.json, results | {"fp32_match": exact})
    from train import distributed

    distributed.shutdown(distributed.DistEnv(active=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
