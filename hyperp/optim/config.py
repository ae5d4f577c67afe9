"""Optimizer settings (one typed dataclass; the train config embeds it as ``[optim]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hyperp.errors import ConfigError, check_choices
from hyperp.optim.muonh import AdjustLr
from hyperp.optim.newton_schulz import CoefficientSet
from hyperp.optim.sphere import ExpertSphere

OptimizerName = Literal["muonh", "adamh", "muon", "adamw"]
# Each optimizer's own default peak lr: one shared default silently gave AdamW a sphere-sized lr. MuonH/AdamH: the
# angular step of the tiny presets (HyperP's η₀ = 1.4e-2 at d8); Muon (match-RMS adjusted) and AdamW: the optima of
# the tiny-scale sweep (benchmarks/results/speedup.md: Muon 1.2e-2; AdamW 4e-3 on MoE … 1.2e-2 on dense).
DEFAULT_LRS: dict[str, float] = {"muonh": 0.02, "adamh": 0.02, "muon": 0.012, "adamw": 0.004}
WeightDecayMode = Literal["coupled", "independent"]


@dataclass
class OptimConfig:
    """Which optimizer and its hyperparameters.

    - ``lr``: peak lr of the sphere/matrix groups at the HyperP base scale (η₀ ≈ 1.4e-2 for MuonH at d8; a run's
      lr is derived by :mod:`hyperp.transfer`). None → the optimizer's default (``DEFAULT_LRS``).
    - ``adam_lr``: None → the Adam group (embedding, norms) uses the same lr as the sphere groups (ArchScale);
      a number → its own lr at the base scale (Marin, ≈ lr/4.33), transferred by the same HyperP factor.
    - ``weight_decay``: baselines only (AdamW, Muon); the sphere groups have none.
    - ``weight_decay_mode``: ``"coupled"`` (torch: each step ``W ← W·(1 − lr_t·wd)``, so the decay grows with the
      peak lr) or ``"independent"`` (``W ← W·(1 − wd·lr_t/η_peak)``: the decay follows the schedule but not the
      peak lr; Wortsman et al. arXiv 2309.14322, ArchScale ``pretrain.py`` ``v2scale`` runs, which set the group's
      decay to ``wd / peak_lr``). Independent values are per-step fractions (≈ 1e-4), not AdamW's 0.1.
    - ``wd_base_depth``: d₀ of ArchScale's Muon depth rule ``wd ← wd·d₀/L`` (``pretrain.py``, "weight decay
      scaling for second order optimizers", arXiv 2512.05620); None: no depth factor.
    - ``decay_head``: whether the baselines decay the untied lm_head (ArchScale's Muon runs do not: its lm_head
      sits in the no-decay vector group).
    - ``head_on_sphere``: MuonH/AdamH keep the untied lm_head on the AdamH sphere (ArchScale, Marin); False puts
      it in plain Adam without decay at the sphere lr (an ablation: the sphere pins ‖W_head‖ = 0.02·√(V·d), a
      small logit range at small width, SPEC §7).
    - ``muon_adjust_lr``: Muon baseline's shape-based lr. torch.optim.Muon's default (None) is ``"original"``
      (√max(1, out/in)); ArchScale's Muon baseline uses ``"spectral_norm"`` (√(out/in)). Our default is
      ``"match_rms_adamw"`` (0.2·√max(out, in), Moonlight) because the baseline's non-matrix groups run AdamW at
      the same lr, so matching AdamW's update RMS makes that shared lr meaningful.
    - ``grad_clip``: global grad-norm clip applied by the training loop (ArchScale: 1.0); 0 disables.
    """

    name: OptimizerName = "muonh"
    lr: float | None = None
    adam_lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    momentum: float = 0.95
    ns_steps: int = 5
    ns_coefficients: CoefficientSet = "torch"
    expert_sphere: ExpertSphere = "per_expert"
    router_on_sphere: bool = True
    head_on_sphere: bool = True
    muon_adjust_lr: AdjustLr = "match_rms_adamw"
    weight_decay_mode: WeightDecayMode = "coupled"
    wd_base_depth: int | None = None
    decay_head: bool = True
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        check_choices(self, "optim")
        if self.lr is None:
            self.lr = DEFAULT_LRS[self.name]
        _check(self.lr > 0, f"optim.lr={self.lr} must be > 0")
        _check(self.adam_lr is None or self.adam_lr > 0, f"optim.adam_lr={self.adam_lr} must be > 0")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"optim.betas={self.betas} must be two values in [0, 1)",
        )
        _check(self.eps > 0, f"optim.eps={self.eps} must be > 0")
        _check(self.weight_decay >= 0, f"optim.weight_decay={self.weight_decay} must be >= 0")
        _check(0 <= self.momentum < 1, f"optim.momentum={self.momentum} must be in [0, 1)")
        _check(isinstance(self.ns_steps, int) and self.ns_steps >= 1, f"optim.ns_steps={self.ns_steps} must be >= 1")
        _check(self.grad_clip >= 0, f"optim.grad_clip={self.grad_clip} must be >= 0 (0 disables clipping)")
        for name in ("router_on_sphere", "head_on_sphere", "decay_head"):
            _check(isinstance(getattr(self, name), bool), f"optim.{name}={getattr(self, name)!r} must be a bool")
        _check(
            self.wd_base_depth is None or (isinstance(self.wd_base_depth, int) and self.wd_base_depth >= 1),
            f"optim.wd_base_depth={self.wd_base_depth!r} must be a positive integer (or unset)",
        )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
