"""Dense → MoE upcycling that keeps the dense model's function at step 0 and the sphere's radius semantics.

Megatron-core (``upcycling_utils.py``) copies the dense MLP into every expert and starts the router at random; under
the standard gate the output is then unchanged (Σ g_i = 1), but under SqrtGate it is scaled by Σ√g_i ∈ [1, √k],
which depends on the token. Here the k experts that a token selects always form one *group* that rebuilds the dense
MLP exactly:

- Slices (He et al. 2024, "Upcycling LLMs into MoE", virtual groups): SwiGLU acts on each hidden unit separately, so
  the dense MLP of width I is the sum of its s = I / expert_hidden slices (rows of gate/up, columns of down). Expert
  j of group g holds slice j mod s; a group of k experts (s | k) holds every slice k/s times.
- Router: the k rows of a group are equal (each group's row is a fresh router row, so the router has the norm of a
  freshly initialized one), so a group's k logits tie, top-k (stable) takes one whole group and its gate weights
  are exactly 1/k. The rows of a group differ as soon as their experts do (their gradients differ).
- Scale: with gate multiplier m = gate(1/k) (√(1/k) under SqrtGate, 1/k under the standard gate), the group's output
  is (k/s)·m·c·dense for expert down projections scaled by c, so c = s/(k·m) (:func:`down_scale`): under SqrtGate
  c = s/√k (√k for slices, 1/√k for copies), under the standard gate c = s. The MoE block's output, hence its RMS,
  equals the dense MLP's at step 0.

Radii. MuonH/AdamH take R = ‖W‖_F at a parameter's first step and keep it (SPEC §1), so every upcycled matrix keeps
the norm it is given here; with ``expert_sphere = "per_expert"`` each expert slice is its own sphere:
- gate/up of an expert: the norm of its dense slice (a copy: the dense radius; a slice of I/s rows: ≈ R_dense/√s);
- down of an expert: c·‖dense columns‖ ≈ c·R_down/√s. For the HyperP family (fine-grained slices, s = k, SqrtGate)
  c = √k and this is ≈ R_down — the radius of a freshly initialized expert down projection of width I/k
  (U(±1/√fan_in) init: ‖W‖ = √(out/3) whatever fan_in), so the upcycled experts sit on the spheres a from-scratch
  MoE of the same shape would use, and one lr moves them by the same angle.

Limitation: copies of one slice inside one group (s < k) get identical inputs, gates and gradients, so they stay
identical; use slices (``expert_hidden = mlp_hidden / top_k``) to get k distinct experts per token.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch

from hyperp.errors import ConfigError
from models.config import ModelConfig
from models.qwen3 import MLP, Qwen3, build_model
from moe.block import MoEBlock

# Fields that may differ between the dense model and its upcycled MoE: everything else must match.
MOE_FIELDS = ("moe", "decoder_sparse_step", "mlp_only_layers")


def check_upcyclable(dense: ModelConfig, target: ModelConfig) -> int:
    """The number of slices s = mlp_hidden / expert_hidden; ConfigError naming the first field that forbids it."""
    if dense.moe is not None:
        raise ConfigError("upcycling starts from a dense model; this checkpoint's model already has [model.moe]")
    moe = target.moe
    if moe is None:
        raise ConfigError("the target config has no [model.moe]: nothing to upcycle into")
    for f in dataclasses.fields(ModelConfig):
        if f.name not in MOE_FIELDS and getattr(dense, f.name) != getattr(target, f.name):
            raise ConfigError(f"model.{f.name}: the dense model has {getattr(dense, f.name)!r}, the target config "
                              f"{getattr(target, f.name)!r} (only the MoE settings may differ)")
    if moe.shared_expert:
        raise ConfigError("moe.shared_expert: upcycling into a shared expert is not supported (set it to false)")
    if dense.mlp_hidden % moe.expert_hidden:
        raise ConfigError(f"moe.expert_hidden={moe.expert_hidden} must divide model.mlp_hidden={dense.mlp_hidden} "
                          "(each expert is a slice of the dense MLP)")
    slices = dense.mlp_hidden // moe.expert_hidden
    if moe.top_k % slices:
        raise ConfigError(f"moe.top_k={moe.top_k} must be a multiple of mlp_hidden/expert_hidden={slices}: the k "
                          "experts of a token must hold every slice of the dense MLP")
    if moe.num_experts % moe.top_k:
        raise ConfigError(f"moe.num_experts={moe.num_experts} must be a multiple of moe.top_k={moe.top_k} "
                          "(experts form groups of top_k that each rebuild the dense MLP)")
    return slices


def down_scale(target: ModelConfig, slices: int) -> float:
    """c = s / (k·m), m = gate(1/k): a group of k experts, each slice k/s times, then sums to the dense MLP."""
    k = target.moe.top_k
    m = math.sqrt(1.0 / k) if target.moe.gate == "sqrt" else 1.0 / k
    return slices / (k * m)


@torch.no_grad()
def upcycle(dense: Qwen3, target: ModelConfig, seed: int = 0) -> Qwen3:
    """An MoE model of config ``target`` whose output equals ``dense``'s (up to rounding) before any training.

    Every non-MLP weight (and every MLP of a layer that stays dense) is copied; ``seed`` draws the router rows.
    """
    slices = check_upcyclable(dense.config, target)
    if slices < target.moe.top_k:
        copies = target.moe.top_k // slices
        warnings.warn(f"moe.expert_hidden={target.moe.expert_hidden} gives {copies} identical copies of each slice "
                      "per group of top_k experts; they get identical gradients and stay identical "
                      f"(expert_hidden = mlp_hidden / top_k = {dense.config.mlp_hidden // target.moe.top_k} gives "
                      "top_k distinct experts)", stacklevel=2)
    with torch.random.fork_rng(devices=[]):  # the caller's random stream stays untouched
        torch.manual_seed(seed)
        moe_model = build_model(target).to(dtype=next(dense.parameters()).dtype)
    # Everything but the MLPs of MoE layers has the same name and shape in both models.
    moe_model.load_state_dict(dense.state_dict(), strict=False)
    scale = down_scale(target, slices)
    for block, dense_block in zip(moe_model.layers, dense.layers, strict=True):
        if isinstance(block.mlp, MoEBlock):
            _fill_experts(block.mlp, dense_block.mlp, slices, scale)
    return moe_model


def _fill_experts(moe: MoEBlock, mlp: MLP, slices: int, scale: float) -> None:
    k, width = moe.cfg.top_k, moe.cfg.expert_hidden
    experts, router = moe.experts, moe.router.weight
    for e in range(moe.cfg.num_experts):
        rows = slice((e % k % slices) * width, (e % k % slices + 1) * width)
        experts.w_gate[e].copy_(mlp.gate_proj.weight[rows])
        experts.w_up[e].copy_(mlp.up_proj.weight[rows])
        experts.w_down[e].copy_(scale * mlp.down_proj.weight[:, rows])
        router[e].copy_(router[e - e % k])  # the group's first (fresh) row: the group's logits tie
