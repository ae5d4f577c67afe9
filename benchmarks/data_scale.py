"""Data pipeline at scale: start-up, memory and batch throughput vs dataset size (10M/100M/1B tokens) and shard count.

``python benchmarks/data_scale.py [--quick] [--dir DIR] [--keep] [--out FILE]``

Writes a synthetic uint16 token dataset (GPT-2-sized vocabulary, documents of ~1k tokens ending in EOS, a binary
document index per shard) under ``--dir`` — a pool of 120 shards of 2**23 tokens (1.007B tokens, 2.0 GB; the 10M and
100M datasets are its first 1 and 12 shards), plus the 100M tokens again as 1 shard and as 1,200 shards (0.4 GB) —
and deletes it afterwards unless ``--keep``. Then, for
each dataset, in a fresh process (so memory is the dataset's alone): ``prepare`` + sampler construction time, the
process's anonymous and file-backed RSS after start-up and after the batches, and tokens/s of ``batch_at`` at
seq 2048 × batch 16 (random windows across the whole dataset) on a first pass and on a repeat of the same batches,
and through the background ``Prefetcher`` with a simulated 20 ms training step (the wait per step is what the step
loop would lose to data). Writes ``benchmarks/results/data_scale.md`` (``data_scale_quick.md`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, ROOT, command, loadavg, machine, table, write

SHARD_TOKENS = 1 << 23
VOCAB, EOS = 50257, 50256
SEQ, BATCH = 2048, 16


def write_shard(path: Path, n_tokens: int, seed: int) -> None:
    """Random ids with an EOS closing each document (lengths ~ exponential, mean 1,000) and a .docs.npy index."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, EOS, n_tokens, dtype=np.uint16)
    ends = np.cumsum(rng.exponential(1000, n_tokens // 500).astype(np.int64) + 1)
    ends = ends[ends < n_tokens]
    tokens[ends - 1] = EOS
    tokens[-1] = EOS
    tokens.tofile(path)
    np.save(path.with_name(path.stem + ".docs.npy"), np.concatenate([[0], ends]).astype(np.int64))
    path.with_suffix(".json").write_text(json.dumps({"dtype": "uint16", "vocab_size": VOCAB, "eos_id": EOS,
                                                     "n_tokens": n_tokens}))


def _link(shards: list[Path], into: Path) -> Path:
    """A dataset directory of symlinks to some pool shards (with their sidecars and document indices)."""
    into.mkdir(parents=True)
    for shard in shards:
        for f in (shard, shard.with_suffix(".json"), shard.with_name(shard.stem + ".docs.npy")):
            (into / f.name).symlink_to(f)
    return into


def build(root: Path, pool_shards: int, shard_tokens: int) -> dict[str, str]:
    """Write the datasets; returns ``{label: data.path}``. Sizes 1 : 12 : 120 shards of the pool (10M/100M/1B)."""
    pool, one, many = root / "pool", root / "one", root / "many"
    for d in (pool, one, many):
        d.mkdir(parents=True)
    shards = [pool / f"s{i:05d}.bin" for i in range(pool_shards)]
    for i, path in enumerate(shards):
        write_shard(path, shard_tokens, i)
    mid = pool_shards // 10
    write_shard(one / "s00000.bin", mid * shard_tokens, 10_000)
    for i in range(mid * 100):
        write_shard(many / f"s{i:05d}.bin", shard_tokens // 100, 20_000 + i)
    return {"small (1 shard)": str(_link(shards[:1], root / "small")),
            f"mid ({mid} shards)": str(_link(shards[:mid], root / "mid")),
            f"large ({pool_shards} shards)": str(pool),
            "mid as 1 shard": str(one),
            f"mid as {mid * 100} shards": str(many)}


def rss_kb() -> tuple[int, int]:
    """(anonymous, file-backed) resident memory of this process in kB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["RssAnon"].split()[0]), int(fields["RssFile"].split()[0])


def measure(path: str, n_batches: int, step_s: float, seq: int) -> dict:
    """Start-up, memory and throughput of one dataset (run in a fresh process by the driver)."""
    import torch

    from train.data import DataConfig, Prefetcher, prepare

    torch.set_num_threads(1)
    anon0, file0 = rss_kb()
    t0 = time.perf_counter()
    data = prepare(DataConfig(path=path, seq_len=seq, val_fraction=0.01, prefetch=2, cache_dir="/nonexistent"))
    sampler = data.sampler(BATCH)
    sampler.batch_at(0)
    startup = time.perf_counter() - t0
    anon1, file1 = rss_kb()
    rates = []
    for _ in range(2):  # first pass: pages mapped (and read, if evicted) on first touch; repeat: mapped already
        t0 = time.perf_counter()
        for step in range(1, n_batches + 1):
            sampler.batch_at(step)
        rates.append(n_batches * BATCH * seq / (time.perf_counter() - t0))
    loader = Prefetcher(sampler, torch.device("cpu"), 2)
    loader.batch_at(0)
    waits = []
    for step in range(1, n_batches // 4 + 1):
        time.sleep(step_s)  # a training step that releases the GIL, as a GPU step does
        t0 = time.perf_counter()
        loader.batch_at(step)
        waits.append(time.perf_counter() - t0)
    loader.close()
    anon2, file2 = rss_kb()
    n_windows = sum(sampler.n_windows)
    return {"tokens": sum(len(a) for s in data.sources for a in s.train + s.val), "files": data.sources[0].stats["n_files"],
            "startup_s": startup, "anon_start_mb": (anon1 - anon0) / 1024, "anon_end_mb": (anon2 - anon0) / 1024,
            "file_end_mb": (file2 - file0) / 1024, "first_pass": rates[0], "repeat": rates[1], "wait_ms": 1e3 * float(np.median(waits)),
            "wait_max_ms": 1e3 * max(waits), "windows": n_windows}


def run_measure(path: str, n_batches: int, step_s: float, seq: int, in_process: bool) -> dict:
    if in_process:
        return measure(path, n_batches, step_s, seq)
    code = (f"import sys, json; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}]; import data_scale; "
            f"print(json.dumps(data_scale.measure({path!r}, {n_batches}, {step_s}, {seq})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny datasets, in-process (checks the script runs)")
    p.add_argument("--dir", default="/work/tmp-data-scale", help="where the synthetic dataset is written")
    p.add_argument("--keep", action="store_true", help="keep the dataset afterwards")
    p.add_argument("--batches", type=int, default=400)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    root = Path(args.dir)
    shard_tokens, pool, seq = (1 << 15, 10, 64) if args.quick else (SHARD_TOKENS, 120, SEQ)
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        datasets = build(root, pool, shard_tokens)
        written = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        build_s = time.perf_counter() - t0
        load_before = loadavg()
        results = {k: run_measure(d, 8 if args.quick else args.batches, 0.02, seq, args.quick) for k, d in datasets.items()}
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    rows = [[k, f"{r['tokens']:,}", r["files"], f"{r['windows']:,}", f"{r['startup_s'] * 1e3:.0f} ms",
             f"{r['anon_start_mb']:.1f}", f"{r['anon_end_mb']:.1f}", f"{r['file_end_mb']:.0f}",
             f"{r['first_pass'] / 1e6:.1f}M", f"{r['repeat'] / 1e6:.1f}M", f"{r['wait_ms']:.2f} / {r['wait_max_ms']:.1f}"]
            for k, r in results.items()]
    lines = [f"# Data pipeline at scale{' (quick)' if args.quick else ''}", "",
             f"`{command('data_scale.py', argv or [])}` — {machine()}; load average {load_before} before, "
             f"{loadavg()} after.", "",
             f"Synthetic uint16 dataset: {written / 1e9:.2f} GB written in {build_s:.0f} s, deleted afterwards. "
             f"Each row: {'in this process' if args.quick else 'a fresh process'}; seq {seq} × batch {BATCH}; {8 if args.quick else args.batches} batches; "
             "prefetch wait with a simulated 20 ms step.", "",
             *table(["dataset", "tokens", "files", "windows", "start-up", "anon MB (start)", "anon MB (end)",
                     "file-backed MB (end)", "tokens/s first pass", "tokens/s repeat", "wait/step ms (median / max)"],
                   rows)]
    write(Path(args.out) if args.out else RESULTS / f"data_scale{'_quick' if args.quick else ''}.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
