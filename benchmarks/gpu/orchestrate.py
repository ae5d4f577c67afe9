"""The prepared GPU run: every GPU check and benchmark of issues 15/16 in one budgeted go (start: ``run.sh``).

``bash benchmarks/gpu/run.sh [--dry-run] [--list] [--only STAGE ...] [--budget SECONDS] [--rebuild]
[--extra NAME SECONDS COMMAND]``

On a fresh GPU machine (no network; torch preinstalled; the kit in ``.gpu/`` and the token cache in ``.gpu-data/``
carried along, see README "GPU"): the MegaBlocks build runs in the background while the stages that do not need it
use the GPU; then the rest. Each stage is its own process with its own timeout (its budget, cut to what is left of
``--budget``); a stage that fails, times out or is skipped is recorded with the exact error and the run goes on.
After every stage the output folder ``$OUT`` (default ``gpu-out``) is rewritten with three files, so a run killed
from outside still returns everything finished so far:

- ``results.json``: per stage status, seconds, command, error tail and the stage's own JSON results;
- ``results.md``: a summary table and each stage's report;
- ``artifacts.tar.gz``: every stage's log, report and files (``$STAGE_DIR``), and the MegaBlocks build logs.

``--dry-run`` (CPU, CI): checks the carried folders and the total size sent (≤ 64 MiB), that every command's
program exists, that every Python entry point imports, parses its exact arguments and loads its configs and token
caches offline — without running anything heavy — and prints the device-tool invocation.
``--extra NAME SECONDS COMMAND`` adds a stage (``{py}``, ``{work}``, ``{stage_dir}`` are substituted), e.g. issue 17's
runs; ``--only`` selects stages by name (extras included).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIT, DATA = ".gpu", ".gpu-data"  # git-ignored folders the device tool must carry (its `carry` argument)
SPEEDUP_DATA = ".gpu-large"  # the speedup suite's token cache (the 'large' corpus at bpe-16k, ~40 MB)
KIT_FILES = ("build_megablocks_gpu.sh", "megablocks-0.10.0.tar.gz", "grouped_gemm-0.3.0.tar.gz",
             "stanford_stk-0.7.1-py3-none-any.whl", "cu13-blas-sparse-solver-headers.tgz")
SEND_LIMIT = 64 * 2**20  # what the device tool sends per run: working tree + carried paths
DEFAULT_BUDGET = 500  # seconds for the whole run; the device call gets a timeout of 540 s
RESERVE = 10  # seconds kept for the final bundle
MIN_STAGE = 20  # a stage with less time than this left is skipped, not started
BUILD_LOGS = ("/tmp/build_gg.log", "/tmp/build_mb.log")  # written by the kit's build script
ARTIFACT_FILE_LIMIT = 16 * 2**20
DEVICE_COMMAND = "bash benchmarks/gpu/run.sh"
DEVICE_TIMEOUT = 540


@dataclass(frozen=True)
class Stage:
    name: str
    budget: int  # its timeout in seconds (cut to what is left of the run's budget)
    argv: tuple[str, ...]  # {py}, {work}, {stage_dir} are substituted
    what: str
    needs_build: bool = False  # waits for the MegaBlocks build (whatever its outcome)
    module: str | None = None  # Python entry point whose build_parser()/check() the dry run calls
    background: bool = False


def _bench(name: str, script: str, *args: str) -> tuple[str, ...]:
    return ("{py}", script, *args, "--out", f"{{work}}/{name}.md", "--json", f"{{work}}/{name}.json")


def stage_list(kit: str = KIT, data: str = DATA) -> tuple[Stage, ...]:
    """The stages in run order; ``kit`` and ``data`` are the carried folders (relative to the repository root)."""
    data_set = f'data.cache_dir="{data}"'
    return (
        Stage("build", 240, ("bash", f"{kit}/build_megablocks_gpu.sh", "{py}"),
              "build stk + grouped_gemm + MegaBlocks offline from the kit, smoke-test them on the GPU",
              background=True),
        Stage("train_dense", 150, _bench("train_dense", "benchmarks/train_step_gpu.py", "--presets", "d12", "--profile",
                                         "--set", data_set),
              "training step tokens/s, MFU, peak memory: d12 dense (769M)", module="train_step_gpu"),
        Stage("optim", 120, _bench("optim", "benchmarks/optim_step_gpu.py"),
              "optimizer step: MuonH vs our Muon vs torch.optim.Muon vs AdamW", module="optim_step_gpu"),
        Stage("fsdp", 150, _bench("fsdp", "benchmarks/gpu/fsdp_step.py", "--set", data_set),
              "one-GPU FSDP2 step vs the plain step (fp32 exact, bf16 timed)", module="fsdp_step"),
        Stage("doctor", 60, ("{py}", "-m", "train.doctor", "--cache-dir", data),
              "what the machine can run after the build", needs_build=True, module="train.doctor"),
        Stage("parity", 150, _bench("parity", "benchmarks/gpu/parity.py"),
              "bf16 parity: loop / torch / megablocks on one routing, vs transformers", needs_build=True,
              module="parity"),
        Stage("moe_layer", 180, _bench("moe_layer", "benchmarks/moe_layer_gpu.py", "--profile"),
              "MoE layer fwd+bwd H=2048 E=64 k=8 I=1408, 32k tokens vs transformers and dense", needs_build=True,
              module="moe_layer_gpu"),
        Stage("train_moe", 240, _bench("train_moe", "benchmarks/train_step_gpu.py", "--presets", "d12-moe",
                                       "--backends", "megablocks", "torch", "--profile", "--set", data_set),
              "training step tokens/s, MFU, peak memory: d12-moe (2.36B, 770M active)", needs_build=True,
              module="train_step_gpu"),
        Stage("pytest_gpu", 180, ("{py}", "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"),
              "the test suite's @pytest.mark.gpu tests", needs_build=True, module="pytest"),
        Stage("ep_dispatch", 90, _bench("ep_dispatch", "benchmarks/ep_dispatch_gpu.py"),
              "expert-parallel dispatch code path (world size 1, NCCL) vs no EP, MoE layer fwd+bwd", needs_build=True,
              module="ep_dispatch_gpu"),
    )


def speedup_stages(kit: str = KIT, data: str = SPEEDUP_DATA) -> tuple[Stage, ...]:
    """Issue 17: the three arms at equal tokens, the report, then the lr check of arm (a) if time is left."""
    del kit  # dense runs: no MegaBlocks build

    def arm(name: str, budget: int) -> Stage:
        return Stage(name, budget, _bench(name, "benchmarks/gpu/gpu_speedup.py", "arm", name, "--data", data,
                                          "--run-dir", "{stage_dir}"), f"speedup arm {name}", module="gpu_speedup")

    def report(name: str) -> Stage:
        return Stage(name, 40, _bench(name, "benchmarks/gpu/gpu_speedup.py", "report", "--runs", "{work}"),
                     "val-loss curves, token-equivalent speedups, monitor maxima", module="gpu_speedup")

    return (arm("muonh", 140), arm("muon", 140), arm("adamw", 140), report("report"),
            arm("muonh_x0.5", 140), arm("muonh_x2", 140), report("report_lr"))


# suite -> (its stages, the preset whose token cache it carries, the carried cache folder)
SUITES = {"checks": (stage_list, "configs/d12.toml", DATA),
          "speedup": (speedup_stages, "configs/experiments/gpu/d6.toml", SPEEDUP_DATA)}


@dataclass
class Result:
    name: str
    what: str
    status: str = "pending"
    rc: int | None = None
    seconds: float = 0.0
    timeout_s: float = 0.0
    command: str = ""
    error_tail: str = ""
    result: object = None  # the stage's own JSON results


# ------------------------------------------------------------------------------------------------ running


def command_of(stage: Stage, py: str, work: Path) -> list[str]:
    subs = {"{py}": py, "{work}": str(work), "{stage_dir}": str(work / stage.name)}
    argv = []
    for arg in stage.argv:  # plain replacement: an extra command may contain other braces (${VAR})
        for key, value in subs.items():
            arg = arg.replace(key, value)
        argv.append(arg)
    return argv


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Running:
    """A stage's process group with its log, deadline and result record."""

    def __init__(self, stage: Stage, py: str, work: Path, timeout: float) -> None:
        self.stage, self.work = stage, work
        self.log = work / f"{stage.name}.log"
        (work / stage.name).mkdir(parents=True, exist_ok=True)
        argv = command_of(stage, py, work)
        self.result = Result(stage.name, stage.what, "running", command=shlex.join(argv), timeout_s=round(timeout))
        env = dict(os.environ, STAGE_DIR=str(work / stage.name))
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def finish(self) -> Result:
        """Wait until the process ends or its deadline passes (then kill its group); record the outcome."""
        try:
            rc = self.proc.wait(timeout=max(0.0, self.deadline - time.monotonic()))
            self.result.status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            _kill(self.proc)
            rc = self.proc.returncode
            self.result.status = f"timeout after {self.result.timeout_s} s"
        r = self.result
        r.rc, r.seconds = rc, round(time.monotonic() - self.start, 1)
        if rc != 0:
            r.error_tail = _tail(self.log)
        try:
            r.result = json.loads((self.work / f"{self.stage.name}.json").read_text())
        except (OSError, ValueError):  # none written, or cut short by the kill
            pass
        return r


def _kill(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def megablocks_importable(py: str) -> bool:
    try:
        probe = subprocess.run([py, "-c", "import megablocks.ops, grouped_gemm.ops"], cwd="/tmp", capture_output=True,
                               timeout=120)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def run_all(stages: list[Stage], args: argparse.Namespace, out: Path) -> list[Result]:
    work = Path(tempfile.mkdtemp(prefix="gpu-run-"))  # logs, reports, stage files: bundled into $OUT
    py = sys.executable  # run.sh starts this file with the GPU venv's python: the stages use the same
    t0 = time.monotonic()
    deadline = t0 + args.budget - RESERVE
    results: list[Result] = []
    build: Running | None = None

    def record(r: Result) -> None:
        results.append(r)
        bundle(results, args, out, work, time.monotonic() - t0)
        print(f"[{time.monotonic() - t0:5.0f} s] {r.name}: {r.status} ({r.seconds} s)", flush=True)

    for stage in stages:
        if stage.background:
            if not args.rebuild and megablocks_importable(py):
                record(Result(stage.name, stage.what, "skipped: megablocks already imports (--rebuild forces)"))
            else:
                build = Running(stage, py, work, min(stage.budget, deadline - time.monotonic()))
            continue
        if stage.needs_build and build is not None:
            record(build.finish())
            build = None
        left = deadline - time.monotonic()
        if left < MIN_STAGE:
            record(Result(stage.name, stage.what, f"skipped: out of time ({left:.0f} s left of --budget)"))
            continue
        record(Running(stage, py, work, min(stage.budget, left)).finish())
    if build is not None:
        record(build.finish())
    return results


# ------------------------------------------------------------------------------------------------ output


def bundle(results: list[Result], args: argparse.Namespace, out: Path, work: Path, elapsed: float) -> None:
    """Rewrite the three output files from everything finished so far."""
    out.mkdir(parents=True, exist_ok=True)
    header = {"command": " ".join([DEVICE_COMMAND, shlex.join(args.argv)]).strip(), "python": sys.executable,
              "budget_s": args.budget, "elapsed_s": round(elapsed, 1), "gpu": _nvidia_smi()}
    (out / "results.json").write_text(json.dumps(header | {"stages": [r.__dict__ for r in results]}, indent=1,
                                                 default=str))
    (out / "results.md").write_text(markdown(header, results, work))
    with tarfile.open(out / "artifacts.tar.gz", "w:gz") as tar:  # big files (checkpoints) stay behind
        tar.add(work, arcname="work", filter=lambda info: None if info.size > ARTIFACT_FILE_LIMIT else info)
        for log in BUILD_LOGS:
            if Path(log).exists():
                tar.add(log, arcname=f"build/{Path(log).name}")


@functools.cache
def _nvidia_smi() -> str:
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        return proc.stdout.strip() or proc.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"nvidia-smi unavailable: {err}"


def _verdict(r: Result) -> str:
    if isinstance(r.result, dict):
        for key in ("pass", "fp32_match"):
            if key in r.result:
                return "pass" if r.result[key] else "**FAIL**"
    return ""


def markdown(header: dict, results: list[Result], work: Path) -> str:
    lines = ["# GPU run", "", f"- command: `{header['command']}`", f"- GPU: {header['gpu']}",
             f"- python: {header['python']}; budget {header['budget_s']} s; elapsed {header['elapsed_s']} s", "",
             "| stage | status | seconds | check | what |", "| --- | --- | ---: | --- | --- |"]
    lines += [f"| {r.name} | {r.status} | {r.seconds} | {_verdict(r)} | {r.what} |" for r in results]
    overlapped = [r.name for r in results[:next((i for i, r in enumerate(results) if r.name == "build"), 0)]]
    if overlapped and results[len(overlapped)].command:  # the build ran, in the background of these stages
        lines += ["", f"The MegaBlocks build (CPU: two nvcc compiles) ran alongside {', '.join(overlapped)}."]
    for r in results:
        report = work / f"{r.name}.md"
        lines += ["", f"## {r.name}: {r.status}", "", f"`{r.command}`" if r.command else ""]
        if report.exists():  # its headings two levels down, under this stage's
            lines += ["", re.sub(r"^(#+) ", r"\1## ", report.read_text(), flags=re.M)]
        elif r.command:  # stages without a report of their own: the end of their output
            log = work / f"{r.name}.log"
            lines += ["", "```", _tail(log, 60 if r.name == "doctor" else 25), "```"]
        if r.error_tail and report.exists():
            lines += ["", "```", r.error_tail, "```"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ dry run


def sent_bytes(carry: tuple[str, ...]) -> tuple[int, dict[str, int]]:
    """Bytes the device tool sends: tracked + untracked-not-ignored files, plus the carried paths."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    tree = sum(os.lstat(ROOT / f).st_size for f in listed if f and os.path.lexists(ROOT / f))
    parts = {"working tree": tree}
    for c in carry:
        path = ROOT / c
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
        parts[c] = sum(p.stat().st_size for p in files)
    return sum(parts.values()), parts


def check_carry(kit: str | None, data: str) -> list[str]:
    """The carried folders exist, the kit (when the suite builds) is complete and its script parses, and everything
    sent fits."""
    problems = []
    missing = [f for f in KIT_FILES if not (ROOT / kit / f).is_file()] if kit else []
    if missing:
        problems.append(f"{kit}/ lacks {', '.join(missing)} (make gpu-prep copies the kit)")
    elif kit and subprocess.run(["bash", "-n", str(ROOT / kit / KIT_FILES[0])], capture_output=True).returncode != 0:
        problems.append(f"{kit}/{KIT_FILES[0]} does not parse (bash -n)")
    if not (ROOT / data).is_dir():
        problems.append(f"{data}/ is missing (make gpu-prep prepares it)")
    total, parts = sent_bytes(carried(kit, data))
    print("sent to the GPU machine: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in parts.items())
          + f"; total {total / 2**20:.1f} MiB of {SEND_LIMIT / 2**20:.0f}")
    if total > SEND_LIMIT:
        problems.append(f"{total / 2**20:.1f} MiB would be sent, more than {SEND_LIMIT / 2**20:.0f} MiB")
    return problems


def check_stage(stage: Stage) -> str | None:
    """None when the stage's program exists and its entry point imports, parses its arguments and passes check()."""
    argv = command_of(stage, sys.executable, Path("/tmp/gpu-dry-run"))
    program = argv[0]
    if shutil.which(program) is None and not Path(program).exists():
        return f"program {program} not found"
    script = next((a for a in argv[1:] if a.endswith((".py", ".sh"))), None)
    if script is not None and not (ROOT / script).is_file():
        return f"{script} not found"
    if stage.module is None:
        return None
    try:
        module = importlib.import_module(stage.module)
        if hasattr(module, "build_parser"):
            rest = argv[argv.index("-m") + 2:] if "-m" in argv else argv[2:]
            args = module.build_parser().parse_args(rest)
            if hasattr(module, "check"):
                module.check(args)
    except SystemExit as err:
        return f"{stage.module}: its arguments do not parse (exit {err.code})"
    except Exception as err:  # noqa: BLE001 - the dry run reports whatever a stage would hit
        return f"{stage.module}: {type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
    return None


@contextlib.contextmanager
def as_on_the_gpu_machine() -> Iterator[None]:
    """Offline (a cache not carried must fail here, not download) in the repository root (relative carried paths
    resolve as there), with the entry points importable; the caller's environment and cwd are restored."""
    from train.downloads import OFFLINE_ENV

    old_env, old_cwd = os.environ.get(OFFLINE_ENV), os.getcwd()
    os.environ[OFFLINE_ENV] = "1"
    os.chdir(ROOT)
    for sub in ("benchmarks", "benchmarks/gpu"):
        if str(ROOT / sub) not in sys.path:
            sys.path.insert(0, str(ROOT / sub))
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if old_env is None:
            del os.environ[OFFLINE_ENV]
        else:
            os.environ[OFFLINE_ENV] = old_env


def carried(kit: str | None, data: str) -> tuple[str, ...]:
    return (kit, data) if kit else (data,)


def dry_run(stages: list[Stage], args: argparse.Namespace) -> int:
    kit = args.kit if any(s.background for s in stages) else None
    problems = check_carry(kit, args.data)
    with as_on_the_gpu_machine():
        for stage in stages:
            problem = check_stage(stage)
            print(f"  {stage.name:<12} {'ok' if problem is None else 'PROBLEM: ' + problem}  ({stage.budget} s) "
                  f"{shlex.join(command_of(stage, 'PY', Path('WORK')))}")
            if problem is not None:
                problems.append(f"{stage.name}: {problem}")
    command = DEVICE_COMMAND + ("" if args.suite == "checks" else f" --suite {args.suite}")
    print("device tool call: " + json.dumps({"command": command, "carry": list(carried(kit, args.data)),
                                             "timeout_s": DEVICE_TIMEOUT}))
    for p in problems:
        print(f"PROBLEM: {p}")
    print("dry run: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 0 if not problems else 1


# ------------------------------------------------------------------------------------------------ preparation


def prepare_carry(kit_from: Path, cache: Path, suite: str, kit: str = KIT, data: str | None = None) -> None:
    """Here, with network: the kit copied to .gpu/, and the token cache the suite's preset reads prepared in ``cache``
    and copied to its carried folder in the same layout, with what reading it offline needs (the corpus-trained BPE,
    or the qwen tokenizer archive)."""
    from train.config import load_config
    from train.data import prepare
    from train.downloads import ARCHIVES
    from train.data.prepare import _cache_layout
    from train.tokenizer import bpe_path, bpe_vocab_size

    _, preset, default_data = SUITES[suite]
    dest = ROOT / (data or default_data)
    shutil.rmtree(ROOT / kit, ignore_errors=True)
    shutil.copytree(kit_from, ROOT / kit)
    for path in (ROOT / kit).rglob("*"):
        path.chmod(path.stat().st_mode | 0o200)  # the shared kit is read-only; the copy must be replaceable
    cfg = load_config(ROOT / preset, [f'data.cache_dir="{cache}"']).data
    prepared = prepare(cfg)
    shutil.rmtree(dest, ignore_errors=True)
    (source,) = prepared.sources
    shutil.copytree(source.directory, dest / source.directory.relative_to(cache))
    if bpe_vocab_size(cfg.tokenizer) is not None:  # the BPE trained on this corpus, under the corpus's key
        tokenizer = bpe_path(cfg.tokenizer, cache, _cache_layout(cfg, cfg.source_list(), cache)[0]).parent
        shutil.copytree(tokenizer, dest / tokenizer.relative_to(cache))
    elif cfg.tokenizer == "qwen":
        (dest / "raw").mkdir()
        shutil.copy2(cache / "raw" / ARCHIVES["qwen"].filename, dest / "raw")  # already there: prepare fetched it
    print(f"{kit}/ from {kit_from}; {dest.name}/ from {source.directory}")


# ------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu/run.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="check everything on CPU, run nothing heavy")
    parser.add_argument("--list", action="store_true", help="print the stages and exit")
    parser.add_argument("--only", nargs="+", default=None, metavar="STAGE", help="run only these stages")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="seconds for the whole run")
    parser.add_argument("--rebuild", action="store_true", help="build the kit even if megablocks already imports")
    parser.add_argument("--extra", nargs=3, action="append", default=[], metavar=("NAME", "SECONDS", "COMMAND"),
                        help="an extra stage; {py} {work} {stage_dir} are substituted")
    parser.add_argument("--out-dir", default=os.environ.get("OUT") or "gpu-out", help="default $OUT, else gpu-out")
    parser.add_argument("--kit", default=KIT, help="the carried kit folder, relative to the repository root")
    parser.add_argument("--suite", choices=list(SUITES), default="checks",
                        help="checks: issues 15/16 (default); speedup: issue 17's optimizer comparison")
    parser.add_argument("--data", default=None,
                        help=f"the carried token-cache folder, relative to the repository root (default {DATA}, "
                             f"{SPEEDUP_DATA} for --suite speedup)")
    parser.add_argument("--prepare", nargs=2, metavar=("KIT_FROM", "CACHE"),
                        help="here, with network: copy the kit into .gpu/ and the GPU presets' token cache (prepared "
                             "in CACHE, e.g. data) into .gpu-data/ (make gpu-prep)")
    return parser


def selected(args: argparse.Namespace) -> list[Stage]:
    extras = [Stage(name, int(seconds), tuple(shlex.split(cmd)), f"extra: {cmd}") for name, seconds, cmd in args.extra]
    stages = [*SUITES[args.suite][0](args.kit, args.data), *extras]
    if args.only is None:
        return stages
    unknown = set(args.only) - {s.name for s in stages}
    if unknown:
        raise SystemExit(f"error: unknown stage(s) {', '.join(sorted(unknown))}; stages: "
                         f"{', '.join(s.name for s in stages)}")
    return [s for s in stages if s.name in args.only]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.data = args.data or SUITES[args.suite][2]
    if args.prepare:
        prepare_carry(Path(args.prepare[0]), Path(args.prepare[1]), args.suite, args.kit, args.data)
        return 0
    stages = selected(args)
    if args.list:
        for s in stages:
            print(f"{s.name:<12} {s.budget:>4} s  {s.what}")
        return 0
    if args.dry_run:
        return dry_run(stages, args)
    results = run_all(stages, args, Path(args.out_dir).resolve())
    print(f"results in {Path(args.out_dir).resolve()}: results.json, results.md, artifacts.tar.gz")
    return 0 if all(r.status == "ok" or r.status.startswith("skipped: megablocks") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
