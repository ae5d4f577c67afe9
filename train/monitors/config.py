"""Settings of the stability monitors and alarms (SPEC §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hyperp.errors import ConfigError, check_choices


@dataclass
class MonitorConfig:
    """When to collect the SPEC §5 monitors and when they raise an alarm.

    Collectors (activation hooks, optimizer health) run on steps with ``step % every == 0``; ``every = 0`` turns
    them off. The loss / grad-norm spike alarms read the step's metrics and cost nothing, so they stay on unless
    ``spike_window = 0``. Any threshold set to 0 disables its alarm.
    """

    every: int = 10  # collect monitors every N optimizer steps (0 disables them)
    on_alarm: Literal["warn", "stop"] = "warn"
    sample_tokens: int = 256  # tokens per layer the activation statistics are computed on (first N of the batch)
    expert_tokens: bool = True  # also log tokens per expert (layers × experts metrics)
    # OLMo-core's spike rule: value > mean + spike_sigma·σ of the last spike_window values (loss and grad norm).
    spike_window: int = 128
    spike_sigma: float = 6.0
    spike_min_history: int = 32  # values seen before the spike rule may fire (the first steps fall steeply)
    # Threshold and growth alarms start at this step; growth is measured against the first value monitored from
    # here on. At init the residual stream is tiny (HyperP embeddings have std 1e-4) and the router is random, so
    # step-1 values would make every RMS look like a 10× growth and every MoE layer look imbalanced.
    alarm_start: int = 50
    z_growth: float = 10.0  # a Z-value (monitor/z_*) above this factor × its first monitored value
    rms_growth: float = 10.0  # an output RMS (monitor/rms/*) above this factor × its first monitored value
    outlier_frac: float = 0.01  # fraction of |x| > 6·RMS (monitor/outlier_frac/*); a Gaussian gives 2e-9
    expert_max_mean: float = 3.0  # tokens of the busiest expert / mean tokens per expert, per MoE layer
    # A layer's switch aux loss below this fraction of its balanced minimum (1): the router games the loss
    # (train.monitors.stats.aux_over_min). Honest top-k routing stays near or above 1 once the load is balanced.
    aux_below_min: float = 0.95
    # Max attention logit q·k/√d of any layer (monitor/attn_logit_max/*), absolute and from step 1: it warned
    # 16–28 steps before the high-lr failures of the instability suite, where the growth alarms came after (the
    # logits grow before alarm_start fixes their baseline; benchmarks/results/instability.md). With qk-norm it is
    # ≤ √d·g_q·g_k (≈ 6 at head_dim 32 with unit gains); 100, tuned there, is also Kimi K2's QK-clip threshold.
    attn_logit_max: float = 100.0

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError(f"monitor.every={self.every} must be >= 0")
        check_choices(self, "monitor")
        for name in ("sample_tokens", "spike_window", "spike_min_history", "alarm_start"):
            if getattr(self, name) < 0 or (name == "sample_tokens" and self.sample_tokens < 1):
                raise ConfigError(f"monitor.{name}={getattr(self, name)} must be {'>= 1' if name == 'sample_tokens' else '>= 0'}")
        for name in ("spike_sigma", "z_growth", "rms_growth", "outlier_frac", "expert_max_mean", "aux_below_min",
                     "attn_logit_max"):
            if getattr(self, name) < 0:
                raise ConfigError(f"monitor.{name}={getattr(self, name)} must be >= 0 (0 disables the alarm)")
