"""``train.compile = true``: the training forward (and its backward) through ``torch.compile``; the optimizer, the
evaluation and everything that reads the model's state run eagerly on the same module.

Compiled code does not see forward hooks registered after it was traced (dynamo skips hook guards by default):
the monitors' activation collector arms hooks for one forward on monitor steps, with one of them on the model itself.
A forward that finds a hook on the model therefore runs eagerly — monitor steps cost what they cost without compile
and report the same statistics; hooks present from the start (the expert-load counters) are traced in.
"""

from __future__ import annotations

import torch
from torch import nn


class CompiledForward(nn.Module):
    """Calls ``torch.compile(model)``, or ``model`` itself while a forward hook is armed on it. Parameters and the
    state dict stay ``model``'s (it is this module's only child; the compiled wrapper is not registered)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.__dict__["_compiled"] = torch.compile(model)  # not a submodule: no second copy of the parameter names

    def forward(self, *args, **kwargs):
        hooked = bool(self.model._forward_hooks or self.model._forward_pre_hooks)
        return (self.model if hooked else self._compiled)(*args, **kwargs)
