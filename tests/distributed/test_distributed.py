"""torch.distributed on CPU (gloo, world size 2, spawned from pytest): DDP and FSDP2 equal one process.

One spawn runs every distributed job of a world size (process start-up dominates on a 2-core machine; the runs are
built in ``conftest.py``, the harness is ``harness.py``): 5-step trainings for {ddp, fsdp} × {adamw, muonh, adamh} ×
{dense, moe}, each with batch 2 per rank × 2 accumulated micro-batches (gradient sync on the last one only), a run
stopped after 3 steps for the resume test, and the global aux loss check; the expert-parallel jobs of
``test_expert_parallel.py`` run in the same spawn. The single-process references run in the pytest process with
the same global batch of 8 windows: dense as one batch of 8 (so accumulation and sharding are both checked against
no accumulation), MoE as 2 micro-batches of 4 (the global aux loss's gradient on an early micro-batch uses the
counts seen so far — documented semantics — so the micro-batch split, not the rank split, must match).

Why float64, and where the tolerances come from
-----------------------------------------------
Data parallelism changes only the *order* of reductions (gradients summed over 2 ranks × micro-batches instead of
one batch; GEMMs of another shape block their sums differently). In fp32 that order is machine dependent (thread
count, AVX2 vs AVX-512 kernels) and Adam turns it into visible weight differences: an element whose gradient is a
near-cancelling sum of per-token terms (rare embedding rows) carries a rounding error that is not small relative
to the gradient itself, and Adam's m/(√v+ε) normalizes that error up to a step of size ~lr. Measured in fp32: up to
8e-6 here, 9.9e-5 (relative 1.3e-2) on an AMD EPYC — no tolerance is a property of the code.

In fp64 (``train.dtype = "float64"``: parameters, activations, router, losses, optimizer states and Newton–Schulz
all fp64) a reduction of n terms in any order differs by at most n·u·Σ|t| with u = 1.1e-16. The largest reductions
here are sums over 256 tokens × 64 features, so a gradient entry differs by ≲ 2e-12·Σ|t|; Adam can amplify that at
most to lr·2·|δg|/ε per step (ε = 1e-8), i.e. ≲ 1e-12 for lr ≤ 0.02 and per-element Σ|t| ≲ 1e-2 — seven orders of
magnitude below fp32's 6e-8 rounding, so cancellation can no longer reach the tolerance on any machine.
Measured over every run here: losses and gradient norms within 7e-15 relative, weights within 1.1e-13 absolute
(7e-11 relative on near-zero entries). Hence ``LOSS_RTOL = 1e-10`` for per-step losses, aux/z values and gradient
norms, and ``|Δw| ≤ 1e-10 + 1e-8·|w|`` for weights: ≥ 1,000× above anything rounding produced, ≥ 1,000× below what
the bugs below produce.

What the comparison catches (each tried once by breaking the code on purpose; each made these tests fail):
- gradients summed instead of averaged across ranks: the gradient norm doubles (relative 1.0 ≫ 1e-10);
- aux counts not all-reduced: the global aux loss and the router gradient differ at 1e-3 … 1e-1;
- a micro-batch dropped or seen twice, or a rank's shard overlapping another's: step-1 losses differ at ~1e-2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.distributed.harness import (ARCHS, OPTIMS, PARALLEL, STEPS, W_ATOL, assert_close_weights,
                                       assert_same_series, final_weights, run_sets)
from tests.distributed.jobs import aux_problem
from tests.runs import argv, assert_one_line_error

WORLD = 2


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("optim", OPTIMS)
@pytest.mark.parametrize("parallel", PARALLEL)
def test_data_parallel_equals_one_process(runs: dict[str, Path], parallel: str, optim: str, arch: str) -> None:
    ref, got = runs[f"ref-{optim}-{arch}"], runs[f"{parallel}-{optim}-{arch}"]
    assert_same_series(ref, got)
    assert_close_weights(final_weights(ref), final_weights(got))


def test_ddp_reduces_once_per_step(runs: dict[str, Path]) -> None:
    """Gradients are all-reduced on the last micro-batch only: 2 accumulated micro-batches cost as many DDP
    reductions as 1 (that the accumulated result equals one process is test_data_parallel_equals_one_process)."""
    for rank in range(2):
        once = int((runs["root"] / f"reductions-ddp-muonh-moe-noaccum-rank{rank}.txt").read_text())
        accumulated = int((runs["root"] / f"reductions-ddp-muonh-moe-rank{rank}.txt").read_text())
        assert once > 0 and once % STEPS == 0 and accumulated == once, (once, accumulated)


def test_only_rank0_writes_logs(runs: dict[str, Path]) -> None:
    lines = (runs["fsdp-muonh-moe"] / "metrics.jsonl").read_text().splitlines()
    assert sum('"train/loss"' in line for line in lines) == STEPS  # one record per step, not one per rank
    path = runs["fsdp-muonh-moe"] / "checkpoints" / f"step_{STEPS:06d}"
    manifest = json.loads((path / "manifest.json").read_text())
    files = manifest.pop("files")
    assert manifest == {"format": "dcp", "step": STEPS, "world_size": WORLD}
    assert sorted(files) == sorted(p.name for p in path.iterdir() if p.name != "manifest.json")  # every file hashed
    assert {"trainer.pt", ".metadata", "__0_0.distcp", "__1_0.distcp"} <= set(files)


def test_global_aux_equals_concatenated_batch(runs: dict[str, Path]) -> None:
    from moe.losses import GlobalBalance

    routers, x = aux_problem()
    balance = GlobalBalance()
    aux = balance.aux([r(x) for r in routers])
    aux.backward()
    for rank in range(WORLD):
        got = torch.load(runs["root"] / f"aux_rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["aux"], aux.detach(), rtol=0, atol=1e-6)  # P all-reduced: global value
        torch.testing.assert_close(got["value"], balance.value(), rtol=0, atol=1e-6)
        for g, r in zip(got["grads"], routers, strict=True):
            torch.testing.assert_close(g, r.weight.grad, rtol=0, atol=1e-6)


def test_save_at_world_2_resume_at_world_1(runs: dict[str, Path], text_corpus: Path) -> None:
    from train.__main__ import main

    split = runs["split"]
    sets = run_sets(text_corpus, runs["cache"], "moe", "muonh", 1, **{"train.parallel": '"fsdp"'})
    assert main(argv(sets, split, "--resume")) == 0  # no torchrun: one plain process reads the DCP shards
    assert_same_series(runs["ref-muonh-moe"], split)
    assert_close_weights(final_weights(runs["ref-muonh-moe"]), final_weights(split))


def test_convert_to_single_file(runs: dict[str, Path], tmp_path: Path) -> None:
    from train import checkpoint
    from train.convert import main

    assert main(["--run", str(runs["fsdp-adamh-dense"]), "--out", str(tmp_path / "single")]) == 0
    state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "single")[-1])
    assert state["trainer"]["step"] == STEPS and (tmp_path / "single" / "tokenizer").is_dir()
    assert_close_weights(state["model"], final_weights(runs["ref-adamh-dense"]))
    model, _ = checkpoint.load_model_from_run(tmp_path / "single")
    assert model.config.n_layers == 2


def test_generate_and_export_read_a_sharded_run(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    """No conversion needed: the sharded checkpoint is gathered in this process (weights equal the DCP shards')."""
    from transformers import AutoModelForCausalLM

    from train import checkpoint
    from train.export import main as export
    from train.generate import main as generate

    run = runs["fsdp-adamh-dense"]
    model, tokenizer = checkpoint.load_model_from_run(run, step=STEPS)  # an fp32 model of the fp64 run
    for name, ref in final_weights(runs["ref-adamh-dense"]).items():  # the one-process run, to fp32 rounding (2⁻²⁴)
        torch.testing.assert_close(model.state_dict()[name].double(), ref, rtol=2**-23, atol=W_ATOL)
    assert export(["--run", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'hf'}\n"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    ids = torch.tensor([tokenizer.encode("the model routes every token")])
    with torch.no_grad():
        assert (hf(ids).logits - model(ids).logits).abs().max().item() <= 1e-4
    prompt = tokenizer.encode("the")
    greedy = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=3)[0, len(prompt):].tolist()
    greedy = greedy[:greedy.index(tokenizer.eos_id)] if tokenizer.eos_id in greedy else greedy  # we print up to eos
    assert generate(["--run", str(run), "--checkpoint", str(STEPS), "--prompt", "the", "--max-new-tokens", "3",
                     "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "the" + tokenizer.decode(greedy) + "\n"  # transformers' greedy ids


def test_selection_bias_under_ddp_equals_one_process(runs: dict[str, Path]) -> None:
    """The bias is updated from the step's global (all-reduced) counts, so it equals the one-process bias."""
    ref, got = final_weights(runs["ref-muonh-moebias"]), final_weights(runs["ddp-muonh-moebias"])
    biases = [k for k in ref if k.endswith("selection_bias")]
    assert biases and all(ref[k].abs().sum() > 0 for k in biases)
    for k in biases:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)  # ±γ_b sign steps of identical counts: exact
    assert_close_weights(ref, got)


def test_sharded_checkpoint_is_verified_and_names_the_config_difference(
    runs: dict[str, Path], text_corpus: Path, tmp_path: Path, capsys
) -> None:
    from train import checkpoint
    from train.__main__ import main

    run = tmp_path / "run"
    shutil.copytree(runs["fsdp-adamh-dense"], run)
    sets = run_sets(text_corpus, runs["cache"], "dense", "adamh", 1)
    capsys.readouterr()
    rc = main(argv([*sets, "model.hidden=64", "model.mlp_hidden=128"], run, "--resume"))
    assert_one_line_error(rc, capsys.readouterr().err, "different model config", "model.hidden: checkpoint 32, this run 64")
    shard = checkpoint.list_checkpoints(run)[-1] / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    rc = main(argv(sets, run, "--resume"))
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning: ")]
    assert_one_line_error(rc, "\n".join(err), "no valid checkpoint", f"{shard} is corrupt or truncated")
