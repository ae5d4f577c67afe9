"""One optimizer object over several inner optimizers (MuonH for matrices + AdamH for the head + Adam for the rest).

The training loop sees a single object: ``step``, ``zero_grad``, a flat ``param_groups`` list (the *same* dicts
as the inner optimizers', so ``group["lr"] = group["base_lr"] * mult`` reaches them), and a state_dict that
round-trips every inner optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hyperp.errors import CheckpointError


class CompositeOptimizer:
    """Steps every inner optimizer in order; groups are concatenated in the same order."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise ValueError("CompositeOptimizer needs at least one optimizer")
        self.optimizers: list[torch.optim.Optimizer] = list(optimizers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, Any]:
        merged: dict[torch.Tensor, Any] = {}
        for opt in self.optimizers:
            merged.update(opt.state)
        return merged

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kinds": [type(opt).__name__ for opt in self.optimizers],
            "optimizers": [opt.state_dict() for opt in self.optimizers],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        kinds = [type(opt).__name__ for opt in self.optimizers]
        if state_dict.get("kinds") != kinds:
            raise CheckpointError(
                f"optimizer checkpoint holds {state_dict.get('kinds')}, this run builds {kinds}"
            )
        for opt, sd in zip(self.optimizers, state_dict["optimizers"], strict=True):
            opt.load_state_dict(sd)

    def __repr__(self) -> str:
        inner = ", ".join(f"{type(o).__name__}({len(o.param_groups)} groups)" for o in self.optimizers)
        return f"CompositeOptimizer({inner})"
