"""The instability suite's bookkeeping (train.monitors.lead_time) on hand-written metric series.

Every expected step below is worked out by hand from the rule's definition (written next to it), not from the code.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from train.monitors.config import MonitorConfig
from train.monitors.lead_time import (
    Failure,
    FailureRule,
    evaluate,
    failure_step,
    false_alarms,
    first_alarms,
    lead_times,
    replay,
    step_records,
    tune,
)

RULE = FailureRule(loss_factor=1.5, window=20, maxvio_bound=2.0, maxvio_steps=20)
# Only the rules a test needs: spikes off unless asked (spike_sigma=0), growth/thresholds set per test.
QUIET = MonitorConfig(alarm_start=50, spike_sigma=0.0, z_growth=0.0, rms_growth=0.0, outlier_frac=0.0,
                      expert_max_mean=0.0, attn_logit_max=0.0)


def losses(values: dict[int, float], steps: int) -> list[tuple[int, dict[str, float]]]:
    """Steps 1..steps with train/loss 2.0 / 2.2 alternating (mean 2.1, σ 0.1), overridden by ``values``."""
    return [(s, {"train/loss": values.get(s, 2.0 if s % 2 else 2.2)}) for s in range(1, steps + 1)]


def test_nonfinite_loss_is_the_failure_step() -> None:
    assert failure_step(losses({37: math.nan}, 60), RULE) == Failure(37, "non-finite loss")
    assert failure_step(losses({37: math.inf}, 60), RULE).step == 37


def test_loss_above_factor_times_running_mean() -> None:
    # mean of any 20 consecutive values of the 2.0/2.2 pattern = 2.1; 1.5 × 2.1 = 3.15
    assert failure_step(losses({40: 3.1}, 60), RULE) is None
    assert failure_step(losses({40: 3.2}, 60), RULE).step == 40
    # before 20 losses are known the rule cannot fire (the first steps fall steeply)
    assert failure_step(losses({15: 9.0}, 19), RULE) is None
    # a slow rise is caught once it passes 1.5 × the mean of the 20 before: 2.1, then +0.2 per step from step 31:
    # step 31 + n has loss 2.1 + 0.2 (n + 1) and its window holds the ramp's previous values.
    ramp = [(s, {"train/loss": 2.1 if s <= 30 else 2.1 + 0.2 * (s - 30)}) for s in range(1, 80)]
    expected = next(s for s in range(31, 80)
                    if 2.1 + 0.2 * (s - 30) > 1.5 * sum(2.1 if t <= 30 else 2.1 + 0.2 * (t - 30) for t in range(s - 20, s)) / 20)
    assert failure_step(ramp, RULE).step == expected


def test_maxvio_must_stay_above_the_bound_for_m_steps() -> None:
    def run(high: range) -> list[tuple[int, dict[str, float]]]:
        return [(s, {"moe/maxvio": 2.5 if s in high else 0.3}) for s in range(1, 100)]

    assert failure_step(run(range(30, 49)), RULE) is None  # 19 steps in a row
    assert failure_step(run(range(30, 50)), RULE) == Failure(30, "MaxVio > 2 for 20 steps")  # dated at its start
    gap = [(s, {"moe/maxvio": 0.3 if s == 40 else 2.5}) for s in range(30, 70)]
    assert failure_step(gap, RULE).step == 41  # the streak restarts after the dip
    # per-layer values: the worst layer counts (layer_01 collapsed at 2.5, layer_00 at 0.3, their mean 1.4)
    layers = [(s, {"moe/maxvio": 1.4, "moe/maxvio/layer_00": 0.3, "moe/maxvio/layer_01": 2.5}) for s in range(5, 30)]
    assert failure_step(layers, RULE).step == 5


def monitored(z: dict[int, float], loss: dict[int, float], steps: int) -> list[tuple[int, dict[str, float]]]:
    """Loss every step (pattern of :func:`losses`); z_attn every 2nd step, 1.0 unless overridden."""
    out = losses(loss, steps)
    for step, metrics in out:
        if step % 2 == 0:
            metrics["monitor/z_attn/layer_00"] = z.get(step, 1.0)
    return out


def test_first_alarm_per_family_and_lead_times() -> None:
    # z: first monitored value from alarm_start 50 is 1.0, so 10× → the alarm at the first value > 10 (step 60);
    # a loss spike at 64: mean 2.1 + 6σ (σ = 0.1) = 2.7 < 3.0; the 2.0/2.2 values never exceed it; failure (NaN) at 70.
    records = monitored({58: 9.0, 60: 11.0, 62: 12.0, 64: 2.0, 66: 13.0}, {64: 3.0, 70: math.nan}, 80)
    cfg = MonitorConfig(**{**QUIET.__dict__, "z_growth": 10.0, "spike_sigma": 6.0, "spike_window": 128,
                           "spike_min_history": 32})
    alarms = replay(records, cfg)
    assert [(a.step, a.alarm) for a in alarms] == [(60, "z_growth"), (64, "loss_spike"), (66, "z_growth")]
    first = first_alarms(alarms)
    assert {k: a.step for k, a in first.items()} == {"z_growth": 60, "loss_spike": 64}
    assert lead_times(failure_step(records, RULE), first) == {"z_growth": 10, "loss_spike": 6}


def test_alarm_start_moves_the_growth_baseline() -> None:
    # with alarm_start 60 the baseline is step 60's 11.0: nothing above 110 → no alarm
    records = monitored({60: 11.0, 62: 12.0}, {}, 80)
    cfg = MonitorConfig(**{**QUIET.__dict__, "z_growth": 10.0, "alarm_start": 60})
    assert replay(records, cfg) == []
    # an alarm after the failure has a negative lead
    late = monitored({72: 20.0}, {70: math.nan}, 80)
    first = first_alarms(replay(late, MonitorConfig(**{**QUIET.__dict__, "z_growth": 10.0})))
    assert lead_times(failure_step(late, RULE), first) == {"z_growth": -2}


def test_false_alarms_only_in_runs_that_do_not_fail() -> None:
    cfg = MonitorConfig(**{**QUIET.__dict__, "z_growth": 10.0})
    stable = monitored({60: 11.0}, {}, 80)
    failing = monitored({60: 11.0}, {70: math.nan}, 80)
    assert [a.step for a in false_alarms(stable, replay(stable, cfg), RULE)] == [60]
    assert false_alarms(failing, replay(failing, cfg), RULE) == []
    outcomes = {o.name: o for o in evaluate({"stable": stable, "failing": failing}, cfg, RULE)}
    assert outcomes["stable"].false_alarm_count == 1 and not outcomes["stable"].warned
    assert outcomes["failing"].warned and outcomes["failing"].leads == {"z_growth": 10}


def test_tune_keeps_the_widest_silent_margin_that_loses_no_warning() -> None:
    # failing: z grows 4× at step 60, fails at 70; stable: z grows 2.5× at 60. Growth candidates 2, 3, 5, 10:
    # 2 fires on the stable run, 3 is the most sensitive silent one, and it warns the failure 10 steps ahead.
    # alarm_start 62 or later makes the post-growth values the baseline: no warning, so 50 wins.
    runs = {"failing": monitored({s: 4.0 for s in range(60, 81)}, {70: math.nan}, 80),
            "stable": monitored({s: 2.5 for s in range(60, 81)}, {}, 80)}
    cfg = tune(runs, {"z_growth": [10.0, 2.0, 5.0, 3.0]}, alarm_starts=[62, 50], base=QUIET, rule=RULE)
    assert (cfg.z_growth, cfg.alarm_start) == (3.0, 50)
    # the widest margin that loses no warning: stable 1.5×, failing 6× → 2, 3 and 5 all warn it and stay silent
    wide = {"failing": monitored({s: 6.0 for s in range(60, 81)}, {70: math.nan}, 80),
            "stable": monitored({s: 1.5 for s in range(60, 81)}, {}, 80)}
    assert tune(wide, {"z_growth": [2.0, 3.0, 5.0, 10.0]}, alarm_starts=[50], base=QUIET, rule=RULE).z_growth == 5.0
    # nothing to warn: the base value stays when it is silent
    calm = {"stable": wide["stable"]}
    assert tune(calm, {"z_growth": [2.0, 10.0]}, alarm_starts=[50], base=replace(QUIET, z_growth=10.0)).z_growth == 10.0
    # a family no candidate keeps silent is switched off (0), never left at a value that cries wolf
    cfg = tune(runs, {"z_growth": [2.0]}, alarm_starts=[50], base=QUIET, rule=RULE)
    assert cfg.z_growth == 0.0


def test_known_failures_and_the_runs_that_must_stay_silent() -> None:
    # an injected fault at step 66 fails the run there, whatever the rule says; the z alarm at 60 leads it by 6
    records = monitored({s: 4.0 for s in range(60, 81)}, {}, 80)
    cfg = replace(QUIET, z_growth=3.0)
    (outcome,) = evaluate({"bad": records}, cfg, RULE, known={"bad": Failure(66, "injected")})
    assert outcome.failure == Failure(66, "injected") and outcome.leads == {"z_growth": 6}
    # a run that did not fail but is not among the stable runs does not silence a candidate
    runs = {"failing": records, "undecided": monitored({s: 2.5 for s in range(60, 81)}, {}, 80)}
    known = {"failing": Failure(66, "injected")}
    assert tune(runs, {"z_growth": [2.0, 10.0]}, [50], QUIET, RULE, known, stable=[]).z_growth == 2.0
    assert tune(runs, {"z_growth": [2.0, 10.0]}, [50], QUIET, RULE, known).z_growth == 10.0


def test_attn_logit_alarm_is_absolute_and_not_held_back_by_alarm_start() -> None:
    # max q·k/√d above 30, even before alarm_start 50: 40 at step 4 fires, 5 at 50 clears, 31 at 52 fires again,
    # 29 at 54 clears, 35 at 56 fires; the growth rule on the same values would wait for step 50
    records = [(s, {"monitor/attn_logit_max/layer_01": v}) for s, v in ((4, 40.0), (50, 5.0), (52, 31.0),
                                                                          (54, 29.0), (56, 35.0))]
    alarms = replay(records, replace(QUIET, attn_logit_max=30.0))
    assert [(a.step, a.alarm, a.threshold) for a in alarms] == [(4, "attn_logit", 30.0), (52, "attn_logit", 30.0),
                                                                (56, "attn_logit", 30.0)]


def test_step_records_merge_a_step_and_skip_events(tmp_path) -> None:
    lines = [{"step": 1, "time": 0.0, "train/loss": 3.0},
             {"step": 2, "event": "alarm", "alarm": "loss_spike", "metric": "train/loss", "value": 9.0, "threshold": 1.0},
             {"step": 2, "time": 1.0, "train/loss": 9.0},
             {"step": 2, "time": 1.0, "val/loss": 4.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert step_records(tmp_path) == [(1, {"train/loss": 3.0}), (2, {"train/loss": 9.0, "val/loss": 4.0})]


@pytest.mark.parametrize("bad", [{"loss_factor": 1.0}, {"window": 0}, {"maxvio_steps": 0}])
def test_bad_failure_rule_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        FailureRule(**bad)
