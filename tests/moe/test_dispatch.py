"""Backends agree with each other and with an independent per-token reference (SPEC §4: dropless dispatch)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moe import MoEBlock, MoEConfig
from moe.dispatch import get_dispatch
from moe.experts import Experts

CPU_BACKENDS = ["loop", "torch"]


@pytest.fixture(params=["grouped", "padded"])
def layout(request, monkeypatch):
    """Pin the torch backend's layout (grouped_mm vs padded bmm) so both code paths are compared."""
    import moe.dispatch.torch as torch_backend

    monkeypatch.setattr(torch_backend, "FORCE_LAYOUT", request.param)
    return request.param


def assert_fp32_close(got: torch.Tensor, ref: torch.Tensor, n_red: int, msg: str = "") -> None:
    """Two fp32 computations of the same sums in different orders (grouped vs padded vs loop, different GEMM
    blocking on another CPU) differ by at most ~n·eps·Σ|terms| for reductions of length n. We bound Σ|terms| of an
    element by the tensor's largest magnitude (these random problems have no strong cancellation), giving an
    absolute tolerance n·eps·max|ref|: ~100× what was measured here (≤ 2.3e-7·max|ref|), still far below what a real
    bug (a dropped token, a wrong expert or gate) changes, which is O(max|ref| / √n) or more."""
    tol = n_red * torch.finfo(torch.float32).eps * float(ref.abs().max().clamp_min(1.0))
    torch.testing.assert_close(got, ref, rtol=0, atol=tol, msg=lambda m: f"{msg} (tol {tol:.2e}): {m}")


def _n_red(x: torch.Tensor, experts: Experts) -> int:
    """Longest reduction in the layer's forward/backward: tokens (weight grads), hidden or expert width."""
    return max(x.shape[0], x.shape[1], experts.w_gate.shape[1])


def per_token_reference(x, indices, weights, experts):
    """Σ_j w_j · Expert_{i_j}(x) computed token by token, no sorting, no grouping."""
    rows = []
    for t in range(x.shape[0]):
        acc = torch.zeros_like(x[t])
        for j in range(indices.shape[1]):
            e = int(indices[t, j])
            h = F.silu(experts.w_gate[e] @ x[t]) * (experts.w_up[e] @ x[t])
            acc = acc + weights[t, j] * (experts.w_down[e] @ h)
        rows.append(acc)
    return torch.stack(rows)


def _problem(n=37, h=16, e=6, k=3, i=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    experts = Experts(e, h, i).to(dtype)
    x = torch.randn(n, h, generator=g, dtype=dtype)
    indices = torch.rand(n, e, generator=g).argsort(-1)[:, :k]
    weights = torch.rand(n, k, generator=g, dtype=dtype)
    return x, indices, weights, experts


def _grads(backend, x, indices, weights, experts):
    x = x.clone().requires_grad_()
    weights = weights.clone().requires_grad_()
    experts.zero_grad(set_to_none=True)
    out = get_dispatch(backend)(x, indices, weights, experts)
    torch.manual_seed(123)
    (out * torch.randn_like(out)).sum().backward()
    return out.detach(), [x.grad, weights.grad, experts.w_gate.grad, experts.w_up.grad, experts.w_down.grad]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [dict(), dict(n=1, k=1), dict(h=13, i=7, e=5, k=2), dict(n=64, e=16, k=4, i=12)])
def test_backend_matches_per_token_reference(backend, shape, layout):
    x, indices, weights, experts = _problem(**shape)
    out = get_dispatch(backend)(x, indices, weights, experts)
    with torch.no_grad():
        ref = per_token_reference(x, indices, weights, experts)
    assert_fp32_close(out, ref, _n_red(x, experts))


@pytest.mark.parametrize("shape", [dict(), dict(h=13, i=7, e=5, k=2), dict(n=200, h=32, e=8, k=4, i=16)])
def test_torch_backend_gradients_match_loop(shape, layout):
    x, indices, weights, experts = _problem(**shape)
    out_l, grads_l = _grads("loop", x, indices, weights, experts)
    out_t, grads_t = _grads("torch", x, indices, weights, experts)
    assert_fp32_close(out_t, out_l, _n_red(x, experts))
    for name, gl, gt in zip(["x", "weights", "w_gate", "w_up", "w_down"], grads_l, grads_t):
        assert_fp32_close(gt, gl, _n_red(x, experts), msg=f"grad of {name}")


def test_torch_backend_gradcheck_float64(layout):
    """gradcheck the hand-written backward in fp64 (grouped layout: the per-expert fallback loop)."""
    x, indices, weights, experts = _problem(n=9, h=5, e=4, k=2, i=3, dtype=torch.float64)
    x.requires_grad_()
    weights.requires_grad_()

    def f(x, w, wg, wu, wd):
        experts.w_gate.data, experts.w_up.data, experts.w_down.data = wg, wu, wd
        from moe.dispatch.torch import _GroupedSwiGLU

        return _GroupedSwiGLU.apply(x, w, wg, wu, wd, indices)

    params = [p.detach().clone().requires_grad_() for p in (experts.w_gate, experts.w_up, experts.w_down)]
    assert torch.autograd.gradcheck(f, (x, weights, *params))


def test_torch_backend_empty_experts_and_all_on_one(layout):
    """Dropless with empty experts and with every token on the same expert (no capacity, nothing dropped)."""
    x, _, weights, experts = _problem(n=50, e=8, k=1)
    indices = torch.full((50, 1), 5)
    out_l, grads_l = _grads("loop", x, indices, weights, experts)
    out_t, grads_t = _grads("torch", x, indices, weights, experts)
    assert_fp32_close(out_t, out_l, _n_red(x, experts))
    for gl, gt in zip(grads_l, grads_t):
        assert_fp32_close(gt, gl, _n_red(x, experts))
    assert grads_t[2][torch.arange(8) != 5].abs().sum() == 0


@pytest.mark.parametrize("gate", ["sqrt", "softmax"])
@pytest.mark.parametrize("shared", [False, True])
def test_block_backends_agree_outputs_and_all_gradients(gate, shared):
    torch.manual_seed(0)
    blocks = {}
    for backend in CPU_BACKENDS:
        cfg = MoEConfig(num_experts=8, top_k=3, expert_hidden=12, shared_expert=shared, gate=gate, backend=backend)
        torch.manual_seed(0)
        blocks[backend] = MoEBlock(24, cfg)
    x0 = torch.randn(2, 17, 24)
    results = {}
    for backend, block in blocks.items():
        x = x0.clone().requires_grad_()
        y, stats = block(x)
        torch.manual_seed(1)
        (y * torch.randn_like(y)).sum().backward()
        grads = {n: p.grad for n, p in block.named_parameters()}
        results[backend] = (y.detach(), x.grad, grads, stats.indices)
    (y_l, gx_l, gp_l, i_l), (y_t, gx_t, gp_t, i_t) = results["loop"], results["torch"]
    assert torch.equal(i_l, i_t)
    n_red = x0.shape[0] * x0.shape[1]  # the router's and shared expert's weight grads reduce over every token
    assert_fp32_close(y_t, y_l, n_red)
    assert_fp32_close(gx_t, gx_l, n_red)
    assert gp_l.keys() == gp_t.keys()
    for name in gp_l:
        assert gp_l[name] is not None, name
        assert_fp32_close(gp_t[name], gp_l[name], n_red, msg=name)


def test_torch_backend_bf16_runs_and_is_close(layout):
    x, indices, weights, experts = _problem(n=64, h=16, e=4, k=2, i=8)
    ref = get_dispatch("torch")(x, indices, weights, experts)
    out = get_dispatch("torch")(x.bfloat16(), indices, weights.bfloat16(), experts.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


def test_unknown_and_megablocks_backends_raise_config_error():
    from hyperp.errors import ConfigError

    with pytest.raises(ConfigError, match="moe.backend"):
        get_dispatch("nope")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"moe.backend='megablocks' needs CUDA"):
            get_dispatch("megablocks", "cpu")
    assert get_dispatch("auto", "cpu") is get_dispatch("torch", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_megablocks_matches_torch_backend_on_cuda():
    pytest.importorskip("megablocks")
    x, indices, weights, experts = _problem(n=256, h=64, e=8, k=2, i=32)
    dev = torch.device("cuda")
    experts = experts.to(dev, torch.bfloat16)
    x, indices, weights = x.to(dev, torch.bfloat16), indices.to(dev), weights.to(dev)
    out_m, grads_m = _grads("megablocks", x, indices, weights, experts)
    out_t, grads_t = _grads("loop", x, indices, weights, experts)
    torch.testing.assert_close(out_m.float(), out_t.float(), atol=3e-2, rtol=3e-2)
    for gm, gt in zip(grads_m, grads_t):
        torch.testing.assert_close(gm.float(), gt.float(), atol=5e-2, rtol=5e-2)


def test_layout_choice_pads_only_balanced_cpu_routing():
    import moe.dispatch.torch as torch_backend

    balanced = torch.arange(64).remainder(8).view(32, 2)
    skewed = torch.zeros(32, 2, dtype=torch.long)
    skewed[:, 1] = 1
    assert isinstance(torch_backend._layout(balanced, 8), torch_backend._Padded)
    assert isinstance(torch_backend._layout(skewed, 8), torch_backend._Grouped)
