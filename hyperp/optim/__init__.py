"""Hyperball optimizers (MuonH, AdamH), the Muon baseline, and the composite wrapper (SPEC §1–§2)."""

from __future__ import annotations

from hyperp.optim.adamh import AdamH
from hyperp.optim.composite import CompositeOptimizer
from hyperp.optim.config import OptimConfig
from hyperp.optim.muonh import MuonH
from hyperp.optim.newton_schulz import newton_schulz
from hyperp.optim.sphere import fixed_norm_update, frobenius_norm

__all__ = [
    "AdamH", "CompositeOptimizer", "MuonH", "OptimConfig", "fixed_norm_update", "frobenius_norm", "newton_schulz",
]
