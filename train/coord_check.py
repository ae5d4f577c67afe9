"""``python -m train.coord_check --config X.toml``: do activations and updates keep their size across width and depth?

A coordinate check (muP's ``coord_check``, made to give a verdict): the config is trained for the first ``--steps``
steps at a few widths (``--widths``, default ½×, 1×, 2×, 4× the config's) and depths (``--depths``), each scale with
its HyperP lr (the config is the ``[hyperp]`` base, :func:`train.transfer.pin_base`), with every monitor collected at
every step (:mod:`train.monitors`): the RMS of every layer's residual stream, attention-branch and MLP-branch outputs
(after the residual multiplier) and the update/weight ratio ‖ΔW‖/‖W‖ of every optimizer group.

Verdict: the slope of log(value at the last step) against log(width) — and log(depth) — per quantity, by least
squares over the scales, flagged when it differs from HyperP's expectation by more than ``--threshold`` (default
0.25, i.e. a factor 2^(0.25·log₂ span): ×1.4 over a 4× span, ×1.7 over 8×; a wrong parameterization gives ~0.5–1).
HyperP expects every slope against width to be 0 (the sphere keeps weight norms, the lr has no width factor). Against
depth it expects 0 for the last layer's residual stream (Depth-μP: each of the 2L branches is scaled by 1/√(2L), so
the stream keeps its size) and −½ for the update ratio of the sphere groups (MuonH/AdamH move each matrix by exactly
lr·R and lr ∝ √(L₀/L)); the per-layer mean branch RMS and the other groups' update ratios are shown without a
verdict (a branch's RMS also depends on its position in the stack, and an Adam group's ratio on its init scale).

Per-expert sphere radius: with ``optim.expert_sphere = "per_expert"`` each expert's matrix must keep its own
Frobenius norm; the largest relative change of any expert's norm per MoE layer is reported and flagged above 1e-4
(fp32 rounding of a norm and a retraction per step is ~1e-7 per step; the monitor ``sphere_norm_drift`` reads ~1e-6).
Under ``"joint"`` only the joint norm is kept, so per-expert radii may move: reported, not flagged.

Output in ``--out``: ``coord_check.md`` (verdict tables), ``coord_check.png`` (one panel per quantity, one line per
width or depth, value vs step) and ``coord_check.json`` (every series). Exit 0 when nothing is flagged, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hyperp.errors import ConfigError, HyperpError
from train.config import RunConfig, load_config
from train.sweep import Point
from train.transfer import pin_base
from train.transfer_check import width_overrides

EXPERT_DRIFT_LIMIT = 1e-4
# quantity → HyperP's expected slope of log(value) against log(depth) (others: no verdict); against width every
# slope is expected 0.
DEPTH_EXPECTED = {"resid_last": 0.0, "update_ratio/sphere": -0.5, "update_ratio/head": -0.5}


@dataclass
class Trace:
    """The monitored values of one scale: ``series[quantity]`` = value at steps 1..N."""

    width: int
    depth: int
    series: dict[str, list[float]] = field(default_factory=dict)
    expert_drift: dict[str, float] = field(default_factory=dict)  # MoE layer → max |‖W_e‖/‖W_e⁰‖ − 1|
    expert_mode: str = "per_expert"
    experts_on_sphere: bool = False


def log_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x (NaN with fewer than two positive finite points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if y > 0 and math.isfinite(y)]
    if len(pts) < 2:
        return math.nan
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else math.nan


def flagged(slope: float, expected: float | None, threshold: float) -> bool:
    """|slope − expected| > threshold (a NaN slope too); never without an expectation."""
    return expected is not None and (not math.isfinite(slope) or abs(slope - expected) > threshold)


# ---------------------------------------------------------------------------------------------- tracing


def _expert_norms(model: torch.nn.Module) -> dict[str, list[torch.Tensor]]:
    """Per MoE layer, each stacked expert weight's per-expert Frobenius norms (E,)."""
    return {f"layer_{i:02d}": [torch.linalg.vector_norm(p.detach().double(), dim=(-2, -1))
                               for p in block.mlp.experts.parameters()]
            for i, block in enumerate(model.layers) if getattr(block, "is_moe", False)}


def trace(cfg: RunConfig, steps: int) -> Trace:
    """Train ``steps`` steps of ``cfg`` in this process with the monitors collecting at every step."""
    from train.build import build_components
    from train.loop import Trainer
    from train.monitors.callback import MonitorCallback

    parts = build_components(cfg)
    monitor = MonitorCallback(cfg.monitor)
    out = Trace(cfg.model.hidden, cfg.model.n_layers, expert_mode=cfg.optim.expert_sphere)
    sphere = {id(p) for g in parts.optimizer.param_groups if g.get("name") == "sphere" for p in g["params"]}
    start = _expert_norms(parts.model)
    out.experts_on_sphere = any(id(p) in sphere for b in parts.model.layers if getattr(b, "is_moe", False)
                                for p in b.mlp.experts.parameters())
    with tempfile.TemporaryDirectory() as tmp:  # the trainer's run dir: nothing is saved (no fit, no checkpoint)
        trainer = Trainer(cfg, Path(tmp), parts, [monitor])
        monitor.on_train_start(trainer)
        for step in range(1, steps + 1):
            metrics = trainer.train_step()
            monitor.on_step_end(trainer, step, metrics)
            for name, value in metrics.items():
                if name.startswith(("monitor/rms/", "monitor/update_ratio/")):
                    out.series.setdefault(name.removeprefix("monitor/"), []).append(float(value))
        monitor.on_train_end(trainer)
    for layer, norms in _expert_norms(parts.model).items():
        out.expert_drift[layer] = max(float((n / n0 - 1).abs().max()) for n, n0 in zip(norms, start[layer], strict=True))
    return out


def depth_summary(t: Trace) -> dict[str, list[float]]:
    """Layer-free quantities comparable across depths: last residual stream, mean branch RMS, update ratios."""

    def mean(branch: str) -> list[float]:
        rows = [v for k, v in t.series.items() if k.startswith(f"rms/{branch}/layer_")]
        return [sum(col) / len(col) for col in zip(*rows, strict=True)]

    out = {"resid_last": t.series[f"rms/layer_{t.depth - 1:02d}"], "attn_mean": mean("attn"), "mlp_mean": mean("mlp")}
    out.update({k: v for k, v in t.series.items() if k.startswith("update_ratio/")})
    return out


# ---------------------------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class Slope:
    axis: str  # width | depth
    quantity: str
    slope: float
    expected: float | None
    flag: bool


def slopes(traces: Sequence[Trace], axis: str, threshold: float) -> list[Slope]:
    """One :class:`Slope` per quantity present at every scale, from the values at the last step."""
    if len(traces) < 2:
        return []
    series = [t.series if axis == "width" else depth_summary(t) for t in traces]
    xs = [t.width if axis == "width" else t.depth for t in traces]
    names = [q for q in series[0] if all(q in s for s in series)]
    out = []
    for q in names:
        expected = 0.0 if axis == "width" else DEPTH_EXPECTED.get(q)
        s = log_slope(xs, [ser[q][-1] for ser in series])
        out.append(Slope(axis, q, s, expected, flagged(s, expected, threshold)))
    return out


def expert_flags(traces: Sequence[Trace]) -> list[tuple[Trace, str, float, bool]]:
    return [(t, layer, drift, t.experts_on_sphere and t.expert_mode == "per_expert" and drift > EXPERT_DRIFT_LIMIT)
            for t in traces for layer, drift in t.expert_drift.items()]


# ---------------------------------------------------------------------------------------------- CLI


def _ints(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= 1")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.coord_check", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--widths", type=_ints, default=None, help="model.hidden values (default ½×, 1×, 2×, 4× the config's)")
    p.add_argument("--depths", type=_ints, default=None, help="model.n_layers values (default ½×, 1×, 2×, 4×; one "
                   "value skips the depth check)")
    p.add_argument("--steps", type=int, default=10, help="steps traced per scale (default 10)")
    p.add_argument("--threshold", type=float, default=0.25, help="allowed |slope − expected| (default 0.25)")
    p.add_argument("--out", default=None, help="output directory (default runs/coord-check-<config>)")
    p.add_argument("--results", default=None, metavar="PATH.md", help="also write the report here (PNG beside it)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.threshold <= 0:
        raise ConfigError(f"--steps={args.steps} must be >= 1 and --threshold={args.threshold} > 0")
    return args


def scale_configs(args: argparse.Namespace) -> tuple[RunConfig, list[RunConfig], list[RunConfig]]:
    """(base, width scales, depth scales), each with the HyperP lr relative to the base and monitors at every step."""
    sets = [*args.overrides, "monitor.every=1", 'log.wandb="disabled"', "log.progress=false"]
    base = load_config(args.config, sets)
    sets += pin_base(base)
    widths = args.widths or [base.model.hidden * f // 2 for f in (1, 2, 4, 8) if base.model.hidden * f % 2 == 0]
    depths = args.depths or sorted({max(1, base.model.n_layers * f // 2) for f in (1, 2, 4, 8)})

    def at(overrides: Sequence[tuple[str, object]]) -> RunConfig:
        return load_config(args.config, [*sets, *Point(tuple(overrides)).set_args()])

    width_cfgs = [at(width_overrides(base, w / base.model.hidden)) for w in widths]
    depth_cfgs = [at([("model.n_layers", d)]) for d in depths]
    return base, width_cfgs, depth_cfgs


def main(argv: list[str] | None = None) -> int:
    from train.coord_report import write_report

    try:
        args = parse_args(argv)
        base, width_cfgs, depth_cfgs = scale_configs(args)
        out = Path(args.out or f"runs/coord-check-{Path(args.config).stem}")
        widths = [trace(cfg, args.steps) for cfg in width_cfgs] if len(width_cfgs) > 1 else []
        depths = [trace(cfg, args.steps) for cfg in depth_cfgs] if len(depth_cfgs) > 1 else []  # one: no slope
    except SystemExit as exc:
        return int(exc.code or 0)
    except HyperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    command = "python -m train.coord_check " + shlex.join(argv if argv is not None else sys.argv[1:])
    results = slopes(widths, "width", args.threshold) + slopes(depths, "depth", args.threshold)
    experts = expert_flags(widths + depths)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coord_check.json").write_text(json.dumps(
        {"widths": [t.__dict__ for t in widths], "depths": [t.__dict__ for t in depths]}, indent=1))
    write_report(base, widths, depths, results, experts, args, command, [out / "coord_check.md"]
                 + ([Path(args.results)] if args.results else []))
    return 1 if any(s.flag for s in results) or any(e[3] for e in experts) else 0


if __name__ == "__main__":
    sys.exit(main())
