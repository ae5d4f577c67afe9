"""hyperp-moe's Qwen3-style model for transformers: Qwen3-MoE with SqrtGate, an optional shared expert and an
optional per-head attention output gate (dense models: ``num_experts = 0``).

Everything but the sparse block and the gate is transformers' Qwen3-MoE, so caching and generation behave as there.
The exporter folds the training-time residual multiplier into ``o_proj`` / ``down_proj`` / the expert
``down_proj`` (all branches end in a linear map), the attention softmax scale into ``q_norm`` and the logit scale
into the final norm, so no extra scaling appears here.
"""

import math

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen3_moe.modeling_qwen3_moe import (
    Qwen3MoeAttention,
    Qwen3MoeExperts,
    Qwen3MoeForCausalLM,
    Qwen3MoeMLP,
    Qwen3MoeSparseMoeBlock,
    Qwen3MoeTopKRouter,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from .configuration_hyperp_moe import HyperpMoeConfig

# √g has an infinite slope at g = 0: keep an underflowed gate from giving inf·0 = NaN (as in training).
_SQRT_EPS = 1e-30


class HyperpMoeSparseBlock(nn.Module):
    """Router (softmax over the top-k logits) → SqrtGate or softmax gate → experts, plus the shared expert.

    SqrtGate: y = Σ √g_i·E_i(x); with a shared expert y = √(1−p)·routed + √p·shared (standard gate: routed + shared).
    """

    def __init__(self, config: HyperpMoeConfig) -> None:
        super().__init__()
        self.gate = Qwen3MoeTopKRouter(config)
        self.experts = Qwen3MoeExperts(config)
        shared = config.shared_expert_intermediate_size
        self.shared_expert = Qwen3MoeMLP(config, intermediate_size=shared) if shared else None
        self.sqrt_gate = config.moe_gate == "sqrt"
        self.shared_mix = config.shared_expert_mix

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])
        _, weights, indices = self.gate(flat)
        if self.sqrt_gate:
            weights = torch.sqrt(weights + _SQRT_EPS)
        out = self.experts(flat, indices, weights)
        if self.shared_expert is not None:
            shared = self.shared_expert(flat)
            if self.sqrt_gate:
                out = math.sqrt(1.0 - self.shared_mix) * out + math.sqrt(self.shared_mix) * shared
            else:
                out = out + shared
        return out.reshape(shape)


class HyperpGatedAttention(Qwen3MoeAttention):
    """Qwen3-MoE attention whose per-head output is multiplied by σ(g_proj(x)) before ``o_proj``."""

    def __init__(self, config: HyperpMoeConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.g_proj = nn.Linear(config.hidden_size, config.num_attention_heads, bias=False)

    def forward(self, hidden_states, position_embeddings, attention_mask, cache=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_norm(self.q_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
        k = self.k_norm(self.k_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
        v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attention(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling,
                                 sliding_window=self.sliding_window, **kwargs)
        out = out * torch.sigmoid(self.g_proj(hidden_states)).unsqueeze(-1)  # out: (B, T, heads, head_dim)
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


class HyperpMoeForCausalLM(Qwen3MoeForCausalLM):
    config_class = HyperpMoeConfig

    def __init__(self, config: HyperpMoeConfig) -> None:
        super().__init__(config)
        # Qwen3-MoE builds its own sparse blocks and attention; swap in ours (same parameter names, plus
        # shared_expert and g_proj).
        for i, layer in enumerate(self.model.layers):
            if isinstance(layer.mlp, Qwen3MoeSparseMoeBlock):
                layer.mlp = HyperpMoeSparseBlock(config)
            if config.gated_attention:
                layer.self_attn = HyperpGatedAttention(config, i)
        self.post_init()


__all__ = ["HyperpGatedAttention", "HyperpMoeConfig", "HyperpMoeForCausalLM", "HyperpMoeSparseBlock"]
