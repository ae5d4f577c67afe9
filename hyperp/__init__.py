"""hyperp: the Hyperball method, independent of any model — optimizers on the Frobenius sphere (MuonH, AdamH),
role-based parameter groups, and HyperP hyperparameter transfer (see SPEC §1–§3)."""

from __future__ import annotations

from hyperp.groups import build_optimizer, param_groups
from hyperp.optim import AdamH, CompositeOptimizer, MuonH, OptimConfig
from hyperp.roles import Role

__all__ = ["AdamH", "CompositeOptimizer", "MuonH", "OptimConfig", "Role", "build_optimizer", "param_groups"]
