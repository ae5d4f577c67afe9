from __future__ import annotations

import dataclasses
import math

import pytest

from hyperp.errors import ConfigError
from hyperp.transfer import (
    BASE,
    Scale,
    archscale_param_count,
    derive,
    family_scale,
    residual_multiplier,
    transfer_factor,
)


def test_four_times_tokens() -> None:
    target = dataclasses.replace(BASE, tokens=4 * BASE.tokens)
    d = derive(BASE, target, base_lr=0.014)
    assert d.lr == pytest.approx(0.014 * 4**-0.32, rel=1e-12)
    assert d.depth_factor == 1 and d.batch_factor == 1


def test_depth_batch_width_granularity() -> None:
    target = Scale(width=4096, depth=32, tokens=BASE.tokens, batch_tokens=4 * BASE.batch_tokens, granularity=8)
    assert transfer_factor(BASE, target) == pytest.approx(math.sqrt(8 / 32) * 2.0, rel=1e-12)
    assert residual_multiplier(32) == pytest.approx(1 / 8)
    assert derive(BASE, target, 0.01).residual_multiplier == pytest.approx(1 / 8)


def test_spec_relative_lr_table() -> None:
    spec = {8: 1.0, 12: 0.59, 16: 0.40, 20: 0.29, 24: 0.23}  # SPEC §3
    for depth, expected in spec.items():
        assert transfer_factor(BASE, family_scale(depth)) == pytest.approx(expected, abs=0.01)


def test_derived_adam_lr() -> None:
    d = derive(BASE, family_scale(16), base_lr=0.014, adam_lr=0.014 / 4.33)
    assert d.adam_lr == pytest.approx(d.lr / 4.33)
    assert derive(BASE, family_scale(16), base_lr=0.014).adam_lr == d.lr  # the Adam group shares the matrix lr


def test_bad_values() -> None:
    with pytest.raises(ConfigError, match="depth"):
        Scale(width=8, depth=0, tokens=1, batch_tokens=1)
    with pytest.raises(ConfigError, match="optim.lr"):
        derive(BASE, BASE, base_lr=-1)


def test_two_heads_per_layer_count_and_multipliers() -> None:
    # The q/o term is the only one that depends on n_head: 2·d·L·n_head·head_dim, so going from n_head = L to 2L adds
    # 2·(128·L)·L·L·128 parameters (closed form), and the SPEC table's multipliers move by at most 1.3 % (issue 18).
    for depth in (8, 12, 24):
        extra = archscale_param_count(depth, heads_per_layer=2) - archscale_param_count(depth)
        assert extra == 2 * (128 * depth) * depth * depth * 128
        ratio = (transfer_factor(BASE, family_scale(depth, heads_per_layer=2))
                 / transfer_factor(BASE, family_scale(depth)))
        assert abs(ratio - 1) <= 0.013
