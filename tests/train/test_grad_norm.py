"""Gradient norm and clipping for (possibly) sharded gradients: ``train.distributed.clip_grad_norm_`` against
``torch.nn.utils.clip_grad_norm_`` on plain tensors (the multi-rank cases are tests/distributed's runs)."""

from __future__ import annotations

import pytest
import torch

from train.distributed import clip_grad_norm_


def _params(seed: int, scale: float) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=torch.float64)) for s in ((4, 6), (3, 2, 5), (7,))]
    for p in params:
        p.grad = scale * torch.randn(p.shape, generator=g, dtype=torch.float64)
    return params


@pytest.mark.parametrize(("scale", "max_norm"), [(1.0, 0.5), (1e-3, 1.0), (1.0, 0.0)])
def test_clip_matches_torch(scale: float, max_norm: float) -> None:
    """Same norm and same clipped gradients (fp64; summation order only: ≤ 1e-15 relative for ~60 terms)."""
    ours, ref = _params(0, scale), _params(0, scale)
    norm = clip_grad_norm_(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(ref, max_norm if max_norm > 0 else float("inf"))
    torch.testing.assert_close(norm, expected.double(), rtol=1e-14, atol=0)
    for p, q in zip(ours, ref, strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-14, atol=0)
    assert (float(norm) > max_norm > 0) == (scale == 1.0 and max_norm == 0.5)  # the first case clips


def test_non_finite_gradient_gives_non_finite_norm() -> None:
    params = _params(1, 1.0)
    params[1].grad[0, 0, 0] = float("nan")
    assert not torch.isfinite(clip_grad_norm_(params, 1.0))
