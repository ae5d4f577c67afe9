"""MoE block configuration (SPEC §4).

``num_experts`` and ``top_k`` count *routed* experts. ArchScale (`lit_gpt/moe.py`) turns one of the k slots into
the shared expert (k−1 routed, sparsity·k − 1 routed experts); whoever builds the model from a
"sparsity × granularity" family decides that and passes the routed numbers here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hyperp.errors import ConfigError, check_choices


@dataclass
class MoEConfig:
    num_experts: int
    top_k: int
    expert_hidden: int
    shared_expert: bool = False
    shared_hidden: int | None = None  # None → expert_hidden
    gate: Literal["sqrt", "softmax"] = "sqrt"  # SqrtGate | the standard renormalized top-k gate
    shared_mix: float = 0.5  # p of y = √(1−p)·routed + √p·shared under SqrtGate
    aux_weight: float = 0.0
    z_weight: float = 0.0
    global_aux: bool = True
    backend: Literal["auto", "loop", "torch", "megablocks"] = "auto"
    # "aux": switch loss with aux_weight; "bias": DeepSeek-V3 aux-loss-free balancing (a per-expert selection bias,
    # the aux loss is still computed and logged but not trained on); "aux+bias": both.
    balance: Literal["aux", "bias", "aux+bias"] = "aux"
    bias_rate: float = 1e-3  # γ_b of b_i += γ_b·sign(mean load − load_i), once per optimizer step
    # A target global MaxVio: a controller (moe.controller) then adjusts aux_weight during training, starting from the
    # configured value ("aux" or "aux+bias"). None: aux_weight stays fixed.
    balance_target: float | None = None

    @property
    def uses_bias(self) -> bool:
        return self.balance in ("bias", "aux+bias")

    @property
    def trains_aux(self) -> bool:
        return self.balance in ("aux", "aux+bias")

    def __post_init__(self) -> None:
        _positive_int("moe.num_experts", self.num_experts)
        _positive_int("moe.top_k", self.top_k)
        _positive_int("moe.expert_hidden", self.expert_hidden)
        if self.top_k > self.num_experts:
            raise ConfigError(f"moe.top_k={self.top_k} must be <= moe.num_experts={self.num_experts}")
        if not isinstance(self.shared_expert, bool):
            raise ConfigError(f"moe.shared_expert={self.shared_expert!r} must be true or false")
        if self.shared_hidden is None:
            self.shared_hidden = self.expert_hidden
        _positive_int("moe.shared_hidden", self.shared_hidden)
        check_choices(self, "moe")
        if not _is_number(self.shared_mix) or not 0.0 <= self.shared_mix <= 1.0:
            raise ConfigError(f"moe.shared_mix={self.shared_mix!r} must be a number in [0, 1]")
        for name in ("aux_weight", "z_weight"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ConfigError(f"moe.{name}={value!r} must be a number >= 0")
        if not _is_number(self.bias_rate) or self.bias_rate <= 0:
            raise ConfigError(f"moe.bias_rate={self.bias_rate!r} must be a number > 0")
        if self.balance_target is not None:
            self._check_balance_target()
        if not isinstance(self.global_aux, bool):
            raise ConfigError(f"moe.global_aux={self.global_aux!r} must be true or false")


    def _check_balance_target(self) -> None:
        if not _is_number(self.balance_target) or self.balance_target <= 0:
            raise ConfigError(f"moe.balance_target={self.balance_target!r} must be a MaxVio > 0 (e.g. 0.2)")
        if not self.trains_aux:
            raise ConfigError("moe.balance_target steers moe.aux_weight; moe.balance='bias' has no aux loss to steer "
                              "(use 'aux' or 'aux+bias')")
        if self.aux_weight <= 0:
            raise ConfigError("moe.balance_target adjusts moe.aux_weight multiplicatively: set moe.aux_weight > 0 as "
                              "its starting value (e.g. 0.01)")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # rejects NaN


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")
