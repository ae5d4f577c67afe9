from __future__ import annotations

import pytest
import torch
from reference import TORCH_ABC, ns_reference
from torch.optim._muon import _zeropower_via_newtonschulz

from hyperp.errors import ConfigError
from hyperp.optim.newton_schulz import ARCHSCALE_SCHEDULE, newton_schulz


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (32, 32)])
def test_bf16_matches_torch_muon_bitwise(shape: tuple[int, int]) -> None:
    G = torch.randn(*shape)
    ours = newton_schulz(G, 5, "torch", eps=1e-7, dtype=torch.bfloat16)
    theirs = _zeropower_via_newtonschulz(G, TORCH_ABC, 5, 1e-7)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert torch.equal(ours, theirs)  # same polynomial, normalization and addmm order


@pytest.mark.parametrize("name,coefs", [("torch", [TORCH_ABC] * 5), ("archscale", list(ARCHSCALE_SCHEDULE))])
@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_fp32_matches_formula(name: str, coefs: list, shape: tuple[int, int]) -> None:
    G = torch.randn(*shape, dtype=torch.float64)
    ref = ns_reference(G, coefs)
    ours = newton_schulz(G.float(), 5, name)
    assert ours.dtype == torch.float32  # CPU default
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=2e-5)


def test_batched_equals_per_matrix() -> None:
    G = torch.randn(2, 3, 20, 12)
    out = newton_schulz(G)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(out[i, j], newton_schulz(G[i, j]), rtol=0, atol=1e-5)


def test_singular_values_in_torch_quintic_band() -> None:
    # Scalar iteration of p(x) = ax + bx³ + cx⁵ five times maps every normalized singular value in [0.01, 1]
    # into [0.6818, 1.1344] (computed on a fine grid; Keller Jordan's "S' ≈ U(0.5, 1.5)" is looser).
    G = torch.randn(32, 128)
    s = torch.linalg.svdvals(G / G.norm())
    assert s.min() > 0.01
    out = torch.linalg.svdvals(newton_schulz(G))
    assert out.min() >= 0.6818 - 1e-3 and out.max() <= 1.1344 + 1e-3
    # And each output singular value is p⁵ of its input (orthogonal equivariance), in float64.
    a, b, c = TORCH_ABC
    x = s.double()
    for _ in range(5):
        x = a * x + b * x**3 + c * x**5
    torch.testing.assert_close(out.double().sort().values, x.sort().values, rtol=0, atol=1e-4)


def test_bad_coefficients() -> None:
    with pytest.raises(ConfigError, match="ns_coefficients"):
        newton_schulz(torch.randn(4, 4), 5, "nope")
