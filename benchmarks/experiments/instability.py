"""Do the monitors warn before a run fails? (issue 26) Runs driven to known failure modes, each with a stable twin.

``python benchmarks/experiments/instability.py run`` trains the suite (sequentially, one thread each, resumable:
finished runs are skipped) into ``sweeps/instability/``; ``… report`` measures each run's failure step, the first
alarm of each family and the lead times (:mod:`train.monitors.lead_time`) under the shipped defaults and under
thresholds tuned on the tuning subset, and writes ``benchmarks/results/instability.md`` and one PNG per run.

Every run is a base preset of ``configs/experiments/instability/`` plus the ``--set`` overrides below; a failure
run and its twin differ in one knob (the ``twin`` column). ``subset``: "tune" runs choose the thresholds, "holdout"
runs only check them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _exp import RESULTS, ROOT, SWEEPS, plt

from train.monitors.config import MonitorConfig
from train.monitors.lead_time import (
    FAMILIES,
    Failure,
    FailureRule,
    Outcome,
    Records,
    evaluate,
    step_records,
    tune,
)

OUT = SWEEPS / "instability"
DENSE, MOE = "configs/experiments/instability/dense.toml", "configs/experiments/instability/moe.toml"
ADAMW_STD = ("model.parameterization=standard", "optim.name=adamw")  # AdamW default lr 0.004 (HyperP's tuned base)
ROUTER_ADAM = ("optim.router_on_sphere=false", "optim.adam_lr=0.1")  # router in Adam at 5× its lr


@dataclass(frozen=True)
class Spec:
    name: str
    config: str
    sets: tuple[str, ...]
    twin: str | None  # the stable run it differs from in one knob; None: it is a stable twin itself
    subset: str  # "tune" | "holdout"
    mode: str  # the failure mode it is driven to (or "stable")
    injected: int | None = None  # the step of an injected fault: its failure step, known in advance


SUITE = (
    Spec("adamw-x1", DENSE, ADAMW_STD + ("optim.lr=0.004",), None, "tune", "stable"),
    Spec("adamw-x10", DENSE, ADAMW_STD + ("optim.lr=0.04",), "adamw-x1", "tune", "lr ×10 (AdamW, standard)"),
    Spec("adamw-x30", DENSE, ADAMW_STD + ("optim.lr=0.12",), "adamw-x1", "holdout", "lr ×30 (AdamW, standard)"),
    Spec("adamw-x100", DENSE, ADAMW_STD + ("optim.lr=0.4",), "adamw-x1", "tune", "lr ×100 (AdamW, standard)"),
    Spec("muonh-x1", DENSE, ("optim.lr=0.02",), None, "holdout", "stable"),
    Spec("muonh-x10", DENSE, ("optim.lr=0.2",), "muonh-x1", "holdout", "lr ×10 (MuonH)"),
    Spec("muonh-x30", DENSE, ("optim.lr=0.6",), "muonh-x1", "tune", "lr ×30 (MuonH)"),
    Spec("muonh-x100", DENSE, ("optim.lr=2.0",), "muonh-x1", "holdout", "lr ×100 (MuonH)"),
    Spec("qknorm-on", DENSE, ADAMW_STD + ("optim.lr=0.02",), None, "holdout", "stable"),
    Spec("qknorm-off", DENSE, ADAMW_STD + ("optim.lr=0.02", "model.qk_norm=false"), "qknorm-on", "holdout",
         "attention logit growth (no qk-norm, AdamW lr ×5)"),
    Spec("router-aux", MOE, ROUTER_ADAM, None, "tune", "stable"),
    Spec("router-noaux", MOE, ROUTER_ADAM + ("model.moe.aux_weight=0",), "router-aux", "tune",
         "router collapse (no aux loss, no bias, router in Adam at 5× lr)"),
    Spec("badbatch-muonh", DENSE, ("optim.lr=0.02", "data.repeat_token_at=[80]"), "muonh-x1", "tune",
         "bad batch at step 80 (MuonH)", injected=80),
    Spec("badbatch10-muonh", DENSE, ("optim.lr=0.02", "data.repeat_token_at=[80,81,82,83,84,85,86,87,88,89]"),
         "muonh-x1", "holdout", "ten bad batches, steps 80–89 (MuonH)", injected=80),
    Spec("badbatch-adamw", DENSE, ADAMW_STD + ("optim.lr=0.004", "data.repeat_token_at=[80]"), "adamw-x1", "holdout",
         "bad batch at step 80 (AdamW)", injected=80),
    Spec("adamw-x10-bf16", DENSE, ADAMW_STD + ("optim.lr=0.04", "train.dtype=bfloat16"), "adamw-x10", "holdout",
         "lr ×10 under bf16 autocast (twin: the fp32 run)"),
)


def run_suite(names: list[str] | None) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for spec in SUITE:
        run_dir = OUT / spec.name
        if (names and spec.name not in names) or (run_dir / "done").exists():
            continue
        shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts over
        args = [sys.executable, "-m", "train", "--config", spec.config, "--out", str(run_dir)]
        for s in spec.sets:
            args += ["--set", s]
        print(f"[instability] {spec.name}: {' '.join(spec.sets)}", flush=True)
        rc = subprocess.run(args, cwd=ROOT, env=env).returncode
        (run_dir / "done").write_text(f"{rc}\n")  # a run stopped by its own failure is finished too


# ------------------------------------------------------------------------------------------------ report
# A loss 5 % above its running mean is a failure here: no stable run of the suite exceeds 3.5 %, and with grad clip
# 1.0 no run goes non-finite or 1.5× (the module's default) within 150 steps (benchmarks/results/instability.md).
RULE = FailureRule(loss_factor=1.05)
# Candidates for tuning (lower = more sensitive); the shipped default of each is among them.
GRID: dict[str, list[float]] = {"spike_sigma": [3.0, 4.0, 5.0, 6.0, 8.0], "z_growth": [1.5, 2.0, 3.0, 5.0, 10.0],
                                "rms_growth": [1.5, 2.0, 3.0, 5.0, 10.0], "outlier_frac": [0.001, 0.003, 0.01, 0.03],
                                "expert_max_mean": [1.5, 2.0, 2.5, 3.0, 4.0],
                                "attn_logit_max": [10.0, 15.0, 20.0, 30.0, 50.0, 100.0]}
ALARM_STARTS = [50, 30, 20, 10]  # ties keep the latest start (fewer early-training alarms)
# aux_below_min came from main after these runs: their metrics lack monitor/router/aux_over_min, so it is not shown.
SHOWN = tuple(f for f in FAMILIES if f != "aux_below_min")
# What each family's panel shows: the metrics its alarm reads (growth families as a ratio to the alarm baseline).
PANELS = {"loss_spike": ["train/loss"], "grad_norm_spike": ["train/grad_norm"], "z_growth": ["monitor/z_*"],
          "rms_growth": ["monitor/rms/*"], "outlier_frac": ["monitor/outlier_frac/*"],
          "expert_imbalance": ["monitor/expert_load/max_mean/*"], "attn_logit": ["monitor/attn_logit_max/*"]}


# What the tables below show (hand-written from them; the tables are regenerated by `report`).
FINDINGS = [
    "## Findings", "",
    "- **Most runs driven at a failure did not fail within 150 steps.** With grad clip 1.0 no run went non-finite "
    "or above 1.5× its running loss: AdamW ×10/×30/×100 (standard parameterization), bf16 autocast, qk-norm off and "
    "a single repeated-token batch all train on, more slowly. What fails: MuonH at lr ×10/×30/×100 (loss bumps 5–7 % "
    "above the running mean at steps 32–64, against ≤ 3.5 % in every stable run), router collapse (one layer's "
    "MaxVio ≈ 3 = all tokens on 2 of 8 experts from step 8) and the injected bad batches (step 80, known).",
    "- **The previous alarms warned before none of the failures.** The growth alarms compare with the value at "
    "`alarm_start` = 50, when the attention Z-values of the MuonH ×30/×100 runs had already grown 600–7,000× "
    "(z_attn fired 58 steps *after* the ×30 failure); the expert alarm fired 42 steps after the collapse (it reads the "
    "failure itself, and the collapse precedes any `alarm_start`). Starting the growth alarms earlier does not "
    "help: from step 10, three of the four stable runs grow more than 10× too (MLP branch RMS, router Z: they leave "
    "their small init), so with `alarm_start` 10 the tuning switches the growth alarms off.",
    "- **The max attention logit is the early warning.** An absolute alarm on `monitor/attn_logit_max` (new, "
    "`monitor.attn_logit_max`, not held back by `alarm_start`) warned the MuonH ×30 and ×100 failures 16 and 28 "
    "steps ahead at the tuned 100, and also ×10 (34 steps ahead) at 30; no stable run passes 21. It also fires in "
    "runs that did not (yet) fail: AdamW ×100, and at 30 qk-norm off.",
    "- **A bad batch has no precursor.** The repeated-token batch does not raise the loss (a tiny model predicts it "
    "about as well as text); its gradient norm jumps 3–7×, which the 6σ/8σ grad-norm rule catches at the step for "
    "AdamW (lead 0) but not for MuonH, whose early gradient norms (up to 160) widen the window's σ.",
    "- **Tuning** (on the tuning subset, checked on the held-out one) moved `spike_sigma` 6 → 8 (one grad-norm "
    "alarm in the stable MoE twin) and chose `attn_logit_max` = 100; the new defaults take the latter only (the loss "
    "spike rule is also the rollback trigger, and one event is thin evidence to loosen it). Held out: 1 of 4 "
    "failures warned (2 of 4 at 30), no false alarm in the held-out stable twins.",
    "- The runs were made before this branch merged main's ArchScale attention defaults for HyperP models (rope "
    "1e4, norm eps 1e-5, scale √128/head_dim); the presets pin the attention they ran with (rope 1e6, eps 1e-6, "
    "1/√head_dim), so `run` reproduces them up to other changes main made since. One seed per run; 150 steps.",
    "- Every alarm now pins the checkpoint before it as the rollback point (`Trainer.mark_rollback`), so a "
    "divergence that follows within `monitor.spike_window` steps rolls back to before the first warning.",
]


def _cell(outcome: Outcome, family: str) -> str:
    alarm = outcome.first.get(family)
    if alarm is None:
        return "–"
    where = alarm.metric.removeprefix("monitor/")
    if outcome.failure is None:
        return f"@{alarm.step} ({where})"  # a false alarm in a stable twin; in a run that did not fail, a signal
    lead = outcome.failure.step - alarm.step
    return f"{lead:+d} ({where})" if lead else f"0 ({where})"


def _table(specs: Sequence[Spec], outcomes: dict[str, Outcome]) -> list[str]:
    head = ["run", "subset", "failure mode", "failed at", *SHOWN, "warned"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for spec in specs:
        o = outcomes[spec.name]
        failed = f"{o.failure.step} ({o.failure.reason})" if o.failure else "no failure"
        if o.failure:
            warned = "yes" if o.warned else ("with it" if 0 in o.leads.values() else "**no**")
        elif spec.twin is None:
            warned = "stable: 0 alarms" if not o.first else f"**{len(o.first)} false**"
        else:
            warned = f"did not fail ({len(o.first)} alarm families)"
        lines.append("| " + " | ".join([spec.name, spec.subset, spec.mode, failed,
                                         *(_cell(o, f) for f in SHOWN), warned]) + " |")
    return lines


def _score(specs: Sequence[Spec], outcomes: dict[str, Outcome], subset: str) -> str:
    chosen = [outcomes[s.name] for s in specs if s.subset == subset]
    failed = [o for o in chosen if o.failure]
    stable = [o for o in chosen if o.failure is None and _spec(specs, o.name).twin is None]
    leads = [max(o.leads.values()) for o in failed if o.warned]
    return (f"{subset}: {sum(o.warned for o in failed)}/{len(failed)} failures warned before the failure step "
            f"(earliest lead {', '.join(map(str, sorted(leads))) or '–'} steps); false alarms in stable twins "
            f"{sum(o.false_alarm_count for o in stable)} ({len(stable)} runs)")


def _spec(specs: Sequence[Spec], name: str) -> Spec:
    return next(s for s in specs if s.name == name)


def _plot(spec: Spec, runs: dict[str, Records], outcome: Outcome, cfg: MonitorConfig, path: Path) -> None:
    """One PNG per run: each alarm family's metrics (the run in colour, its twin in grey), the failure step (red)
    and each family's first alarm (orange), under the tuned thresholds."""
    import fnmatch

    pyplot = plt()
    fig, axes = pyplot.subplots(2, 4, figsize=(18, 7))
    for ax, family in zip(axes.flat, SHOWN):
        for name, colour in ((spec.twin, "0.6"), (spec.name, None)):
            if name is None or name not in runs:
                continue
            names = sorted({m for _, ms in runs[name] for m in ms
                            if any(fnmatch.fnmatchcase(m, g) for g in PANELS[family])})
            for i, metric in enumerate(names):
                pts = [(s, ms[metric]) for s, ms in runs[name] if metric in ms]
                ax.plot(*zip(*pts), color=colour or f"C{i % 10}", lw=1, alpha=0.9,
                        label=metric.removeprefix("monitor/") if colour is None and len(names) <= 8 else None)
        if outcome.failure:
            ax.axvline(outcome.failure.step, color="red", lw=1.5, label=f"failure @{outcome.failure.step}")
        if family in outcome.first:
            ax.axvline(outcome.first[family].step, color="orange", ls="--", lw=1.5,
                       label=f"first alarm @{outcome.first[family].step}")
        if family in ("z_growth", "rms_growth", "grad_norm_spike", "attn_logit"):
            ax.set_yscale("log")
        ax.set_title(family, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(SHOWN):]:
        ax.axis("off")
    fig.suptitle(f"{spec.name}: {spec.mode} (grey: twin {spec.twin or '–'}; tuned alarm_start {cfg.alarm_start})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    pyplot.close(fig)


def machine_line() -> str:
    import torch

    from train.mfu import cpu_model

    cpu = cpu_model()
    return (f"{cpu}, {os.cpu_count()} cores shared with other jobs, torch {torch.__version__}, Python "
            f"{platform.python_version()}, 1 thread per run")


def _wall_minutes(specs: Sequence[Spec], out: Path) -> float:
    """From each run's config.toml (written at start) to its ``done`` marker."""
    return sum((out / s.name / "done").stat().st_mtime - (out / s.name / "config.toml").stat().st_mtime
               for s in specs) / 60


def report(specs: Sequence[Spec], out: Path) -> Path:
    done = [s for s in specs if (out / s.name / "done").exists()]
    runs = {s.name: step_records(out / s.name) for s in done}
    default = MonitorConfig()  # the shipped alarm settings (the presets only collect more often)
    previous = dataclasses.replace(default, attn_logit_max=0.0)  # before issue 26: no attention-logit alarm
    tuning = {n: r for n, r in runs.items() if _spec(specs, n).subset == "tune"}
    known = {s.name: Failure(s.injected, "injected") for s in done if s.injected is not None}
    stable = [s.name for s in done if s.twin is None]
    tuned = tune(tuning, GRID, ALARM_STARTS, base=default, rule=RULE, known=known, stable=stable)
    before = {o.name: o for o in evaluate(runs, previous, RULE, known)}
    after = {o.name: o for o in evaluate(runs, tuned, RULE, known)}
    variants = {"the new defaults": default,
                "the new defaults with `attn_logit_max = 30`": dataclasses.replace(default, attn_logit_max=30.0)}
    scored = {label: {o.name: o for o in evaluate(runs, cfg, RULE, known)} for label, cfg in variants.items()}
    figs = RESULTS / "instability"
    figs.mkdir(parents=True, exist_ok=True)
    for spec in done:
        _plot(spec, runs, after[spec.name], tuned, figs / f"{spec.name}.png")
    fields = ["alarm_start", *GRID]
    lines = [
        "# Do the monitors warn before a run fails? (issue 26)", "",
        f"Machine: {machine_line()}. Suite: {len(done)} runs of `configs/experiments/instability/` "
        f"(`python benchmarks/experiments/instability.py run`, then `report`), one at a time, "
        f"{_wall_minutes(done, out):.0f} min of training in all (start-up excluded).",
        "",
        f"Failure step: the first step with a non-finite loss, a loss above {RULE.loss_factor:g} × the mean of the "
        f"previous {RULE.window} losses, or the worst MoE layer's MaxVio above {RULE.maxvio_bound:g} for "
        f"{RULE.maxvio_steps} steps in a row (dated at the first); for an injected fault, its step. Lead = failure step − first alarm step of the family (> 0: before the "
        "failure, 0: with it, < 0: after it; monitors run every 2 steps). In a run that does not fail every alarm "
        "is a false alarm. Alarms are replayed offline on each run's logged metrics by the live alarm code "
        "(`train.monitors.lead_time.replay`), so a threshold change is measured without retraining.",
        "", *FINDINGS, "", "## Runs", "", "| run | base | overrides | twin | subset |", "|---|---|---|---|---|",
        *(f"| {s.name} | {Path(s.config).name} | `{' '.join(s.sets)}` | {s.twin or '(stable)'} | {s.subset} |"
          for s in specs),
        "", "## Previous defaults (no attention-logit alarm)", "",
        "Thresholds: " + ", ".join(f"`{f} = {getattr(previous, f):g}`" for f in fields) + ".", "",
        *_table(done, before), "", *(f"- {_score(done, before, sub)}" for sub in ("tune", "holdout")), "",
        "## Tuned on the tuning subset, checked on the held-out subset", "",
        "Per family, among the candidates that raise no alarm in the tuning subset's stable twins, the least "
        "sensitive one that still warns every tuning failure the most sensitive of them warns (the widest margin at "
        f"no loss of coverage), per `alarm_start` in {ALARM_STARTS} (`train.monitors.lead_time.tune`; candidates "
        + "; ".join(f"`{f}` {v}" for f, v in GRID.items()) + ").", "",
        "Tuned: " + ", ".join(f"`{f} = {getattr(tuned, f):g}`" for f in fields) + ".", "",
        *_table(done, after), "", *(f"- {_score(done, after, sub)}" for sub in ("tune", "holdout")), "",
        *(f"- With {label} ({', '.join(f'`{f} = {getattr(variants[label], f):g}`' for f in fields)}): "
          + "; ".join(_score(done, outcomes, sub) for sub in ("tune", "holdout")) for label, outcomes in scored.items()),
        "", "## Per-run plots", "",
        "Each run's metrics behind each alarm family (colour; its stable twin grey), the failure step (red) and the "
        "family's first alarm under the tuned thresholds (orange dashed).", "",
        *(f"![{s.name}](instability/{s.name}.png)" for s in done), "",
    ]
    path = RESULTS / "instability.md"
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("run", "report"))
    ap.add_argument("--only", nargs="*", help="run only these suite names")
    args = ap.parse_args()
    if args.what == "run":
        run_suite(args.only)
    else:
        print(report(SUITE, OUT))


if __name__ == "__main__":
    main()
