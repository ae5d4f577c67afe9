"""Do the alarms warn before a run fails? The bookkeeping of the instability suite (issue 26), on logged metrics.

A run is its ``metrics.jsonl`` as step records (:func:`step_records`). :func:`failure_step` says when it failed
(:class:`FailureRule`), :func:`replay` re-runs the live alarm code (:class:`~train.monitors.alarms.Alarms`) over the
records under any :class:`~train.monitors.config.MonitorConfig` — so thresholds are tuned offline on exactly the rules
a run applies —, :func:`first_alarms` keeps the first alarm of each family and :func:`lead_times` subtracts:
lead = failure step − alarm step, > 0 a warning *before* the failure, 0 an alarm *with* it, < 0 one after it.
Every alarm in a run that does not fail is a false alarm (:func:`false_alarms`).

:func:`tune` picks, per family, a threshold that stays silent on the stable runs it is given — the widest margin that
loses no warning —, for each candidate ``alarm_start``, and keeps the ``alarm_start`` that warns the most failures
earliest.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from train.monitors.alarms import Alarm, Alarms
from train.monitors.config import MonitorConfig

Records = list[tuple[int, dict[str, float]]]  # (step, that step's metrics), steps increasing
FAMILIES = ("loss_spike", "grad_norm_spike", "z_growth", "attn_logit", "rms_growth", "outlier_frac", "expert_imbalance",
            "aux_below_min")
# Which MonitorConfig field sets each family's threshold (the spike families share spike_sigma).
THRESHOLD_FIELD = {"loss_spike": "spike_sigma", "grad_norm_spike": "spike_sigma", "z_growth": "z_growth",
                   "rms_growth": "rms_growth", "outlier_frac": "outlier_frac", "expert_imbalance": "expert_max_mean",
                   "attn_logit": "attn_logit_max", "aux_below_min": "aux_below_min"}


@dataclass(frozen=True)
class FailureRule:
    """When a run has failed (the first step any clause holds).

    - ``train/loss`` non-finite (the loop skips such steps; ``train.max_nonfinite`` in a row stop the run);
    - ``train/loss`` > ``loss_factor`` × the mean of the previous ``window`` losses: a spike or a divergence, not the
      noise of a falling curve (a batch-to-batch spread of a few % on these presets);
    - MaxVio of the worst MoE layer (``moe/maxvio/layer_XX``; ``moe/maxvio`` without them) > ``maxvio_bound`` for
      ``maxvio_steps`` steps in a row (dated at the first of them): routing collapsed onto a few experts and stays
      there (DeepSeek-V3's MaxVio = max load / mean load − 1; top-k of E experts collapsed onto k reads E/k − 1).
    """

    loss_factor: float = 1.5
    window: int = 20
    maxvio_bound: float = 2.0
    maxvio_steps: int = 20

    def __post_init__(self) -> None:
        if self.loss_factor <= 1.0:
            raise ValueError(f"loss_factor={self.loss_factor} must be > 1 (a loss at its running mean is no failure)")
        if self.window < 1 or self.maxvio_steps < 1:
            raise ValueError(f"window={self.window} and maxvio_steps={self.maxvio_steps} must be >= 1")


@dataclass(frozen=True)
class Failure:
    step: int
    reason: str


def step_records(run_dir: Path) -> Records:
    """A run's metrics as step records (events and a resumed run's rewritten steps handled as ``train.plot``)."""
    from train.plot import load_run  # the one reader of metrics.jsonl (lazy: it brings matplotlib)

    by_step: dict[int, dict[str, float]] = {}
    for name, (steps, values) in load_run(run_dir).series.items():
        for step, value in zip(steps, values, strict=True):
            by_step.setdefault(step, {})[name] = value
    return sorted(by_step.items())


def failure_step(records: Records, rule: FailureRule = FailureRule()) -> Failure | None:
    """The first step at which ``rule`` says the run failed, or None for a run that did not fail."""
    losses: list[float] = []
    maxvio_from: int | None = None
    maxvio_run = 0
    for step, metrics in records:
        loss = metrics.get("train/loss")
        if loss is not None:
            if not math.isfinite(loss):
                return Failure(step, "non-finite loss")
            recent = losses[-rule.window:]
            if len(recent) == rule.window and loss > rule.loss_factor * statistics.fmean(recent):
                return Failure(step, f"loss {loss:.3g} > {rule.loss_factor:g} × mean of the last {rule.window}")
            losses.append(loss)
        maxvio = _worst_maxvio(metrics)
        if maxvio is not None:
            if maxvio > rule.maxvio_bound:
                maxvio_from = step if maxvio_run == 0 else maxvio_from
                maxvio_run += 1
                if maxvio_run == rule.maxvio_steps:
                    return Failure(maxvio_from, f"MaxVio > {rule.maxvio_bound:g} for {rule.maxvio_steps} steps")
            else:
                maxvio_run = 0
    return None


def _worst_maxvio(metrics: Mapping[str, float]) -> float | None:
    """The step's MaxVio of its worst MoE layer (``moe/maxvio`` alone averages the layers: one collapsed layer of
    two would read half as bad)."""
    layers = [v for k, v in metrics.items() if k.startswith("moe/maxvio/layer_")]
    return max(layers) if layers else metrics.get("moe/maxvio")


def replay(records: Records, cfg: MonitorConfig) -> list[Alarm]:
    """The alarms a run with monitor settings ``cfg`` raises on these metrics (the live code, step by step)."""
    alarms = Alarms(cfg)
    fired: list[Alarm] = []
    for step, metrics in records:
        fired += alarms.check(step, metrics)
    return fired


def first_alarms(alarms: Iterable[Alarm]) -> dict[str, Alarm]:
    """The first alarm of each family (the earliest step; at one step, the first raised)."""
    first: dict[str, Alarm] = {}
    for alarm in alarms:
        if alarm.alarm not in first or alarm.step < first[alarm.alarm].step:
            first[alarm.alarm] = alarm
    return first


def lead_times(failure: Failure, first: Mapping[str, Alarm]) -> dict[str, int]:
    """Steps from each family's first alarm to the failure: > 0 before it, 0 with it, < 0 after it."""
    return {family: failure.step - alarm.step for family, alarm in first.items()}


def false_alarms(records: Records, alarms: Sequence[Alarm], rule: FailureRule = FailureRule()) -> list[Alarm]:
    """Alarms of a run that never failed (all of them); a failing run has none by definition."""
    return list(alarms) if failure_step(records, rule) is None else []


@dataclass
class Outcome:
    """One run under one monitor config: its failure, its first alarm per family, the lead times."""

    name: str
    failure: Failure | None
    first: dict[str, Alarm]

    @property
    def leads(self) -> dict[str, int]:
        return lead_times(self.failure, self.first) if self.failure else {}

    @property
    def warned(self) -> bool:
        """A failing run with at least one alarm strictly before its failure step."""
        return any(lead > 0 for lead in self.leads.values())

    @property
    def false_alarm_count(self) -> int:
        return 0 if self.failure else len(self.first)


def failures_of(runs: Mapping[str, Records], rule: FailureRule = FailureRule(),
                known: Mapping[str, Failure] | None = None) -> dict[str, Failure | None]:
    """Each run's failure: a ``known`` one (an injected fault at a step the experiment chose, e.g. a bad batch:
    nothing can precede it, so an alarm *with* it is the best possible) wins over the rule's."""
    known = known or {}
    return {n: known.get(n) or failure_step(r, rule) for n, r in runs.items()}


def evaluate(runs: Mapping[str, Records], cfg: MonitorConfig, rule: FailureRule = FailureRule(),
             known: Mapping[str, Failure] | None = None) -> list[Outcome]:
    failures = failures_of(runs, rule, known)
    return [Outcome(name, failures[name], first_alarms(replay(records, cfg))) for name, records in runs.items()]


def _only(cfg: MonitorConfig, family: str, threshold: float) -> MonitorConfig:
    """``cfg`` with every alarm family off except ``family`` at ``threshold``."""
    off = {f: 0.0 for f in set(THRESHOLD_FIELD.values())}
    off[THRESHOLD_FIELD[family]] = threshold
    return dataclasses.replace(cfg, **off)


def _warned(runs: Mapping[str, Records], failures: Mapping[str, Failure], cfg: MonitorConfig,
            families: Sequence[str]) -> frozenset[str]:
    """The failing runs in which one of ``families`` alarms strictly before the failure step."""
    return frozenset(n for n, f in failures.items()
                     if any(a.alarm in families and a.step < f.step for a in replay(runs[n], cfg)))


def tune(runs: Mapping[str, Records], grid: Mapping[str, Sequence[float]], alarm_starts: Sequence[int],
         base: MonitorConfig = MonitorConfig(), rule: FailureRule = FailureRule(),
         known: Mapping[str, Failure] | None = None, stable: Collection[str] | None = None) -> MonitorConfig:
    """The monitor config that, on ``runs``, raises no false alarm and warns the most failures, earliest.

    Families are independent given ``alarm_start`` (each alarm reads its own metrics; the spike families share
    ``spike_sigma``), so each threshold field of ``grid`` is chosen alone among its *silent* candidates (no alarm
    in a stable run): the largest one that still warns every failure the most sensitive silent one warns — the
    widest margin from the stable runs at no loss of coverage. A family that warns no failure keeps ``base``'s value
    when that is silent; one that no candidate keeps silent is switched off (0). ``alarm_start`` (tried in order,
    ties keep the first) then maximizes (failures warned, sum of each failure's earliest lead). ``stable``: the runs
    that must stay silent (default: every run that does not fail; a run driven at a failure that did not come may
    rightly alarm).
    """
    failures = {n: f for n, f in failures_of(runs, rule, known).items() if f is not None}
    quiet = {n: r for n, r in runs.items() if n not in failures and (stable is None or n in stable)}
    best: tuple[tuple[int, int], MonitorConfig] | None = None
    for start in alarm_starts:
        cfg = dataclasses.replace(base, alarm_start=start)
        chosen: dict[str, float] = {}
        for field, candidates in grid.items():
            families = [f for f, fld in THRESHOLD_FIELD.items() if fld == field]
            alone = {v: _only(cfg, families[0], v) for v in candidates}
            silent = sorted(v for v in candidates
                            if not any(a.alarm in families for r in quiet.values() for a in replay(r, alone[v])))
            if not silent:
                chosen[field] = 0.0
                continue
            target = _warned(runs, failures, alone[silent[0]], families)
            if not target and getattr(base, field) in silent:
                chosen[field] = getattr(base, field)
            else:
                chosen[field] = max(v for v in silent if _warned(runs, failures, alone[v], families) == target)
        cfg = dataclasses.replace(cfg, **chosen)
        outcomes = [o for o in evaluate(runs, cfg, rule, known) if o.failure]
        score = (sum(o.warned for o in outcomes), sum(max([0, *o.leads.values()]) for o in outcomes))
        if best is None or score > best[0]:
            best = (score, cfg)
    assert best is not None, "alarm_starts is empty"
    return best[1]
