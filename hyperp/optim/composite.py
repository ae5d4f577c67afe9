"""One optimizer over several inner optimizers (MuonH for matrices + AdamH for the head + Adam for the rest).

It is a real :class:`torch.optim.Optimizer` (as torchtitan's ``OptimizersContainer``, which calls
``Optimizer.__init__`` for the same reason), so step hooks (``register_step_pre_hook``: the MoE bias update),
``state_dict`` and torch's LR schedulers work on it. ``param_groups`` are always the inner optimizers' current group
dicts and ``state`` a read-only view of their states — live views, because an inner ``load_state_dict`` (ours, or
torch.distributed.checkpoint's ``set_state_dict``) replaces the inner groups and state objects. A schedule or an
LR scheduler that writes ``group["lr"]`` therefore reaches the optimizer that steps the group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch


class CompositeOptimizer(torch.optim.Optimizer):
    """Steps every inner optimizer in order; groups are concatenated in the same order."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise ValueError("CompositeOptimizer needs at least one optimizer")
        self.optimizers: list[torch.optim.Optimizer] = []  # empty views while Optimizer.__init__ checks the params
        params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
        super().__init__(params, {})  # hooks, profiling and the LR-scheduler protocol of torch.optim
        self.optimizers = list(optimizers)

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        """Only ``Optimizer.__init__`` assigns (its flat group of every parameter); the inner optimizers own the groups."""

    @property  # type: ignore[override]
    def state(self) -> Mapping[torch.Tensor, Any]:
        return _StateView([opt.state for opt in self.optimizers])

    @state.setter
    def state(self, state: Any) -> None:
        """Only ``Optimizer.__init__`` assigns (an empty dict); the inner optimizers own the state."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
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

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {
            "kinds": [type(opt).__name__ for opt in self.optimizers],
            "optimizers": [opt.state_dict() for opt in self.optimizers],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        kinds = [type(opt).__name__ for opt in self.optimizers]
        if state_dict.get("kinds") != kinds:
            raise ValueError(f"optimizer state holds {state_dict.get('kinds')}, this run builds {kinds}")
        for opt, sd in zip(self.optimizers, state_dict["optimizers"], strict=True):
            opt.load_state_dict(sd)

    def __repr__(self) -> str:
        inner = ", ".join(f"{type(o).__name__}({len(o.param_groups)} groups)" for o in self.optimizers)
        return f"CompositeOptimizer({inner})"


class _StateView(Mapping[torch.Tensor, Any]):
    """The inner optimizers' per-parameter state as one mapping. Not a ChainMap: the inner states are defaultdicts,
    and looking a parameter up in one that does not own it would add an empty entry there."""

    def __init__(self, states: list[Mapping[torch.Tensor, Any]]) -> None:
        self._states = states

    def __getitem__(self, param: torch.Tensor) -> Any:
        for state in self._states:
            if param in state:
                return state[param]
        raise KeyError(param)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for state in self._states:
            yield from state

    def __len__(self) -> int:
        return sum(len(state) for state in self._states)
