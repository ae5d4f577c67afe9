"""hyperp-moe's Qwen3-style MoE for transformers: Qwen3-MoE with SqrtGate and an optional shared expert.

Everything but the sparse block is transformers' Qwen3-MoE, so attention, caching and generation behave as there.
The exporter folds the training-time residual multiplier into ``o_proj`` / ``down_proj`` / the expert
``down_proj`` (all branches end in a linear map), so no extra scaling appears here.
"""

import math

import torch
from torch import nn
from transformers.models.qwen3_moe.modeling_qwen3_moe import (
    Qwen3MoeExperts,
    Qwen3MoeForCausalLM,
    Qwen3MoeMLP,
    Qwen3MoeSparseMoeBlock,
    Qwen3MoeTopKRouter,
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


class HyperpMoeForCausalLM(Qwen3MoeForCausalLM):
    config_class = HyperpMoeConfig

    def __init__(self, config: HyperpMoeConfig) -> None:
        super().__init__(config)
        # Qwen3-MoE builds its own sparse blocks; swap them for ours (same parameter names, plus shared_expert).
        for layer in self.model.layers:
            if isinstance(layer.mlp, Qwen3MoeSparseMoeBlock):
                layer.mlp = HyperpMoeSparseBlock(config)
        self.post_init()


__all__ = ["HyperpMoeConfig", "HyperpMoeForCausalLM", "HyperpMoeSparseBlock"]
