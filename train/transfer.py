"""HyperP for run configs (SPEC §3): a config's point in the family, the factor a run trains with, and the CLI.

``python -m train.transfer --base configs/d8.toml --target configs/d16.toml [--target …]`` prints the lrs and factors
HyperP derives for each target from the tuned base (the base config's ``optim.lr`` is η₀), plus the init and schedule
each target config trains with. Training derives its lrs through the same :func:`hyperp.transfer.derive`
(:func:`derive_run`), from the ``[hyperp]`` base scale of its own config.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict

from hyperp.errors import HyperpError
from hyperp.transfer import Derived, Scale, derive
from train.config import RunConfig, load_config


def run_scale(cfg: RunConfig, world_size: int = 1) -> Scale:
    """A run's point in the HyperP family: width, depth, training tokens, batch tokens (global batch), granularity."""
    t = cfg.train
    batch_tokens = float(t.grad_accum * t.batch_size * world_size * cfg.data.seq_len)
    return Scale(width=cfg.model.hidden, depth=cfg.model.n_layers, tokens=batch_tokens * t.max_steps,
                 batch_tokens=batch_tokens, granularity=cfg.model.moe.top_k if cfg.model.moe else 1)


def base_scale(cfg: RunConfig, world_size: int = 1) -> Scale:
    """The ``[hyperp]`` base the run's ``optim.lr`` was tuned at; each unset field is the run's own (factor 1)."""
    own, h = run_scale(cfg, world_size), cfg.hyperp
    return Scale(width=h.base_width or own.width, depth=h.base_depth or own.depth, tokens=h.base_tokens or own.tokens,
                 batch_tokens=h.base_batch_tokens or own.batch_tokens, granularity=own.granularity)


def derive_run(cfg: RunConfig, world_size: int = 1) -> Derived:
    """What a run trains with: its ``[hyperp]`` base → its own scale, from ``optim.lr`` / ``optim.adam_lr``."""
    return derive(base_scale(cfg, world_size), run_scale(cfg, world_size), cfg.optim.lr, cfg.optim.adam_lr)


def pin_base(cfg: RunConfig) -> list[str]:
    """``--set`` overrides that make ``cfg``'s own scale the ``[hyperp]`` base: a config changed from it (wider,
    deeper, longer) then trains with the HyperP factor relative to it — how the transfer and coordinate checks
    give each scale its lr."""
    s = run_scale(cfg)
    return [f"hyperp.base_width={s.width}", f"hyperp.base_depth={s.depth}", f"hyperp.base_tokens={s.tokens!r}",
            f"hyperp.base_batch_tokens={s.batch_tokens!r}"]


_COLUMNS = ("depth", "width", "tokens", "lr", "transfer_factor", "depth_factor", "tokens_factor", "batch_factor",
            "residual_multiplier")


def format_table(rows: Sequence[tuple[Scale, Derived]]) -> str:
    """A plain-text table, one line per target."""
    lines = ["  ".join(f"{c:>13}" for c in _COLUMNS)]
    for scale, derived in rows:
        values = {**asdict(scale), **asdict(derived)}
        cells = [f"{values[c]:>13d}" if isinstance(values[c], int) else f"{values[c]:>13.4g}" for c in _COLUMNS]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def describe_init(cfg: RunConfig) -> str:
    """The init and schedule a config trains with (read from the config, never assumed)."""
    m, t = cfg.model, cfg.train
    if m.parameterization == "hyperp":
        init = (f"matrices U(±1/√fan_in), embedding N(0, {m.embed_init_std:g}²), "
                f"lm_head N(0, {m.head_init_std:g}²)")
    else:
        init = f"every weight N(0, {m.init_std:g}²)"
    return f"{init}; warmup {t.warmup_steps}; {t.decay} decay to {t.min_lr_mult:g}·peak"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.transfer", description="HyperP: derive a target's lr.")
    parser.add_argument("--base", required=True, help="config of the tuned base model (its optim.lr is η₀)")
    parser.add_argument("--target", required=True, action="append", help="config(s) to transfer to (repeatable)")
    args = parser.parse_args(argv)
    try:
        base_cfg = load_config(args.base)
        targets = [(path, load_config(path)) for path in args.target]
    except HyperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    base = run_scale(base_cfg)
    rows = [(scale, derive(base, scale, base_cfg.optim.lr, base_cfg.optim.adam_lr))
            for scale in [base, *(run_scale(cfg) for _, cfg in targets)]]
    print(f"base: {args.base} (η₀ = {base_cfg.optim.lr:g}); first row is the base itself")
    print(format_table(rows))
    for path, cfg in targets:
        print(f"{path}: {describe_init(cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
