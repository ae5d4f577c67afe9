"""Typed, self-validating configuration of a Qwen3 dense or MoE decoder (SPEC §6)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from hyperp.errors import ConfigError
from moe.config import MoEConfig

Parameterization = Literal["hyperp", "standard"]
ARCHSCALE_BASE_HEAD_DIM = 128  # ArchScale Config.mup_hd0: the head_dim at which its HyperP scale is 1/√head_dim


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class ModelConfig:
    """Shape and parameterization of the decoder.

    ``parameterization = "hyperp"`` (default) follows ArchScale's HyperP runs: PyTorch's default Linear init for
    every matrix, token embedding N(0, 1e-4²) when untied, head N(0, 0.02²), and every residual branch scaled by
    the Depth-μP multiplier 1/√(2L) (``hyperp.transfer.residual_multiplier``). ``"standard"`` is the usual
    GPT/Qwen setup for the AdamW baseline: every weight N(0, 0.02²) and no residual scaling.

    Three architecture constants default by parameterization (None → ArchScale's value under "hyperp", Qwen3's
    under "standard"; SPEC §7): the attention softmax scale (√128/head_dim, ArchScale ``lit_gpt/attention.py``
    with ``mup_hd0 = 128``, vs 1/√head_dim — equal at head_dim 128), RMSNorm eps (1e-5 vs 1e-6) and RoPE base
    (1e4 vs 1e6). All three still export as a plain Qwen3 (the scale is folded into ``q_norm``, ``models.hf``).
    ``gated_attn`` (ArchScale's ``_ga``: σ(W_g x) per head ⊙ attention output, before ``o_proj``) is off by
    default because Qwen3 has no such gate: a gated model exports with our own modeling code. ``logit_scale``
    multiplies the final-norm output (ArchScale's μP++ runs that are not MuonH use d₀/L; MuonH uses 1).
    """

    vocab_size: int = 8192
    hidden: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int | None = None  # None → hidden // n_heads
    mlp_hidden: int = 512
    max_seq_len: int = 256
    tie_embeddings: bool = False
    rope_theta: float | None = None  # None → 1e4 (hyperp, ArchScale rope_base) | 1e6 (standard, Qwen3)
    norm_eps: float | None = None  # None → 1e-5 (hyperp, ArchScale norm_eps) | 1e-6 (standard, Qwen3)
    attn_scale: float | None = None  # None → √128/head_dim (hyperp) | 1/√head_dim (standard)
    gated_attn: bool = False
    logit_scale: float = 1.0
    # Qwen3's RMSNorm on each head's q and k bounds the attention logits (|q·k|/√d ≤ √d·g_q·g_k); off = the
    # pre-Qwen3 attention whose logits can grow without bound at a high lr (Dehghani et al. 2023, Wortsman et al.
    # 2023): the instability suite's attention-logit-growth runs (benchmarks/experiments/instability.py).
    qk_norm: bool = True
    parameterization: Parameterization = "hyperp"
    residual_multiplier: float | None = None  # None → derived from the parameterization
    init_std: float = 0.02  # "standard" only: std of every weight
    embed_init_std: float = 1e-4  # "hyperp", untied embeddings
    head_init_std: float = 0.02  # "hyperp": untied head; tied embeddings use this for the shared matrix
    moe: MoEConfig | None = None
    decoder_sparse_step: int = 1  # Qwen3: layer i is MoE when (i + 1) % step == 0
    mlp_only_layers: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if isinstance(self.moe, dict):
            self.moe = MoEConfig(**self.moe)
        self.mlp_only_layers = tuple(self.mlp_only_layers)
        for name in ("vocab_size", "hidden", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden", "max_seq_len"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value > 0, f"model.{name}={value!r} must be a positive integer")
        _check(
            self.parameterization in ("hyperp", "standard"),
            f"model.parameterization={self.parameterization!r} must be 'hyperp' or 'standard'",
        )
        if self.head_dim is None:
            _check(
                self.hidden % self.n_heads == 0,
                f"model.n_heads={self.n_heads} must divide model.hidden={self.hidden} (or set model.head_dim)",
            )
        else:
            _check(self.head_dim > 0, f"model.head_dim={self.head_dim} must be positive")
        _check(self.resolved_head_dim % 2 == 0, f"model.head_dim={self.resolved_head_dim} must be even for RoPE")
        _check(
            self.n_heads % self.n_kv_heads == 0,
            f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads}",
        )
        for name in ("rope_theta", "norm_eps", "attn_scale", "init_std", "embed_init_std", "head_init_std",
                     "logit_scale"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"model.{name}={value} must be > 0")
        _check(isinstance(self.gated_attn, bool), f"model.gated_attn={self.gated_attn!r} must be true or false")
        if self.residual_multiplier is not None:
            _check(self.residual_multiplier > 0, f"model.residual_multiplier={self.residual_multiplier} must be > 0")
        _check(self.decoder_sparse_step >= 1, f"model.decoder_sparse_step={self.decoder_sparse_step} must be >= 1")
        bad = [i for i in self.mlp_only_layers if not 0 <= i < self.n_layers]
        _check(not bad, f"model.mlp_only_layers={list(self.mlp_only_layers)} has layers outside 0..{self.n_layers - 1}")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden // self.n_heads

    @property
    def resolved_attn_scale(self) -> float:
        if self.attn_scale is not None:
            return self.attn_scale
        if self.parameterization == "standard":
            return self.resolved_head_dim**-0.5
        # ArchScale: 1/√hd · √hd₀/√hd with base head_dim hd₀ = 128, so logits keep their size as head_dim shrinks.
        return math.sqrt(ARCHSCALE_BASE_HEAD_DIM) / self.resolved_head_dim

    @property
    def resolved_norm_eps(self) -> float:
        if self.norm_eps is not None:
            return self.norm_eps
        return 1e-5 if self.parameterization == "hyperp" else 1e-6

    @property
    def resolved_rope_theta(self) -> float:
        if self.rope_theta is not None:
            return self.rope_theta
        return 1e4 if self.parameterization == "hyperp" else 1e6

    @property
    def resolved_residual_multiplier(self) -> float:
        if self.residual_multiplier is not None:
            return self.residual_multiplier
        if self.parameterization == "standard":
            return 1.0
        from hyperp.transfer import residual_multiplier

        return residual_multiplier(self.n_layers)

    def is_moe_layer(self, layer: int) -> bool:
        """Qwen3's rule (``Qwen3MoeDecoderLayer``): sparse unless listed in mlp_only_layers."""
        return (
            self.moe is not None
            and layer not in self.mlp_only_layers
            and (layer + 1) % self.decoder_sparse_step == 0
        )
