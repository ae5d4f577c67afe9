from __future__ import annotations

import pytest

from hyperp import OptimConfig
from hyperp.errors import ConfigError


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(lr=-1), "optim.lr=-1 must be > 0"),
        (dict(name="sgd"), "optim.name='sgd'"),
        (dict(adam_lr=0.0), "optim.adam_lr"),
        (dict(betas=(0.9, 1.0)), "optim.betas"),
        (dict(expert_sphere="both"), "optim.expert_sphere"),
        (dict(ns_coefficients="x"), "optim.ns_coefficients"),
        (dict(muon_adjust_lr="x"), "optim.muon_adjust_lr"),
        (dict(ns_steps=0), "optim.ns_steps"),
        (dict(momentum=1.0), "optim.momentum"),
        (dict(weight_decay=-0.1), "optim.weight_decay"),
        (dict(grad_clip=-1), "optim.grad_clip"),
        (dict(weight_decay_mode="decoupled"), "optim.weight_decay_mode='decoupled'"),
        (dict(wd_base_depth=0), "optim.wd_base_depth=0"),
        (dict(head_on_sphere="no"), "optim.head_on_sphere"),
        (dict(decay_head=1), "optim.decay_head"),
    ],
)
def test_bad_values_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        OptimConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_defaults_valid() -> None:
    cfg = OptimConfig()
    assert cfg.name == "muonh" and cfg.adam_lr is None and cfg.betas == (0.9, 0.95)


def test_each_optimizer_has_its_own_default_lr() -> None:
    """AdamW must not inherit the sphere optimizers' lr (0.02 is 5× AdamW's tiny-scale optimum, speedup.md)."""
    assert {n: OptimConfig(name=n).lr for n in ("muonh", "adamh", "muon", "adamw")} == {
        "muonh": 0.02, "adamh": 0.02, "muon": 0.012, "adamw": 0.004}
    assert OptimConfig(name="adamw", lr=0.01).lr == 0.01  # an explicit lr wins
