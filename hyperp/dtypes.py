"""The one precision rule shared by the model, the MoE router and the optimizers."""

from __future__ import annotations

import torch


def at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16/fp16 (reductions and softmaxes need its range and mantissa), fp64 kept for fp64.

    Keeping fp64 end to end is what lets the numerical tests compare two reduction orders (one process vs data
    parallel, grad accumulation splits) with a bound that does not depend on the machine.
    """
    return torch.promote_types(dtype, torch.float32)
