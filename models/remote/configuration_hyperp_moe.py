"""Config of hyperp-moe's Qwen3-style model: Qwen3-MoE plus SqrtGate, a variance-preserving shared expert and
gated attention.

Shipped as remote code with exports that ``Qwen3ForCausalLM`` / ``Qwen3MoeForCausalLM`` cannot represent (neither
has SqrtGate, a shared expert or an attention output gate). A dense model is ``num_experts = 0`` (every layer is
Qwen3-MoE's dense MLP). Requires transformers >= 5.
"""

from huggingface_hub.dataclasses import strict
from transformers.models.qwen3_moe.configuration_qwen3_moe import Qwen3MoeConfig


@strict
class HyperpMoeConfig(Qwen3MoeConfig):
    r"""
    moe_gate (`str`, defaults to `"sqrt"`):
        `"sqrt"` scales expert i's output by √g_i (SqrtGate), `"softmax"` by g_i, where g is the softmax over the
        top-k router logits (`norm_topk_prob=True`).
    shared_expert_intermediate_size (`int`, defaults to 0):
        Hidden size of the dense shared SwiGLU expert; 0 means no shared expert.
    shared_expert_mix (`float`, defaults to 0.5):
        p of y = √(1−p)·routed + √p·shared under SqrtGate; under the softmax gate y = routed + shared.
    gated_attention (`bool`, defaults to `False`):
        Multiply each head's attention output by σ(g_proj(x)) (one gate per head and token) before `o_proj`.
    """

    model_type = "hyperp_moe"

    moe_gate: str = "sqrt"
    shared_expert_intermediate_size: int = 0
    shared_expert_mix: float = 0.5
    gated_attention: bool = False
    norm_topk_prob: bool = True

    def validate_hyperp_moe(self) -> None:
        if self.moe_gate not in ("sqrt", "softmax"):
            raise ValueError(f"moe_gate={self.moe_gate!r} must be 'sqrt' or 'softmax'")
        if not self.norm_topk_prob:
            raise ValueError("hyperp_moe routes with norm_topk_prob=True only")


__all__ = ["HyperpMoeConfig"]
