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

The functions here take numbers only; a run config's scale and the calculator CLI are :mod:`train.transfer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    """What HyperP derives for a target scale: the peak lrs and the factors behind them (relative to the base)."""

    lr: float  # peak lr of the sphere / matrix / head groups
    adam_lr: float  # peak lr of the Adam group (embedding, norms): = lr unless an Adam lr of its own is given
    transfer_factor: float  # depth_factor · tokens_factor · batch_factor: the one HyperP lr factor
    depth_factor: float
    tokens_factor: float
    batch_factor: float
    residual_multiplier: float


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


def transfer_factor(base: Scale, target: Scale) -> float:
    """The HyperP lr factor √(d₀/L)·(T/T₀)^(−0.32)·√(B/B₀); width and granularity contribute 1."""
    return depth_factor(base, target) * tokens_factor(base, target) * batch_factor(base, target)


def peak_lrs(lr: float, adam_lr: float | None, factor: float) -> tuple[float, float]:
    """(matrix-group lr, Adam-group lr) of a run from the base-scale ``optim.lr`` / ``optim.adam_lr`` and its
    :func:`transfer_factor` — the one place a run's lrs come from (training's optimizer groups and the CLI table).

    The Adam group shares the matrix lr (ArchScale, so it transfers with it) unless it has its own base-scale lr
    (Marin, ≈ lr/4.33), which keeps its ratio to the matrix lr and is therefore scaled by the same factor.
    """
    return lr * factor, (lr if adam_lr is None else adam_lr) * factor


def default_tokens(params: float, base_params: float, base_tokens: float = BASE.tokens) -> float:
    """T = T₀·N/N₀: tokens proportional to parameters (ArchScale ``setup``: ``t0 * n_target / n_base``)."""
    if not (params > 0 and base_params > 0):
        raise ConfigError(f"parameter counts must be > 0, got {params} and {base_params}")
    return base_tokens * params / base_params


def archscale_param_count(depth: int, vocab: int = 32000, kv_groups: int = 4, head_dim: int = 128,
                          aspect: int = 128, tied: bool = False, heads_per_layer: int = 1) -> float:
    """N as ArchScale's ``lit_gpt/config.py:get_parameters_count`` counts a ``transformer`` with ``v2scale``.

    12·d²·L (blocks) + (embedding [+ untied head]) V·d + q/o (2·d·L·n_head·head_dim) + GQA k/v
    (2·d·L·kv_groups·head_dim), d = aspect·L, n_head = heads_per_layer·L. ``heads_per_layer = 1`` reproduces the
    SPEC's relative-lr table; ArchScale's launched family (``transformer_gqa4_h2``, our d8…d24 presets) has 2, which
    changes the multipliers by ≤ 1.3 % and the default tokens T by up to 4 %.
    """
    n = 12 * aspect**2 * depth**3
    n += depth * aspect * vocab * (1 if tied else 2)
    n += aspect * depth**2 * heads_per_layer * depth * head_dim * 2
    n += aspect * depth**2 * kv_groups * head_dim * 2
    return float(n)


def derive(base: Scale, target: Scale, base_lr: float, adam_lr: float | None = None) -> Derived:
    """HyperP settings for ``target`` given a tuned ``base`` (lr ``base_lr``; optional Adam-group lr of its own)."""
    if not base_lr > 0:
        raise ConfigError(f"optim.lr={base_lr} must be > 0")
    if adam_lr is not None and not adam_lr > 0:
        raise ConfigError(f"optim.adam_lr={adam_lr} must be > 0")
    factor = transfer_factor(base, target)
    lr, group_adam_lr = peak_lrs(base_lr, adam_lr, factor)
    return Derived(
        lr=lr,
        adam_lr=group_adam_lr,
        transfer_factor=factor,
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


if __name__ == "__main__":  # the run-aware calculator lives with the run tools (hyperp imports nothing from train)
    import sys

    print("error: the HyperP calculator moved: python -m train.transfer --base A.toml --target B.toml", file=sys.stderr)
    sys.exit(2)
