"""Will the run fit? An estimate of its memory before anything is allocated, and one line when it does not.

Parameters and optimizer state are counted exactly: the model is built on the ``meta`` device (shapes, no storage),
placed in optimizer groups by role (:func:`hyperp.param_groups`, as training does) and each group's state is what
its optimizer allocates at the first step (``hyperp/optim``: MuonH and Muon a momentum buffer, AdamH and Adam two
moments and a step counter, the sphere groups a radius per matrix or per expert). Gradients: one per parameter.

Activations (what a micro-batch's forward keeps for backward) are an estimate per token, counted from the tensors the
forward saves (``models/qwen3.py``, ``moe/``): 2 hidden-size tensors per RMSNorm, 5 query-size and 4 key/value-size
tensors per attention (projections, q/k norm, RoPE, the attention output and its reshape; a fused attention kernel
keeps no T × T matrix), 4 per SwiGLU intermediate (gate, up, silu, product: 4·top_k for routed experts, plus their
gathered inputs and outputs), and two fp32 vocabulary-size tensors (the log-softmax the loss keeps, and the logits'
gradient that backward creates while everything else is still held). The
Korthikanti et al. 2022 count (``34·s·b·h`` bytes per layer in fp16 for a 4h MLP) is the same bookkeeping.
``tests/train/test_memory.py`` holds it within a factor of 2 of the bytes the autograd graph actually saves.

The limit is the memory available now: on CPU ``MemAvailable`` (and the cgroup's ``memory.max`` when lower, as in
a container), on CUDA the device's free memory. Under FSDP parameters, gradients and optimizer state are divided
by the world size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from hyperp import param_groups
from models.qwen3 import build_model
from train.config import RunConfig
from train.errors import OutOfMemoryError

GiB = 2**30
_ADAM_STEP_BYTES = 4  # torch.optim.Adam and AdamH keep the step count as a float32 scalar tensor


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int  # bytes, per rank
    gradients: int
    optimizer: int
    activations: int  # one micro-batch's forward, kept for backward

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        parts = ", ".join(f"{name} {getattr(self, name) / GiB:.2f}"
                          for name in ("parameters", "gradients", "optimizer", "activations"))
        return f"{self.total / GiB:.2f} GiB ({parts})"


def _dtype_bytes(cfg: RunConfig) -> int:
    return 8 if cfg.train.dtype == "float64" else 4  # fp32 master weights, fp64 for numerical runs


def _state_elements(kind: str, p: torch.Tensor, expert_sphere: str) -> int:
    """Elements of float state the optimizer ``kind`` allocates for ``p`` at its first step (hyperp/optim)."""
    radius = p.shape[0] if p.ndim == 3 and expert_sphere == "per_expert" else 1  # one norm per sphere
    if kind == "muonh":
        return p.numel() + radius
    if kind == "muon":
        return p.numel()
    if kind == "adamh":
        return 2 * p.numel() + radius
    return 2 * p.numel()  # adam / adamw (their float32 step counter is counted separately)


def weight_memory(cfg: RunConfig) -> tuple[int, int]:
    """(parameter bytes, optimizer-state bytes) of the whole model, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = build_model(cfg.model)
    width = _dtype_bytes(cfg)
    params = sum(p.numel() for p in model.parameters()) * width
    state = 0
    for group in param_groups(model, cfg.optim, depth=cfg.model.n_layers):  # depth: optim.wd_base_depth
        for p in group["params"]:
            state += _state_elements(group["kind"], p, cfg.optim.expert_sphere) * width
            state += _ADAM_STEP_BYTES if group["kind"] in ("adamh", "adam", "adamw") else 0
    return params, state


def activation_elements_per_token(cfg: RunConfig) -> tuple[int, int]:
    """(elements per token kept by the decoder blocks, fp32 elements per token for the logits)."""
    m = cfg.model
    q, kv = m.n_heads * m.resolved_head_dim, m.n_kv_heads * m.resolved_head_dim
    attention = 2 * m.hidden + 5 * q + 4 * kv
    if m.gated_attn:  # the ungated output (for the product's backward) and the per-head gate before/after σ
        attention += q + 2 * m.n_heads
    per_layer = []
    for layer in range(m.n_layers):
        if m.is_moe_layer(layer):
            e = m.moe
            mlp = 2 * m.hidden + 3 * e.num_experts + 3 * e.top_k * m.hidden + 4 * e.top_k * e.expert_hidden
            if e.shared_expert:
                mlp += 4 * e.shared_hidden + m.hidden
        else:
            mlp = 2 * m.hidden + 4 * m.mlp_hidden
        per_layer.append(attention + mlp)
    if cfg.train.activation_checkpointing:  # each block keeps its input; one block is recomputed at a time
        blocks = m.n_layers * m.hidden + max(per_layer)
    else:
        blocks = sum(per_layer)
    return blocks + 3 * m.hidden, 2 * m.vocab_size  # final norm + head input; log-softmax and the logits' gradient


def estimate(cfg: RunConfig, world_size: int = 1, bf16: bool = False) -> MemoryEstimate:
    """Bytes per rank for ``cfg`` (``bf16``: activations under bf16 autocast)."""
    params, state = weight_memory(cfg)
    shards = world_size if cfg.train.parallel == "fsdp" else 1
    tokens = cfg.train.batch_size * cfg.data.seq_len
    blocks, logits = activation_elements_per_token(cfg)
    act_bytes = 2 if bf16 else _dtype_bytes(cfg)
    activations = tokens * (blocks * act_bytes + logits * max(4, _dtype_bytes(cfg)))
    return MemoryEstimate(params // shards, params // shards, state // shards, activations)


# ------------------------------------------------------------------------------------------------ the limit


def _meminfo_available() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def _cgroup_available() -> int | None:
    """memory.max − memory.current of this process's cgroup (v2), None when unlimited or unknown."""
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().split("\n")[0].split("::", 1)[1]
        root = Path("/sys/fs/cgroup") / rel.lstrip("/")
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text())
    except (OSError, IndexError, ValueError):
        return None


def available_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what they are) the run can still allocate on ``device``."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"free memory of {torch.cuda.get_device_name(device)} ({total / GiB:.1f} GiB total)"
    options = [(n, what) for n, what in ((_meminfo_available(), "available RAM"),
                                         (_cgroup_available(), "the cgroup's memory limit")) if n is not None]
    return min(options) if options else (1 << 62, "unknown")


def check_fits(cfg: RunConfig, device: torch.device, world_size: int = 1, bf16: bool = False) -> MemoryEstimate:
    """The estimate, or OutOfMemoryError naming it and the limit when it does not fit."""
    need = estimate(cfg, world_size, bf16)
    limit, what = available_memory(device)
    if need.total > limit:
        raise OutOfMemoryError(
            f"this run needs about {need.describe()} per process on {device.type}, more than the {limit / GiB:.2f} "
            f"GiB of {what}; {KNOBS} (--skip-memory-check starts anyway)")
    return need


KNOBS = ("lower train.batch_size (train.grad_accum keeps the global batch), data.seq_len or the model size "
         "(model.hidden, model.n_layers, model.moe.num_experts), or set train.activation_checkpointing=true")


def is_out_of_memory(err: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, CPU's ``DefaultCPUAllocator: can't allocate``, MemoryError."""
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err))


def out_of_memory_message(err: BaseException) -> str:
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
    return f"out of memory ({detail}); {KNOBS}"
