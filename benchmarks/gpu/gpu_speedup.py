"""Issue 17 on the GPU: does MuonH + HyperP beat Muon and AdamW at equal tokens? One arm per call, then the report.

``python benchmarks/gpu/gpu_speedup.py arm NAME --data DIR --run-dir DIR [--out MD --json JSON]`` trains one arm of
``ARMS`` on the carried ``large`` token cache; ``... report --runs DIR --out MD --json JSON`` compares the arms whose
run folders (``DIR/<arm>/run``) exist. The orchestrator runs them as its ``speedup`` suite
(``bash benchmarks/gpu/run.sh --suite speedup``); the report can be rebuilt here from the returned artifacts.

Token-equivalent speedup of (a) over a baseline: :func:`_exp.token_speedup` on the val-loss curves against tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for sub in ("", "benchmarks/experiments"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

from _exp import fmt, plt, token_speedup  # noqa: E402

GPU_CONFIGS = ROOT / "configs" / "experiments" / "gpu"
# name -> (preset, lr factor on the preset's lr, what it is); (a) runs at the transferred lr, untuned
ARMS: dict[str, tuple[str, float, str]] = {
    "muonh": ("d6.toml", 1.0, "(a) MuonH + HyperP, lr from the transfer rule"),
    "muon": ("muon.toml", 1.0, "(b) Muon + decoupled wd, ArchScale's baseline recipe"),
    "adamw": ("adamw.toml", 1.0, "(c) AdamW, standard parameterization"),
    "muonh_x0.5": ("d6.toml", 0.5, "(a) at 0.5x the transferred lr"),
    "muonh_x2": ("d6.toml", 2.0, "(a) at 2x the transferred lr"),
}
BASELINES = ("muon", "adamw")
MONITOR_MAXIMA = ("monitor/z_logits_max", "monitor/z_attn/", "monitor/attn_logit_max/", "monitor/rms/",
                  "monitor/max_over_rms/", "monitor/kurtosis/", "monitor/update_ratio/", "train/grad_norm")


def arm_overrides(name: str, data: str) -> tuple[Path, list[str]]:
    """The arm's preset and its ``--set`` overrides: the carried cache, and the lr factor applied to the preset's lr."""
    from train.config import load_config

    preset, factor, _ = ARMS[name]
    path = GPU_CONFIGS / preset
    sets = [f'data.cache_dir="{data}"']
    if factor != 1.0:
        sets.append(f"optim.lr={load_config(path, []).optim.lr * factor!r}")
    return path, sets


def check(args: argparse.Namespace) -> None:
    """Dry run (no CUDA): the arm's config loads, its token cache is found (offline when set), and the run reads
    every training window at most once (issue 17: no repetition within a run)."""
    if args.command != "arm":
        return
    from train.config import load_config
    from train.data import prepare

    path, sets = arm_overrides(args.name, args.data)
    cfg = load_config(path, sets)
    windows = prepare(cfg.data).sampler(cfg.train.batch_size, grad_accum=cfg.train.grad_accum).n_windows
    needed = cfg.train.max_steps * cfg.train.batch_size * cfg.train.grad_accum
    if needed > sum(windows):
        raise ValueError(f"{args.name}: {needed} windows needed, the cache has {sum(windows)} (data would repeat)")


def run_arm(args: argparse.Namespace) -> dict:
    from train.__main__ import main as train_main

    path, sets = arm_overrides(args.name, args.data)
    argv = ["--config", str(path), "--out", str(Path(args.run_dir) / "run")]
    for s in sets:
        argv += ["--set", s]
    t0 = time.monotonic()
    rc = train_main(argv)
    summary = summarize(Path(args.run_dir) / "run") | {"arm": args.name, "rc": rc, "wall_s": time.monotonic() - t0}
    return summary | {"pass": rc == 0}


# ------------------------------------------------------------------------------------------------ report


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def summarize(run: Path) -> dict:
    """Val curve against tokens, tokens/s (median of the logged intervals), the monitors' maxima, divergence."""
    records = read_metrics(run)
    tokens = {r["step"]: r["train/tokens"] for r in records if "train/tokens" in r}
    per_step = max(tokens.values()) / max(tokens) if tokens else math.nan
    val = [(r["step"] * per_step, r["val/loss"]) for r in records if "val/loss" in r]
    rates = sorted(r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r)
    maxima: dict[str, float] = {}
    for prefix in MONITOR_MAXIMA:
        values = [v for r in records for k, v in r.items() if k.startswith(prefix) and isinstance(v, (int, float))]
        if values:
            maxima[prefix.rstrip("/")] = max(values)
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    return {"val": val, "final_val": val[-1][1] if val else math.nan, "steps": max(tokens, default=0),
            "tokens": max(tokens.values(), default=0), "tokens_per_s": rates[len(rates) // 2] if rates else math.nan,
            "monitor_max": maxima, "finite": all(math.isfinite(x) for x in losses)}


def compare(runs: dict[str, dict]) -> dict[str, float]:
    """Token-equivalent speedup of arm (a) over each baseline that ran (> 1: MuonH + HyperP needs fewer tokens)."""
    ours = runs.get("muonh")
    if ours is None or not ours["val"]:
        return {}
    return {b: token_speedup(runs[b]["val"], ours["val"]) for b in BASELINES if b in runs and runs[b]["val"]}


def report(args: argparse.Namespace) -> dict:
    root = Path(args.runs)
    runs = {name: summarize(root / name / "run") for name in ARMS if (root / name / "run" / "metrics.jsonl").exists()}
    speedups = compare(runs)
    png = Path(args.out).with_suffix(".png") if args.out else root / "speedup.png"
    plot(runs, png)
    lines = ["# MuonH + HyperP vs Muon and AdamW at equal tokens (GPU)", "",
             "| arm | what | steps | tokens | final val loss | tokens/s | finite | max z_logits | max attn logit | "
             "max update ratio |", "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for name, r in runs.items():
        m = r["monitor_max"]
        lines.append(f"| {name} | {ARMS[name][2]} | {r['steps']} | {int(r['tokens']):,} | {fmt(r['final_val'])} | "
                     f"{r['tokens_per_s']:,.0f} | {r['finite']} | {fmt(m.get('monitor/z_logits_max'), 2)} | "
                     f"{fmt(m.get('monitor/attn_logit_max'), 2)} | {fmt(m.get('monitor/update_ratio'), 4)} |")
    lines += ["", "Token-equivalent speedup of (a) MuonH + HyperP over each baseline (> 1: (a) reaches the baseline's "
              "final val loss with that many times fewer tokens; < 1: the baseline is ahead):", ""]
    lines += [f"- over {b}: **{fmt(s, 2)}×**" for b, s in speedups.items()] or ["- (arm (a) or the baselines missing)"]
    lines += ["", f"![val loss]({png.name})"]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return {"runs": {k: {kk: vv for kk, vv in v.items() if kk != "val"} | {"val": v["val"]} for k, v in runs.items()},
            "speedup": speedups, "pass": bool(speedups)}


def plot(runs: dict[str, dict], png: Path) -> None:
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(7, 4.5))
    for name, r in runs.items():
        if r["val"]:
            x, y = zip(*r["val"])
            ax.plot([t / 1e6 for t in x], y, label=f"{name}: {ARMS[name][2]}")
    ax.set(xlabel="training tokens (M)", ylabel="val loss", title="d6 dense, bf16, equal tokens")
    finals = [r["final_val"] for r in runs.values() if math.isfinite(r["final_val"])]
    if finals:
        ax.set_ylim(min(finals) - 0.1, min(finals) + 2.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    pyplot.close(fig)


# ------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    arm = sub.add_parser("arm", help="train one arm")
    arm.add_argument("name", choices=list(ARMS))
    arm.add_argument("--data", required=True, help="the carried token cache (data.cache_dir)")
    arm.add_argument("--run-dir", required=True, help="the run goes to RUN_DIR/run")
    rep = sub.add_parser("report", help="compare the arms that ran")
    rep.add_argument("--runs", required=True, help="folder holding <arm>/run/metrics.jsonl")
    for p in (arm, rep):
        p.add_argument("--out", default=None, help="markdown report")
        p.add_argument("--json", default=None, help="JSON results")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run_arm(args) if args.command == "arm" else report(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    if args.command == "arm" and args.out:
        Path(args.out).write_text(f"{ARMS[args.name][2]}: {result['steps']} steps, final val loss "
                                  f"{fmt(result['final_val'])}, {result['tokens_per_s']:,.0f} tokens/s, "
                                  f"wall {result['wall_s']:.0f} s, exit {result['rc']}\n")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
