"""HyperP parameterization and hyperparameter transfer (SPEC §3; ArchScale ``pretrain.py:setup``,
``lit_gpt/model.py:post_process_residual``, ``lit_gpt/config.py:get_parameters_count``).

From a tuned base (d₀ = 8, width 1024, T₀ = 10.4e9 tokens, B₀ = 2²¹ tokens, η₀) to a target:

    η = η₀ · √(d₀/L) · (T/T₀)^(−0.32) · √(B/B₀)          (width, granularity: factor 1 — the sphere transfers them)
    residual branch multiplier = 1/√(2L)                  (``h / math.sqrt(2 * n_layer)`` in post_process_residual)

ArchScale applies these in ``setup``: ``apply_batch_size_scaling`` (``"default"`` mode: lr·√(B/B₀)), then
``learning_rate * math.sqrt(d0 / depth)`` (depth-μP), then ``(train_tokens / t0) ** (-0.32)`` (MuonH runs only).

Where the SPEC's d8…d24 relative lrs (≈ 1, 0.59, 0.40, 0.29, 0.23) come from: with the default T ∝ N, the
multiplier is √(8/L)·(N_L/N_8)^(−0.32) with N from ArchScale's ``get_parameters_count`` in its ``v2scale``
form, which counts the untied embedding *and* lm_head (2·V·d with V = 32000) besides the blocks
(12·d²·L + q/o and GQA-4 k/v projections, d = 128·L). That gives 1, 0.595, 0.404, 0.296, 0.229
(:func:`archscale_param_count`). Counting only non-embedding parameters (N ∝ L³) gives a steeper
1, 0.557, 0.367, 0.266, 0.204 — so the parameter count used for T matters; pass the real one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from hyperp.errors import ConfigError

TOKEN_EXPONENT = -0.32  # ArchScale pretrain.py:setup, fitted for MuonH (also arXiv 2409.19913 for AdamW)


@dataclass(frozen=True)
class Scale:
    """One point of the family: width (d_model), depth (layers), training tokens, batch tokens, granularity k."""

    width: int
    depth: int
    tokens: float
    batch_tokens: float
    granularity: int = 1

    def __post_init__(self) -> None:
        for field in ("width", "depth", "tokens", "batch_tokens", "granularity"):
            value = getattr(self, field)
            if not value > 0:
                raise ConfigError(f"transfer.{field}={value} must be > 0")


BASE = Scale(width=1024, depth=8, tokens=10.4e9, batch_tokens=2**21)
BASE_LR = 1.4e-2  # HyperP's fitted optimum for MuonH at d8 (SPEC §3)


@dataclass(frozen=True)
class Derived:
    """Everything HyperP derives for a target scale. Multipliers are relative to the base."""

    lr: float
    adam_lr: float | None
    lr_multiplier: float
    depth_factor: float
    tokens_factor: float
    batch_factor: float
    residual_multiplier: float
    init_matrix: str = "kaiming_uniform(a=sqrt(5))"  # PyTorch Linear default, U(±1/√fan_in)
    embed_std: float = 1e-4
    head_std: float = 0.02
    warmup: int = 0
    schedule: str = "linear"
    min_lr_mult: float = 0.1
    logit_scale: float = 1.0  # not rescaled under MuonH (lit_gpt/model.py: logit_scale = 1 when use_muonh)


def residual_multiplier(depth: int) -> float:
    """1/√(2L): every residual branch output is scaled before the add (ArchScale ``post_process_residual``)."""
    if depth < 1:
        raise ConfigError(f"model.depth={depth} must be >= 1")
    return 1.0 / math.sqrt(2 * depth)


def depth_factor(base: Scale, target: Scale) -> float:
    return math.sqrt(base.depth / target.depth)


def tokens_factor(base: Scale, target: Scale) -> float:
    return (target.tokens / base.tokens) ** TOKEN_EXPONENT


def batch_factor(base: Scale, target: Scale) -> float:
    return math.sqrt(target.batch_tokens / base.batch_tokens)


def lr_multiplier(base: Scale, target: Scale) -> float:
    """√(d₀/L)·(T/T₀)^(−0.32)·√(B/B₀); width and granularity contribute 1."""
    return depth_factor(base, target) * tokens_factor(base, target) * batch_factor(base, target)


def default_tokens(params: float, base_params: float, base_tokens: float = BASE.tokens) -> float:
    """T = T₀·N/N₀: tokens proportional to parameters (ArchScale ``setup``: ``t0 * n_target / n_base``)."""
    if not (params > 0 and base_params > 0):
        raise ConfigError(f"parameter counts must be > 0, got {params} and {base_params}")
    return base_tokens * params / base_params


def archscale_param_count(depth: int, vocab: int = 32000, kv_groups: int = 4, head_dim: int = 128,
                          aspect: int = 128, tied: bool = False) -> float:
    """N as ArchScale's ``lit_gpt/config.py:get_parameters_count`` counts a ``transformer`` with ``v2scale``.

    12·d²·L (blocks) + (embedding [+ untied head]) V·d + q/o (2·d·L·n_head·head_dim, n_head = L) + GQA k/v
    (2·d·L·kv_groups·head_dim), d = aspect·L. Used to reproduce the SPEC's relative-lr table.
    """
    n = 12 * aspect**2 * depth**3
    n += depth * aspect * vocab * (1 if tied else 2)
    n += aspect * depth**2 * depth * head_dim * 2
    n += aspect * depth**2 * kv_groups * head_dim * 2
    return float(n)


def derive(base: Scale, target: Scale, base_lr: float, adam_lr: float | None = None) -> Derived:
    """HyperP settings for ``target`` given a tuned ``base`` (lr ``base_lr``; optional absolute Adam lr).

    A Marin-style absolute ``adam_lr`` keeps its ratio to the matrix lr, so it is scaled by the same multiplier.
    """
    if not base_lr > 0:
        raise ConfigError(f"optim.lr={base_lr} must be > 0")
    if adam_lr is not None and not adam_lr > 0:
        raise ConfigError(f"optim.adam_lr={adam_lr} must be > 0")
    mult = lr_multiplier(base, target)
    return Derived(
        lr=base_lr * mult,
        adam_lr=None if adam_lr is None else adam_lr * mult,
        lr_multiplier=mult,
        depth_factor=depth_factor(base, target),
        tokens_factor=tokens_factor(base, target),
        batch_factor=batch_factor(base, target),
        residual_multiplier=residual_multiplier(target.depth),
    )


def family_scale(depth: int, base: Scale = BASE, batch_tokens: float | None = None, **count_kw: int) -> Scale:
    """The width = 128·depth family member with ArchScale's default tokens T₀·N/N₀."""
    tokens = default_tokens(archscale_param_count(depth, **count_kw), archscale_param_count(base.depth, **count_kw),
                            base.tokens)
    return Scale(width=128 * depth, depth=depth, tokens=tokens,
                 batch_tokens=base.batch_tokens if batch_tokens is None else batch_tokens)


_COLUMNS = ("depth", "width", "tokens", "lr", "lr_multiplier", "depth_factor", "tokens_factor", "batch_factor",
            "residual_multiplier")


def format_table(rows: Sequence[tuple[Scale, Derived]]) -> str:
    """A plain-text table, one line per target, for the ``python -m hyperp.transfer`` CLI."""
    lines = ["  ".join(f"{c:>13}" for c in _COLUMNS)]
    for scale, derived in rows:
        values = {**asdict(scale), **asdict(derived)}
        cells = []
        for c in _COLUMNS:
            v = values[c]
            cells.append(f"{v:>13d}" if isinstance(v, int) else f"{v:>13.4g}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m hyperp.transfer --base configs/A.toml --target configs/B.toml [--target …]``.

    Reads run configs (the train package's TOML presets) lazily so that :mod:`hyperp` itself imports torch only.
    Each config's scale is its model width/depth, ``train.max_steps × batch tokens`` and batch tokens; the base
    config's ``optim.lr`` is the tuned η₀.
    """
    import argparse
    import sys

    from hyperp.errors import HyperpError

    parser = argparse.ArgumentParser(prog="python -m hyperp.transfer", description="HyperP: derive a target's lr.")
    parser.add_argument("--base", required=True, help="config of the tuned base model (its optim.lr is η₀)")
    parser.add_argument("--target", required=True, action="append", help="config(s) to transfer to (repeatable)")
    args = parser.parse_args(argv)
    try:
        from train.build import run_scale
        from train.config import load_config

        base_cfg = load_config(args.base)
        base = run_scale(base_cfg)
        rows = [(base, derive(base, base, base_cfg.optim.lr, base_cfg.optim.adam_lr))]
        for path in args.target:
            target = run_scale(load_config(path))
            rows.append((target, derive(base, target, base_cfg.optim.lr, base_cfg.optim.adam_lr)))
    except HyperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"base: {args.base} (η₀ = {base_cfg.optim.lr:g}); first row is the base itself")
    print(format_table(rows))
    print("init: matrices kaiming_uniform(a=√5) = U(±1/√fan_in); embedding N(0, 1e-4²); lm_head N(0, 0.02²); "
          "warmup 0; linear decay to 0.1·peak")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
