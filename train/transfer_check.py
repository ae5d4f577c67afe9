"""``python -m train.transfer_check --config BASE.toml``: does one lr transfer across scales as HyperP says? PASS/FAIL.

For each axis — width, depth, training tokens and, for MoE configs, granularity (top-k and expert size at fixed
active and total parameters, SPEC §4) — the base config and scales ×2 below and above it (``--scales``; ×2 and ×4
above where below is impossible, e.g. depth 1) train on a ×2 grid of *base* lrs: every run's lr is ``base lr × the HyperP transfer factor`` of
its scale (:func:`train.transfer.derive_run` with the base config as ``[hyperp]`` base, what training itself uses).
If the rule is right, the best base lr is the same at every scale. The prediction for the scales of an axis is the
optimum of its smallest scale — where one would tune, since HyperP transfers a base lr tuned on the smallest model up
(with the default ``--scales -1,1`` that spans 2× and 4×, while no run is larger than 2× the config). Per scale the
report gives where the best lr sits relative to that prediction in grid steps, the loss lost by training at the
predicted lr (regret), and a verdict against ``--tolerance`` (default: within one ×2 step) — see
:mod:`train.transfer_verdict`.

How differences are made meaningful: the optimum is located by a parabola in log₂ lr (a fraction of a grid step),
and the base's best point is rerun with ``--seeds`` − 1 more seeds; a regret below 2·√2·σ_seed is noise and passes.
A scale whose best lr sits at the edge of its grid gets one more point beyond that edge, up to ``--extend`` times.

Runs go through :mod:`train.sweep` (one process per point, resumable: rerun the same command after a kill; ``--jobs``
runs at a time, one GPU each when CUDA is present). Output in ``--out``: the sweep's ``results.md``/``.csv``, and
``transfer_check.md`` (tables, verdicts, machine, time) with ``transfer_check.png`` (loss vs base lr per axis, one
curve per scale, the prediction marked); ``--results PATH.md`` writes the report there too (PNG beside it).
Exit status: 0 PASS, 1 FAIL (or runs that crashed), 2 bad input, 3 INCONCLUSIVE.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperp.errors import ConfigError, HyperpError
from train.config import RunConfig, load_config
from train.sweep import RESULT_FILE, Point, run_sweep
from train.transfer import derive_run, pin_base, run_scale
from train.transfer_verdict import (FAIL, INCONCLUSIVE, PASS, Judgement, Optimum, combine, judge, locate,
                                    meaningful_difference)

AXES = ("width", "depth", "tokens", "granularity")
EXIT = {PASS: 0, FAIL: 1, INCONCLUSIVE: 3}
# --quick (CI): a 2 × 32 model, 20 steps of 4 × 32 tokens, one scale up per axis, 3 lrs, one extra seed, no extension.
QUICK_SETS = ("model.hidden=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1", "model.head_dim=16",
              "model.mlp_hidden=64", "model.max_seq_len=32", "data.seq_len=32", "train.batch_size=4",
              "train.max_steps=20", "train.warmup_steps=0", "train.eval_batches=2")
Overrides = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Member:
    """One scale of an axis: ``exponent`` ×2 steps from the base (0 = the base config itself, shared by all axes)."""

    axis: str
    exponent: int
    value: float
    overrides: Overrides
    factor: float = 1.0  # the HyperP lr factor this scale trains with, relative to the base

    @property
    def label(self) -> str:
        return scale_label(self.axis, self.value)


def scale_label(axis: str, value: float) -> str:
    return f"{axis} {value / 1e3:g}k" if axis == "tokens" else f"{axis} {value:g}"


# ---------------------------------------------------------------------------------------------- scales


def _times(key: str, value: int, factor: float) -> int:
    scaled = value * factor
    if scaled < 1 or scaled != int(scaled):
        raise ConfigError(f"{key}={value} × {factor:g} is not a positive integer")
    return int(scaled)


def width_overrides(cfg: RunConfig, factor: float) -> Overrides:
    """Width × factor at fixed head_dim (heads ∝ width, as the HyperP family), MLP and expert widths × factor."""
    m = cfg.model
    heads = _times("model.n_heads", m.n_heads, factor)
    kv = max(1, m.n_kv_heads * factor)
    if kv != int(kv) or heads % int(kv):
        raise ConfigError(f"model.n_kv_heads={m.n_kv_heads} × {factor:g} does not divide {heads} heads")
    out: list[tuple[str, Any]] = [("model.hidden", _times("model.hidden", m.hidden, factor)), ("model.n_heads", heads),
                                  ("model.n_kv_heads", int(kv)), ("model.head_dim", m.resolved_head_dim),
                                  ("model.mlp_hidden", _times("model.mlp_hidden", m.mlp_hidden, factor))]
    if m.moe is not None:
        out.append(("model.moe.expert_hidden", _times("model.moe.expert_hidden", m.moe.expert_hidden, factor)))
        if m.moe.shared_expert:
            out.append(("model.moe.shared_hidden", _times("model.moe.shared_hidden", m.moe.shared_hidden, factor)))
    return tuple(out)


def _axis_overrides(cfg: RunConfig, axis: str, factor: float) -> Overrides:
    m, t = cfg.model, cfg.train
    if axis == "width":
        return width_overrides(cfg, factor)
    if axis == "depth":
        return (("model.n_layers", _times("model.n_layers", m.n_layers, factor)),)
    if axis == "tokens":
        return (("train.max_steps", _times("train.max_steps", t.max_steps, factor)),)
    if m.moe is None:
        raise ConfigError("the granularity axis needs an MoE config ([model.moe])")
    # k × f experts of I / f out of E × f: active and total expert parameters stay fixed (SPEC §4 family).
    out = [("model.moe.top_k", _times("model.moe.top_k", m.moe.top_k, factor)),
           ("model.moe.num_experts", _times("model.moe.num_experts", m.moe.num_experts, factor)),
           ("model.moe.expert_hidden", _times("model.moe.expert_hidden", m.moe.expert_hidden, 1 / factor))]
    if m.moe.shared_expert:
        out.append(("model.moe.shared_hidden", m.moe.shared_hidden))
    return tuple(out)


def axis_value(cfg: RunConfig, axis: str) -> float:
    scale = run_scale(cfg)
    return {"width": scale.width, "depth": scale.depth, "tokens": scale.tokens, "granularity": scale.granularity}[axis]


def _changed(base: RunConfig, overrides: Overrides) -> Overrides:
    """Only the keys whose value differs from the base's (short, readable run names)."""
    current = base.to_dict()

    def value(key: str) -> Any:
        node: Any = current
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    return tuple((k, v) for k, v in overrides if value(k) != v)


def axis_members(config: str, sets: Sequence[str], base: RunConfig, axis: str, exponents: Sequence[int]) -> list[Member]:
    """The scales base × 2^e of one axis. An impossible scale below the base (half of one layer, of top-1, …) is
    replaced by the next one above the largest, so every axis keeps as many scales; one above the base must exist."""
    members, queue, top = [], sorted(exponents), max(exponents)
    while queue:
        exponent = queue.pop(0)
        try:
            overrides = _changed(base, _axis_overrides(base, axis, 2.0**exponent))
            cfg = load_config(config, [*sets, *(f"{k}={_toml(v)}" for k, v in overrides)])
        except ConfigError:
            if exponent > 0:
                raise
            top += 1
            queue.append(top)
            continue
        members.append(Member(axis, exponent, axis_value(cfg, axis), overrides, derive_run(cfg).transfer_factor))
    return members


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


# ---------------------------------------------------------------------------------------------- the check


@dataclass
class Check:
    """The plan of one check and, once :meth:`run` has run, its results."""

    config: str
    sets: list[str]  # user --set (and --quick / --steps) overrides, then the check's own (base scale, no monitors)
    base: RunConfig
    members: list[Member]
    centre: float  # the base config's lr: grid step k is centre·2^k (base lr)
    grid: tuple[int, ...]
    seeds: int
    extend: int
    tolerance: float
    out: Path
    jobs: int
    steps: dict[Member, set[int]] = field(default_factory=dict)  # grid steps run per scale
    seed_step: int | None = None  # the base grid step rerun with more seeds
    failed: set[str] = field(default_factory=set)
    trained: int = 0

    def __post_init__(self) -> None:
        self.steps = {m: set(self.grid) for m in self.members}

    @property
    def base_member(self) -> Member:
        return next(m for m in self.members if m.exponent == 0)

    def point(self, member: Member, k: int, seed: int | None = None) -> Point:
        extra = () if seed is None else (("train.seed", seed),)
        return Point((*member.overrides, ("optim.lr", self.centre * 2.0**k), *extra))

    def points(self) -> list[Point]:
        pts = [self.point(m, k) for m in self.members for k in sorted(self.steps[m])]
        if self.seed_step is not None:
            pts += [self.point(self.base_member, self.seed_step, self.base.train.seed + i) for i in range(1, self.seeds)]
        return pts

    def loss(self, point: Point) -> float | None:
        """Final val loss of a finished point (inf when it diverged), None when it has not finished."""
        path = self.out / point.name / RESULT_FILE
        if not path.exists():
            return None
        row = json.loads(path.read_text())
        value = float(row.get("final_val_loss", math.nan))
        return math.inf if row.get("diverged") or not math.isfinite(value) else value

    def curve(self, member: Member) -> dict[int, float]:
        out = {}
        for k in sorted(self.steps[member]):
            value = self.loss(self.point(member, k))
            if value is not None:
                out[k] = value
        return out

    def seed_losses(self) -> list[float]:
        if self.seed_step is None:
            return []
        pts = [self.point(self.base_member, self.seed_step)]
        pts += [self.point(self.base_member, self.seed_step, self.base.train.seed + i) for i in range(1, self.seeds)]
        return [v for v in (self.loss(p) for p in pts) if v is not None]

    def _grow(self) -> bool:
        """Add the next round's points: the seed reruns, and one lr beyond the edge where an optimum sits there."""
        grew = False
        base_opt = locate(self.curve(self.base_member))
        if self.seed_step is None and self.seeds > 1 and base_opt is not None:
            self.seed_step, grew = base_opt.best, True
        for member in self.members:
            ks, curve = self.steps[member], self.curve(member)
            if not curve:  # its runs crashed (reported as failures): nothing to extend
                continue
            opt = locate(curve)
            side = -1 if opt is None else opt.at_edge  # every run diverged: look lower
            edge = min(ks) if side < 0 else max(ks)
            if side and abs(edge + side - (min(self.grid) if side < 0 else max(self.grid))) <= self.extend:
                ks.add(edge + side)
                grew = True
        return grew

    def run(self) -> None:
        """Rounds of sweeps until no point is added; a rerun replays the same decisions from the recorded results."""
        while True:
            points = [p for p in self.points() if p.name not in self.failed]  # a crash is not retried each round
            todo = sum(not (self.out / p.name / RESULT_FILE).exists() for p in points)
            failed = run_sweep(self.config, points, self.out, self.sets, self.jobs)
            self.failed.update(failed)
            self.trained += todo - len(failed)
            if not self._grow():
                return

    # ------------------------------------------------------------------------------------------ results
    def judgements(self) -> dict[str, list[tuple[Member, Optimum | None, Judgement | None]]]:
        """Per axis, its scales from the smallest up; each judged against the smallest (the prediction, None)."""
        noise = meaningful_difference(self.seed_losses())
        out: dict[str, list[tuple[Member, Optimum | None, Judgement | None]]] = {}
        for axis in dict.fromkeys(m.axis for m in self.members if m.exponent != 0):
            rows = sorted([self.base_member, *(m for m in self.members if m.axis == axis)], key=lambda m: m.exponent)
            anchor = locate(self.curve(rows[0]))
            out[axis] = [(m, locate(self.curve(m)), None if i == 0 else
                          judge(locate(self.curve(m)), anchor, self.curve(m), self.tolerance, noise))
                         for i, m in enumerate(rows)]
        return out

    def verdicts(self) -> dict[str, str]:
        return {axis: combine(j.verdict for _, _, j in rows if j is not None)
                for axis, rows in self.judgements().items()}


def build_check(args: argparse.Namespace) -> Check:
    sets = [*(QUICK_SETS if args.quick else ()), *args.overrides]
    if args.steps is not None:
        sets.append(f"train.max_steps={args.steps}")
    user = load_config(args.config, sets)
    centre = derive_run(user).lr  # what the base config trains with: the grid's centre
    sets += [*pin_base(user), "monitor.every=0", 'log.wandb="disabled"', "log.progress=false"]
    base = load_config(args.config, sets)
    axes = args.axes or [a for a in AXES if a != "granularity" or base.model.moe is not None]
    if args.quick and not args.axes:
        axes = ["width", "depth"]
    exponents = args.scales or ((1,) if args.quick else (-1, 1))
    members = [Member("base", 0, 0.0, ())]
    for axis in axes:
        members += axis_members(args.config, sets, base, axis, exponents)
    steps = max([base.train.max_steps, *(v for m in members for k, v in m.overrides if k == "train.max_steps")])
    sets.append(f"train.eval_every={steps}")  # only the final evaluation: the check reads nothing else
    grid = tuple(i - (args.grid_points - 1) // 2 for i in range(args.grid_points))
    check = Check(args.config, sets, load_config(args.config, sets), members, centre, grid, args.seeds, args.extend,
                  args.tolerance, Path(args.out or _default_out(args)), args.jobs or _default_jobs())
    for point in check.points():  # every scale's config is valid before the first run starts
        load_config(args.config, [*check.sets, *point.set_args()])
    return check


def _default_out(args: argparse.Namespace) -> str:
    return f"sweeps/transfer-check-{Path(args.config).stem}{'-quick' if args.quick else ''}"


def _default_jobs() -> int:
    """One run per GPU; on a CPU one single-threaded run per core (tiny models use one thread best), at most 8."""
    import torch

    return torch.cuda.device_count() or max(1, min(8, os.cpu_count() or 1))


def _exponents(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers, e.g. -1,1") from None
    if 0 in values or not any(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: the exponents exclude 0 (the base) and include one above it")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.transfer_check", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="base TOML config: its lr is the grid's centre")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--axes", type=lambda s: [a.strip() for a in s.split(",")], default=None,
                   help=f"comma-separated subset of {','.join(AXES)} (default: all that apply)")
    p.add_argument("--scales", type=_exponents, default=None, metavar="E1,E2",
                   help="scales base × 2^e per axis (default -1,1: the base in the middle of a 4× span; 1,2 puts it at "
                        "the bottom, HyperP's tune-small-transfer-up use; --quick: 1)")
    p.add_argument("--steps", type=int, default=None, help="train.max_steps of the base config")
    p.add_argument("--grid-points", type=int, default=3, help="lrs per scale, ×2 apart, centred on the config's lr")
    p.add_argument("--seeds", type=int, default=None, help="seeds at the base's best lr, for the noise (default 3, "
                   "--quick 2)")
    p.add_argument("--extend", type=int, default=None, help="lrs added beyond a grid edge per side at most (default 2, "
                   "--quick 0)")
    p.add_argument("--tolerance", type=float, default=1.0, help="allowed |shift| in ×2 grid steps (default 1)")
    p.add_argument("--jobs", type=int, default=None, help="runs at a time (default: one per GPU, else one per core)")
    p.add_argument("--quick", action="store_true", help="CI smoke check: tiny model, width and depth, ≤ 1 minute")
    p.add_argument("--out", default=None, help="sweep directory (default sweeps/transfer-check-<config>)")
    p.add_argument("--results", default=None, metavar="PATH.md", help="also write the report here (PNG beside it)")
    args = p.parse_args(argv)
    args.seeds = args.seeds if args.seeds is not None else 2 if args.quick else 3
    args.extend = args.extend if args.extend is not None else 0 if args.quick else 2
    if args.grid_points < 2 or args.seeds < 1 or args.extend < 0 or args.tolerance < 0:
        raise ConfigError("--grid-points must be >= 2, --seeds >= 1, --extend >= 0 and --tolerance >= 0")
    if args.axes and any(a not in AXES for a in args.axes):
        raise ConfigError(f"--axes {','.join(args.axes)}: each must be one of {', '.join(AXES)}")
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs={args.jobs} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from train.transfer_report import log_invocation, write_report

    started = time.perf_counter()
    try:
        args = parse_args(argv)
        check = build_check(args)
        check.run()
    except SystemExit as exc:
        return int(exc.code or 0)
    except HyperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log_invocation(check, time.perf_counter() - started)
    command = "python -m train.transfer_check " + shlex.join(argv if argv is not None else sys.argv[1:])
    verdict = write_report(check, command, args.results)
    if check.failed:
        print(f"error: {len(check.failed)} run(s) failed: {', '.join(sorted(check.failed))} (see their stdout.log)",
              file=sys.stderr)
        return 1
    return EXIT[verdict]


if __name__ == "__main__":
    sys.exit(main())
