"""Qwen3 decoder (dense or MoE), written to match Hugging Face ``Qwen3ForCausalLM`` / ``Qwen3MoeForCausalLM``.

Pre-norm RMSNorm, RoPE (rotate-half form), grouped-query attention with per-head RMSNorm on q and k, SwiGLU MLP or
an MoE block from :mod:`moe`, optional tied embeddings, no biases. The one departure from HF is the residual
multiplier (HyperP's Depth-μP, ArchScale ``lit_gpt/model.py``): every branch output is scaled before it is added
to the residual stream; on export it is folded into ``o_proj`` / ``down_proj`` (``models.hf``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from hyperp.dtypes import at_least_fp32
from hyperp.roles import Role, collect, declare
from models.config import ModelConfig
from moe import MoEBlock, RoutingStats


def _linear(in_features: int, out_features: int, role: Role = Role.MATRIX) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=False)
    declare(layer, weight=role)
    return layer


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        declare(self, weight=Role.VECTOR)

    def forward(self, x: Tensor) -> Tensor:
        # Normalize in fp32 (fp64 stays fp64) like HF's Qwen3RMSNorm, then scale in the input dtype.
        normed = F.rms_norm(x.to(at_least_fp32(x.dtype)), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return self.weight * normed


class Rotary(nn.Module):
    """RoPE tables; cos/sin are recomputed rather than saved so checkpoints stay small and exact."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Rotate x of shape (B, heads, T, head_dim)."""
        t = x.shape[-2]
        cos, sin = self.cos[:t].to(x.dtype), self.sin[:t].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """GQA with qk-norm; softmax scale ``cfg.resolved_attn_scale``; optional per-head output gate (ArchScale ``_ga``).

    The gate is ``σ(W_g x)`` with W_g: hidden → n_heads (one scalar per head and token, ArchScale's "per head
    gate" ``g_proj``), multiplied into that head's attention output before ``o_proj``. W_g is a hidden matrix
    (Role.MATRIX): on the MuonH sphere like q/k/v/o, PyTorch-default init under HyperP.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hd = cfg.resolved_head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, hd
        self.scale = cfg.resolved_attn_scale
        self.q_proj = _linear(cfg.hidden, cfg.n_heads * hd)
        self.k_proj = _linear(cfg.hidden, cfg.n_kv_heads * hd)
        self.v_proj = _linear(cfg.hidden, cfg.n_kv_heads * hd)
        self.o_proj = _linear(cfg.n_heads * hd, cfg.hidden)
        self.g_proj = _linear(cfg.hidden, cfg.n_heads) if cfg.gated_attn else None
        self.q_norm = RMSNorm(hd, cfg.resolved_norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(hd, cfg.resolved_norm_eps) if cfg.qk_norm else nn.Identity()
        self.rotary = Rotary(hd, cfg.max_seq_len, cfg.resolved_rope_theta)

    def queries_keys(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Post-norm, post-RoPE q (B, H, T, d) and k (B, H_kv, T, d); monitors reuse this (logits = scale·q·k)."""
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", d=self.head_dim)
        k = rearrange(self.k_proj(x), "b t (h d) -> b h t d", d=self.head_dim)
        return self.rotary(self.q_norm(q)), self.rotary(self.k_norm(k))

    def forward(self, x: Tensor) -> Tensor:
        q, k = self.queries_keys(x)
        v = rearrange(self.v_proj(x), "b t (h d) -> b h t d", d=self.head_dim)
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=self.scale, enable_gqa=self.n_heads != self.n_kv_heads
        )
        if self.g_proj is not None:
            out = out * torch.sigmoid(rearrange(self.g_proj(x), "b t h -> b h t 1"))
        return self.o_proj(rearrange(out, "b h t d -> b t (h d)"))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, mlp_hidden: int) -> None:
        super().__init__()
        self.gate_proj = _linear(hidden, mlp_hidden)
        self.up_proj = _linear(hidden, mlp_hidden)
        self.down_proj = _linear(mlp_hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.residual_multiplier = cfg.resolved_residual_multiplier
        self.input_norm = RMSNorm(cfg.hidden, cfg.resolved_norm_eps)
        self.attn = Attention(cfg)
        self.post_attn_norm = RMSNorm(cfg.hidden, cfg.resolved_norm_eps)
        self.is_moe = cfg.is_moe_layer(layer)
        self.mlp: nn.Module = MoEBlock(cfg.hidden, cfg.moe) if self.is_moe else MLP(cfg.hidden, cfg.mlp_hidden)

    def forward(self, h: Tensor) -> tuple[Tensor, RoutingStats | None]:
        h = h + self.residual_multiplier * self.attn(self.input_norm(h))
        stats: RoutingStats | None = None
        if self.is_moe:
            y, stats = self.mlp(self.post_attn_norm(h))
        else:
            y = self.mlp(self.post_attn_norm(h))
        return h + self.residual_multiplier * y, stats


@dataclass
class ModelOutput:
    """What one forward returns: logits, the mean next-token CE when targets were given, and per-MoE-layer routing."""

    logits: Tensor
    loss: Tensor | None = None
    routing: list[RoutingStats] = field(default_factory=list)


class Qwen3(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        declare(self.embed, weight=Role.EMBEDDING)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.hidden, cfg.resolved_norm_eps)
        self.lm_head = _linear(cfg.hidden, cfg.vocab_size, Role.HEAD)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise per the parameterization (see :class:`ModelConfig`); MoE blocks keep their own init."""
        cfg = self.config
        if cfg.parameterization == "standard":
            params = dict(self.named_parameters())
            for name, role in collect(self).items():
                if role is not Role.VECTOR:
                    nn.init.normal_(params[name], std=cfg.init_std)
            return
        # hyperp: nn.Linear already holds kaiming-uniform(a=√5) = U(±1/√fan_in) from construction.
        if cfg.tie_embeddings:
            nn.init.normal_(self.embed.weight, std=cfg.head_init_std)
        else:
            nn.init.normal_(self.embed.weight, std=cfg.embed_init_std)
            nn.init.normal_(self.lm_head.weight, std=cfg.head_init_std)

    def hidden_states(self, input_ids: Tensor) -> tuple[Tensor, list[RoutingStats]]:
        """Final-norm output times ``logit_scale`` (what ``lm_head`` reads), and per-MoE-layer routing."""
        h = self.embed(input_ids)
        routing: list[RoutingStats] = []
        for block in self.layers:
            h, stats = block(h)
            if stats is not None:
                routing.append(stats)
        h = self.norm(h)
        return (h * self.config.logit_scale if self.config.logit_scale != 1.0 else h), routing

    def forward(self, input_ids: Tensor, targets: Tensor | None = None) -> ModelOutput:
        if input_ids.shape[-1] > self.config.max_seq_len:
            raise ValueError(f"sequence length {input_ids.shape[-1]} exceeds model.max_seq_len={self.config.max_seq_len}")
        h, routing = self.hidden_states(input_ids)
        logits = self.lm_head(h)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.to(at_least_fp32(logits.dtype)).flatten(0, 1), targets.flatten())
        return ModelOutput(logits=logits, loss=loss, routing=routing)


def count_parameters(model: Qwen3) -> dict[str, int]:
    """Total, embedding, and active (per token) parameter counts; active counts top_k of E routed experts."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    embedding = model.embed.weight.numel() + (0 if cfg.tie_embeddings else model.lm_head.weight.numel())
    inactive = 0
    if cfg.moe is not None:
        for block in model.layers:
            if block.is_moe:
                routed = sum(p.numel() for p in block.mlp.experts.parameters())
                inactive += routed - routed * cfg.moe.top_k // cfg.moe.num_experts
    return {"total": total, "embedding": embedding, "active": total - inactive, "non_embedding": total - embedding}


def build_model(cfg: ModelConfig) -> Qwen3:
    return Qwen3(cfg)
