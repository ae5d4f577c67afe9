"""Alarms on monitored values: loss / grad-norm spikes (OLMo-core's rule) and threshold / growth rules.

:class:`Alarms` turns a step's metrics into :class:`Alarm` events; the callback prints, logs and (optionally)
stops on them. All state is plain Python and round-trips through :meth:`Alarms.state_dict` for exact resume.
"""

from __future__ import annotations

import fnmatch
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from train.monitors.config import MonitorConfig


@dataclass
class Alarm:
    step: int
    alarm: str  # loss_spike | grad_norm_spike | z_growth | rms_growth | outlier_frac | expert_imbalance | aux_below_min | attn_logit
    metric: str
    value: float
    threshold: float
    below: bool = False  # the rule fires below the threshold (aux_below_min), not above it

    def record(self) -> dict[str, Any]:
        return {"step": self.step, "event": "alarm", "alarm": self.alarm, "metric": self.metric,
                "value": self.value, "threshold": self.threshold}

    def message(self) -> str:
        return (f"[monitor] step {self.step}: ALARM {self.alarm}: {self.metric} = {self.value:.4g} "
                f"{'<' if self.below else '>'} {self.threshold:.4g}")


class SpikeDetector:
    """A value above mean + sigma·σ of the last ``window`` values is a spike (OLMo-core, k = 6, N = 128).

    Every finite value joins the window, spikes included; the rule waits for ``min_history`` values.
    """

    def __init__(self, window: int = 128, sigma: float = 6.0, min_history: int = 32) -> None:
        self.sigma, self.min_history = sigma, max(2, min_history)
        self.values: deque[float] = deque(maxlen=window)

    def threshold(self) -> float | None:
        n = len(self.values)
        if n < self.min_history:
            return None
        mean = sum(self.values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in self.values) / n)
        return mean + self.sigma * std

    def update(self, value: float) -> float | None:
        """Add ``value``; return the threshold it exceeded, or None."""
        if not math.isfinite(value):
            return None
        limit = self.threshold()
        self.values.append(value)
        return limit if limit is not None and value > limit else None


# (alarm, metric glob, kind, config field, from alarm_start): "growth" compares with the metric's first monitored
# value, "below" fires under the threshold. The attention-logit bound holds from init (|q·k|/√d ≤ √d·g_q·g_k with
# qk-norm), so it is not held back: in the instability suite the high-lr runs pass it before step 50
# (benchmarks/results/instability.md).
_RULES = (
    ("z_growth", "monitor/z_*", "growth", "z_growth", True),
    ("rms_growth", "monitor/rms/*", "growth", "rms_growth", True),
    ("outlier_frac", "monitor/outlier_frac/*", "above", "outlier_frac", True),
    ("expert_imbalance", "monitor/expert_load/max_mean/*", "above", "expert_max_mean", True),
    ("aux_below_min", "monitor/router/aux_over_min/*", "below", "aux_below_min", True),
    ("attn_logit", "monitor/attn_logit_max/*", "above", "attn_logit_max", False),
)
SPIKE_METRICS = {"train/loss": "loss_spike", "train/grad_norm": "grad_norm_spike"}


class Alarms:
    def __init__(self, cfg: MonitorConfig) -> None:
        self.cfg = cfg
        self.spikes = {m: SpikeDetector(cfg.spike_window, cfg.spike_sigma, cfg.spike_min_history)
                       for m in SPIKE_METRICS} if cfg.spike_window > 0 and cfg.spike_sigma > 0 else {}
        self.first: dict[str, float] = {}  # first monitored value of each growth-rule metric
        self.active: set[str] = set()  # threshold alarms currently raised (they fire again only after clearing)

    def check(self, step: int, metrics: dict[str, float]) -> list[Alarm]:
        fired: list[Alarm] = []
        for metric, det in self.spikes.items():
            if metric in metrics:
                limit = det.update(float(metrics[metric]))
                if limit is not None:
                    fired.append(Alarm(step, SPIKE_METRICS[metric], metric, float(metrics[metric]), limit))
        for name, value in metrics.items():
            if not name.startswith("monitor/"):
                continue
            for alarm, pattern, kind, field, gated in _RULES:
                factor = getattr(self.cfg, field)
                if factor <= 0 or (gated and step < self.cfg.alarm_start) or not fnmatch.fnmatchcase(name, pattern):
                    continue
                if kind == "growth":
                    base = self.first.setdefault(name, value)
                    if not (math.isfinite(base) and base > 0):
                        continue
                    limit = factor * base
                else:
                    limit = factor
                key = f"{alarm}:{name}"
                beyond = value < limit if kind == "below" else value > limit
                if beyond or not math.isfinite(value):
                    if key not in self.active:
                        self.active.add(key)
                        fired.append(Alarm(step, alarm, name, value, limit, below=kind == "below"))
                else:
                    self.active.discard(key)
        return fired

    def state_dict(self) -> dict[str, Any]:
        return {"spikes": {m: list(d.values) for m, d in self.spikes.items()},
                "first": dict(self.first), "active": sorted(self.active)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for m, values in state.get("spikes", {}).items():
            if m in self.spikes:
                self.spikes[m].values.clear()
                self.spikes[m].values.extend(values)
        self.first = dict(state.get("first", {}))
        self.active = set(state.get("active", []))
