"""Stability monitors (SPEC §5): collectors, alarms and their callbacks.

Metric names (``XX`` = layer index, two digits; ``G`` = optimizer group name: sphere, matrix, head, adam):

- Z-values: ``monitor/z_logits_mean``, ``monitor/z_logits_max`` (output-logit logsumexp per token),
  ``monitor/z_router/layer_XX`` (mean LSE² of router logits), ``monitor/z_router_max/layer_XX`` (max LSE),
  ``monitor/z_attn/layer_XX`` (mean over tokens and heads of LSE² of the causal scaled attention logits),
  ``monitor/attn_logit_max/layer_XX`` (max scale·q·k, Megatron's QK-clip monitor).
- Output RMS: ``monitor/rms/attn/layer_XX``, ``monitor/rms/mlp/layer_XX`` (branch outputs after the residual
  multiplier), ``monitor/rms/layer_XX`` (residual stream after the block), ``monitor/rms/final`` (after the final norm).
- Outliers, on the residual stream (``resid``) and the MLP/MoE input (``mlp_in``):
  ``monitor/outlier_frac/{resid,mlp_in}/layer_XX`` (|x| > 6·RMS), ``monitor/max_over_rms/...``,
  ``monitor/kurtosis/...`` (excess); SPEC's ``monitor/outlier_pct/{attn,mlp}/layer_XX`` (% of |x − μ_tok| > 5σ_tok).
- Expert load over the window since the last monitor step: ``monitor/expert_load/{max_mean,maxvio,cv,dead}/layer_XX``,
  ``monitor/expert_load/{max_mean,maxvio,cv}_mean``, ``monitor/expert_load/dead_total``,
  ``monitor/expert_tokens/layer_XX/expert_YY``.
- Optimizer health: ``monitor/grad_norm/G``, ``monitor/weight_norm/G``, ``monitor/update_ratio/G``,
  ``monitor/sphere_norm_drift``.
- Router (MoE layers): ``monitor/router/entropy/layer_XX`` (mean entropy of the softmax over all experts / ln E),
  ``monitor/router/margin/layer_XX`` (mean gap between the k-th and (k+1)-th selection score) and
  ``monitor/router/near_tie/layer_XX`` (fraction of tokens whose gap is within bf16 rounding), ``monitor/router/churn/
  layer_XX`` (fraction of a fixed probe's tokens whose top-k set changed since the last monitor step),
  ``monitor/router/aux_over_min/layer_XX`` (the layer's switch aux loss over its balanced minimum 1; layers without a
  selection bias), ``monitor/expert_load/{p10,p50,p90}/layer_XX`` (percentiles of expert load / mean load).

Under torchrun every rank computes these on its own tokens and the logged values are reduced over ranks
(:func:`train.monitors.stats.reduce_over_ranks`; what each means under data / expert parallelism: its docstring and
docs/distributed.md "Monitors under DP and EP").

Alarms (``{"step", "event": "alarm", "alarm", "metric", "value", "threshold"}`` in metrics.jsonl): ``loss_spike``,
``grad_norm_spike`` (value > mean + 6σ of the last 128, after 32 values), ``z_growth`` / ``rms_growth`` (above
10× the first value monitored from ``alarm_start`` = step 50 on), ``outlier_frac`` (> 1 %) and ``expert_imbalance``
(max/mean > 3) and ``aux_below_min`` (aux over its balanced minimum < 0.95), from ``alarm_start`` on, and
``attn_logit`` (max q·k/√d > 100, from step 1). Threshold alarms fire once and re-arm when the value comes back.
Every alarm pins the checkpoint before it as a rollback point. Whether they warn before a failure is measured by
:mod:`train.monitors.lead_time` (benchmarks/results/instability.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from train.monitors.config import MonitorConfig

if TYPE_CHECKING:
    from train.monitors.callback import MonitorCallback


def monitor_callbacks(cfg: MonitorConfig) -> list[MonitorCallback]:
    """The monitor/alarm callback of a run. With ``every = 0`` it only watches loss / grad-norm spikes."""
    # Lazy: train.config imports this package for MonitorConfig, and the callback imports the loop.
    from train.monitors.callback import MonitorCallback

    if cfg.every == 0 and (cfg.spike_window == 0 or cfg.spike_sigma == 0):
        return []
    return [MonitorCallback(cfg)]


__all__ = ["MonitorConfig", "monitor_callbacks"]
