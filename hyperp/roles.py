"""Parameter roles: how a model tells the optimizer what each parameter is.

Models declare the role of every parameter they own with :func:`declare`; :func:`collect` walks a module tree and
returns ``{qualified_name: Role}``. :mod:`hyperp.groups` decides the optimizer group from the role alone, so no code
ever guesses from parameter names. An undeclared parameter is an error, never a silent default.
"""

from __future__ import annotations

from enum import StrEnum

from torch import nn

_ATTR = "_hyperp_roles"


class Role(StrEnum):
    MATRIX = "matrix"  # hidden 2-D weight: attention q/k/v/o, dense MLP, shared expert
    EXPERT = "expert"  # stacked expert weights (E, out, in): E matrices
    ROUTER = "router"  # MoE router (E, hidden)
    EMBEDDING = "embedding"  # token embedding (tied or not)
    HEAD = "head"  # untied lm_head
    VECTOR = "vector"  # norm gains, biases, any 1-D parameter


def declare(module: nn.Module, **roles: Role) -> None:
    """Declare the role of ``module``'s own (direct) parameters, e.g. ``declare(self, weight=Role.MATRIX)``."""
    table: dict[str, Role] = dict(getattr(module, _ATTR, {}))
    for name, role in roles.items():
        if not isinstance(role, Role):
            raise TypeError(f"role for {type(module).__name__}.{name} must be a Role, got {role!r}")
        table[name] = role
    object.__setattr__(module, _ATTR, table)


def collect(model: nn.Module) -> dict[str, Role]:
    """Return the declared role of every parameter of ``model``, by qualified name (shared parameters once)."""
    roles: dict[str, Role] = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        table: dict[str, Role] = getattr(module, _ATTR, {})
        for p_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            fqn = f"{mod_name}.{p_name}" if mod_name else p_name
            if p_name not in table:
                raise KeyError(
                    f"parameter {fqn!r} of {type(module).__name__} has no declared role; "
                    "call hyperp.roles.declare(module, name=Role.X) in the module's __init__"
                )
            roles[fqn] = table[p_name]
    return roles
