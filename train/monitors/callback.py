"""The monitor callback: arms the collectors on monitor steps, logs ``monitor/...`` metrics, raises alarms.

Cost model: on a step that is not a monitor step nothing is hooked except the expert-load counter (an on-device
add per MoE layer), and no value is read back to the host. On a monitor step the statistics are computed as
tensors and read back with a single ``.tolist()`` in :meth:`on_step_end`.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from train.loop import Callback, Trainer
from train.monitors.alarms import Alarm, Alarms
from train.monitors.collectors import ActivationCollector, ExpertLoad, OptimizerHealth, RoutingChurn
from train.monitors import stats as S
from train.monitors.config import MonitorConfig


class MonitorCallback(Callback):
    def __init__(self, cfg: MonitorConfig) -> None:
        self.cfg = cfg
        self.alarms = Alarms(cfg)
        self.optim = OptimizerHealth()
        self.activations: ActivationCollector | None = None
        self.experts: ExpertLoad | None = None
        self.churn: RoutingChurn | None = None
        self._pending_experts: dict[str, list[float]] = {}
        self._pending_churn: list | None = None
        self._monitor_step = False
        self._device = torch.device("cpu")
        self.events: list[Alarm] = []  # every alarm raised in this process, for tests and summaries

    def is_monitor_step(self, step: int) -> bool:
        return self.cfg.every > 0 and step % self.cfg.every == 0

    # ------------------------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Trainer) -> None:
        self._device = trainer.device
        if self.cfg.every > 0:
            self.activations = ActivationCollector(trainer.model, self.cfg.sample_tokens)
            self.experts = ExpertLoad(trainer.model, trainer.dist)
            if self._pending_experts:
                self.experts.load_state_dict(self._pending_experts, trainer.device)
            if self.experts.active:
                self.churn = RoutingChurn(trainer.model, self._probe(trainer))
                self.churn.load_state_dict(self._pending_churn)
            self.optim.init_reference(trainer.optimizer)

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        self._monitor_step = self.is_monitor_step(step) and self.activations is not None
        if self._monitor_step:
            self.activations.arm()  # removes itself after the first micro-batch's forward

    def on_before_optimizer_step(self, trainer: Trainer, step: int) -> dict[str, float]:
        if self._monitor_step:
            self.optim.before_step(trainer.optimizer)
        return {}

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if self._monitor_step:
            self._monitor_step = False
            self.activations.disarm()
            tensors = self.activations.take()
            tensors.update(self.optim.after_step(trainer.optimizer))
            tensors = S.reduce_over_ranks(tensors, trainer.dist)  # each rank's statistics → the global batch's
            if self.experts is not None and self.experts.active:
                tensors.update(self.experts.report(self.cfg.expert_tokens))
            if self.churn is not None:
                tensors.update(self.churn.measure(trainer.autocast))
            if tensors:
                names = list(tensors)
                values = torch.stack([tensors[n].detach().double().reshape(()) for n in names]).tolist()  # one sync
                metrics.update(zip(names, values, strict=True))
        for alarm in self.alarms.check(step, metrics):
            self._raise(trainer, alarm)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.activations is not None:
            self.activations.disarm()
        if self.experts is not None:
            self.experts.close()

    def _probe(self, trainer: Trainer) -> torch.Tensor:
        """The churn probe: the first ⌈sample_tokens / seq_len⌉ sequences of the first validation batch — rank 0's
        on every rank (each rank has its own validation batches), so all ranks measure one churn and a resume, which
        restores rank 0's last top-k sets, compares the same tokens."""
        inputs = trainer.validation.batches[0][0]
        probe = inputs[: max(1, self.cfg.sample_tokens // inputs.shape[-1])].to(trainer.device)
        return trainer.dist.broadcast(probe.clone())  # a copy: rank r keeps its own validation batch

    # ------------------------------------------------------------------------------------------------ alarms
    def _raise(self, trainer: Trainer, alarm: Alarm) -> None:
        self.events.append(alarm)
        print(alarm.message(), file=sys.stderr, flush=True)
        trainer.logger.event(alarm.record())
        # Every alarm keeps the way back: the checkpoint before it is pinned, so a divergence that follows within
        # monitor.spike_window steps rolls back to before the first warning (the growth, outlier and expert alarms
        # come before the failure: benchmarks/results/instability.md), and stopping on an alarm rolls back there.
        trainer.mark_rollback(alarm.step, alarm.alarm)
        if self.cfg.on_alarm == "stop":
            trainer.request_stop(f"monitor alarm {alarm.alarm}: {alarm.metric} = {alarm.value:.4g} "
                                 f"> {alarm.threshold:.4g} at step {alarm.step}", roll_back=True)

    # ------------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        experts = self.experts.state_dict() if self.experts is not None else dict(self._pending_experts)
        churn = self.churn.state_dict() if self.churn is not None else self._pending_churn
        return {"alarms": self.alarms.state_dict(), "sphere_reference": self.optim.reference, "expert_window": experts,
                "router_topk": churn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alarms.load_state_dict(state.get("alarms", {}))
        if state.get("sphere_reference") is not None:
            self.optim.reference = state["sphere_reference"]
        self._pending_experts = dict(state.get("expert_window", {}))
        self._pending_churn = state.get("router_topk")
        if self.experts is not None:
            self.experts.load_state_dict(self._pending_experts, self._device)
        if self.churn is not None:
            self.churn.load_state_dict(self._pending_churn)
