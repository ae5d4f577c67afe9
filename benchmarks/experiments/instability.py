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
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from _exp import ROOT, SWEEPS

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


SUITE = (
    Spec("adamw-x1", DENSE, ADAMW_STD + ("optim.lr=0.004",), None, "tune", "stable"),
    Spec("adamw-x10", DENSE, ADAMW_STD + ("optim.lr=0.04",), "adamw-x1", "tune", "lr ×10 (AdamW, standard)"),
    Spec("adamw-x30", DENSE, ADAMW_STD + ("optim.lr=0.12",), "adamw-x1", "holdout", "lr ×30 (AdamW, standard)"),
    Spec("muonh-x1", DENSE, ("optim.lr=0.02",), None, "holdout", "stable"),
    Spec("muonh-x10", DENSE, ("optim.lr=0.2",), "muonh-x1", "holdout", "lr ×10 (MuonH)"),
    Spec("muonh-x30", DENSE, ("optim.lr=0.6",), "muonh-x1", "tune", "lr ×30 (MuonH)"),
    Spec("qknorm-on", DENSE, ADAMW_STD + ("optim.lr=0.02",), None, "holdout", "stable"),
    Spec("qknorm-off", DENSE, ADAMW_STD + ("optim.lr=0.02", "model.qk_norm=false"), "qknorm-on", "holdout",
         "attention logit growth (no qk-norm, AdamW lr ×5)"),
    Spec("router-aux", MOE, ROUTER_ADAM, None, "tune", "stable"),
    Spec("router-noaux", MOE, ROUTER_ADAM + ("model.moe.aux_weight=0",), "router-aux", "tune",
         "router collapse (no aux loss, no bias, router in Adam at 5× lr)"),
    Spec("badbatch-muonh", DENSE, ("optim.lr=0.02", "data.repeat_token_at=[80]"), "muonh-x1", "tune",
         "bad batch at step 80 (MuonH)"),
    Spec("badbatch-adamw", DENSE, ADAMW_STD + ("optim.lr=0.004", "data.repeat_token_at=[80]"), "adamw-x1", "holdout",
         "bad batch at step 80 (AdamW)"),
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("run", "report"))
    ap.add_argument("--only", nargs="*", help="run only these suite names")
    args = ap.parse_args()
    if args.what == "run":
        run_suite(args.only)
    else:
        from instability_report import report  # noqa: PLC0415

        report(SUITE, OUT)


if __name__ == "__main__":
    main()
