"""A self-tuning balance controller: steers the aux weight α toward a target MaxVio.

The aux-weight sweep (``benchmarks/results/aux_weight.md``) showed that under MuonH + SqrtGate the loss does not
care about α over a wide range while MaxVio falls steeply with it (α 1e-3 → 0.1: MaxVio 0.56 → 0.15); what a user
wants is a balance level, not an α. Balance responds to α monotonically and with a lag (the router needs tens of
steps to move), so the controller is an integral controller in log space on a smoothed MaxVio:

    m̄_t   = β·m̄_{t−1} + (1 − β)·m_t                         (EMA; m̄_1 = m_1, so no bias toward 0)
    v_{t+1} = clip(v_t · clip((m̄_t / target)^κ, 1/ρ, ρ), lo, hi)

- multiplicative: α spans decades (1e-4 … 1) and the response is roughly log-log, so equal relative errors give
  equal relative steps, and v stays positive;
- κ = 0.05 with ρ = 1.05: at most ±5 % per step (a decade in ≥ 47 steps), slow next to the ~10-step EMA and the
  router's response, so it does not oscillate on the synthetic plant of ``tests/moe/test_controller.py`` nor in
  ``benchmarks/results/balance_controller.md``;
- bounded: a target the run cannot reach pins v at a bound instead of running away (α ∈ [1e-4, 1]: below 1e-4 the
  sweep saw no balancing; α = 1 already cost +0.06 in val loss).

Only α is steered. The aux-loss-free bias is itself an integral controller (b_i += γ_b·sign(mean − load_i)) toward
MaxVio 0: γ_b sets its speed and jitter, not a balance level, and a second integrator on γ_b made a double
integrator that oscillated on the synthetic plant (MaxVio swinging 0.13 ↔ 0.49 around a target of 0.3 with a period of
~300 steps). So ``balance = "bias"`` with a target is refused by :class:`moe.config.MoEConfig`.

The controller is a plain Stateful object (floats only: a checkpoint restores it exactly); the balance policy
(:class:`moe.balance.BalancePolicy`) owns it, feeds it the global MaxVio of each optimizer step (identical on every
rank, so every rank's controller stays identical) and reads :attr:`value` as α.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

BOUNDS = (1e-4, 1.0)  # α
SMOOTHING = 0.9  # β: an EMA over ~10 steps (MaxVio of one step is noisy at small batch)
GAIN = 0.05  # κ
MAX_FACTOR = 1.05  # ρ


@dataclass
class ControllerState:
    value: float  # the current α
    maxvio_ema: float = math.nan  # m̄ (nan before the first update)
    updates: int = 0


class BalanceController:
    """Drives the aux weight from ``initial`` toward a smoothed global MaxVio of ``target``."""

    def __init__(self, target: float, initial: float) -> None:
        self.target = target
        self.low, self.high = BOUNDS
        self.state = ControllerState(value=min(max(initial, self.low), self.high))

    @property
    def value(self) -> float:
        return self.state.value

    def update(self, maxvio: float) -> None:
        """One optimizer step's global MaxVio (mean over MoE layers)."""
        s = self.state
        s.maxvio_ema = maxvio if s.updates == 0 else SMOOTHING * s.maxvio_ema + (1 - SMOOTHING) * maxvio
        s.updates += 1
        # A perfectly balanced step (MaxVio 0) is "far below target": the largest allowed decrease.
        ratio = max(s.maxvio_ema, 1e-12) / self.target
        factor = min(max(ratio**GAIN, 1 / MAX_FACTOR), MAX_FACTOR)
        s.value = min(max(s.value * factor, self.low), self.high)

    def metrics(self) -> dict[str, float]:
        """The schedule, for the step log: the value steered, the smoothed MaxVio and the target."""
        return {"moe/balance/aux_weight": self.state.value, "moe/balance/maxvio_ema": self.state.maxvio_ema,
                "moe/balance/target": self.target}

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target, **asdict(self.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("target") != self.target:
            raise ValueError(f"balance controller state steers toward MaxVio {state.get('target')}, this run toward "
                             f"{self.target}")
        self.state = ControllerState(float(state["value"]), float(state["maxvio_ema"]), int(state["updates"]))
