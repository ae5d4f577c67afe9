"""The step loop shared by MuonH and AdamH: per-parameter updates over 2-D matrices and stacked (E, out, in) experts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from hyperp.errors import ConfigError


class MatrixOptimizer(torch.optim.Optimizer):
    """Validates that every parameter is a matrix or a stack of matrices; subclasses implement :meth:`_update` (or batch parameters in :meth:`_step_group`)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim not in (2, 3):
                    raise ConfigError(
                        f"{type(self).__name__} parameter of shape {tuple(p.shape)} must be 2-D or 3-D (E, out, in)"
                    )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._prepare_group(group)
            self._step_group(group, [p for p in group["params"] if p.grad is not None])
        return loss

    def _prepare_group(self, group: dict[str, Any]) -> None:
        """Hook run once per group before its parameters are updated."""

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """Update the parameters of ``group`` that have a gradient (one at a time unless a subclass batches them)."""
        for p in params:
            self._update(p, group)

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        raise NotImplementedError
