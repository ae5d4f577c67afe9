"""A reusable fine-grained MoE layer (SPEC §4): router, stacked SwiGLU experts, dispatch backends, balance losses."""

from __future__ import annotations

from moe.block import MoEBlock
from moe.config import MoEConfig
from moe.losses import GlobalBalance, micro_batch_aux, switch_aux, z_loss
from moe.router import RoutingStats

__all__ = ["GlobalBalance", "MoEBlock", "MoEConfig", "RoutingStats", "micro_batch_aux", "switch_aux", "z_loss"]
