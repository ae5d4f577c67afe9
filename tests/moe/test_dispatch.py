"""Backends agree with each other and with an independent per-token reference (SPEC §4: dropless dispatch)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moe import MoEBlock, MoEConfig
from moe.dispatch import get_dispatch
from moe.dispatch.precision import BF16_GRAD_BOUND as GRAD_BOUND
from moe.dispatch.precision import BF16_OUT_BOUND as OUT_BOUND
from moe.dispatch.precision import relative_error as rel_err
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


def dispatch_grads(backend, x, indices, weights, experts, autocast=None):
    """Output and the gradients of (x, weights, w_gate, w_up, w_down) for a fixed random cotangent; ``backend`` is a
    name or a dispatch function; the forward runs under ``torch.autocast(x's device, autocast)`` when a dtype is
    given (backward outside, as in training)."""
    fn = get_dispatch(backend, x.device) if isinstance(backend, str) else backend
    x = x.clone().requires_grad_()
    weights = weights.clone().requires_grad_()
    experts.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        out = fn(x, indices, weights, experts)
    g = torch.Generator(device=x.device).manual_seed(123)
    (out.float() * torch.randn(out.shape, generator=g, device=x.device)).sum().backward()
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
    out_l, grads_l = dispatch_grads("loop", x, indices, weights, experts)
    out_t, grads_t = dispatch_grads("torch", x, indices, weights, experts)
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
    out_l, grads_l = dispatch_grads("loop", x, indices, weights, experts)
    out_t, grads_t = dispatch_grads("torch", x, indices, weights, experts)
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


def test_layout_choice_pads_only_balanced_cpu_routing():
    import moe.dispatch.torch as torch_backend

    balanced = torch.arange(64).remainder(8).view(32, 2)
    skewed = torch.zeros(32, 2, dtype=torch.long)
    skewed[:, 1] = 1
    assert isinstance(torch_backend._layout(balanced, 8), torch_backend._Padded)
    assert isinstance(torch_backend._layout(skewed, 8), torch_backend._Grouped)


# ------------------------------------------------------------------------------------------------ precision
# Bounds derived in moe/dispatch/precision.py: normwise relative error ≤ 10u (outputs) and 17u (gradients), u = 2^-8.
GRAD_NAMES = ["x", "weights", "w_gate", "w_up", "w_down"]


def _assert_bf16_close(result, reference):
    (out, grads), (ref_out, ref_grads) = result, reference
    assert rel_err(out, ref_out) <= OUT_BOUND, rel_err(out, ref_out)
    for name, g, gr in zip(GRAD_NAMES, grads, ref_grads):
        assert rel_err(g, gr) <= GRAD_BOUND, (name, rel_err(g, gr))


@pytest.fixture
def matmul_dtypes(monkeypatch):
    """Record the operand dtypes of every expert matmul the torch backend runs (both layouts, fwd and bwd)."""
    import moe.dispatch.torch as torch_backend

    seen: list[tuple[torch.dtype, torch.dtype]] = []
    for cls in (torch_backend._Grouped, torch_backend._Padded):
        for name in ("rows_mm", "outer_mm"):
            original = getattr(cls, name)

            def spy(self, a, b, _original=original):
                seen.append((a.dtype, b.dtype))
                return _original(self, a, b)

            monkeypatch.setattr(cls, name, spy)
    return seen


def test_torch_backend_under_cpu_autocast_runs_experts_in_bf16(layout, matmul_dtypes):
    """fp32 master weights + bf16 autocast (training): grouped_mm has no autocast kernel, so the backend must cast."""
    x, indices, weights, experts = _problem(n=256, h=64, e=8, k=2, i=32)
    reference = dispatch_grads("loop", x, indices, weights, experts)  # fp32, checked against per-token maths above
    out, grads = dispatch_grads("torch", x, indices, weights, experts, autocast=torch.bfloat16)
    assert matmul_dtypes and set(matmul_dtypes) == {(torch.bfloat16, torch.bfloat16)}, set(matmul_dtypes)
    assert out.dtype == torch.bfloat16
    assert [g.dtype for g in grads] == [torch.float32] * 5  # fp32 master weights get fp32 gradients
    _assert_bf16_close((out, grads), reference)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backends_without_autocast_keep_the_input_dtype(backend):
    x, indices, weights, experts = _problem(n=32)
    assert get_dispatch(backend)(x, indices, weights, experts).dtype == torch.float32
    out = get_dispatch(backend)(x.bfloat16(), indices, weights, experts.bfloat16())
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_block_under_cpu_autocast_routes_in_fp32_and_matches_fp32(backend):
    """Whole MoE block, fp32 weights: under bf16 autocast the router logits stay fp32 (same routing as fp32), the
    output is bf16 and close to the fp32 block's, and every parameter gradient is fp32 and close."""
    torch.manual_seed(0)
    block = MoEBlock(64, MoEConfig(num_experts=8, top_k=2, expert_hidden=32, shared_expert=True, backend=backend))
    x0 = torch.randn(4, 64, 64)
    results = []
    for autocast in (None, torch.bfloat16):
        block.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            y, stats = block(x)
        (y.float() * torch.cos(torch.arange(y.numel()).view(y.shape))).sum().backward()
        results.append((y.detach(), stats, x.grad, {n: p.grad for n, p in block.named_parameters()}))
    (y32, s32, gx32, gp32), (y16, s16, gx16, gp16) = results
    assert s16.logits.dtype == torch.float32
    torch.testing.assert_close(s16.logits, s32.logits, rtol=0, atol=0)
    assert torch.equal(s16.indices, s32.indices)
    assert y16.dtype == torch.bfloat16 and rel_err(y16, y32) <= OUT_BOUND
    assert rel_err(gx16, gx32) <= GRAD_BOUND
    for name in gp32:
        assert gp16[name].dtype == torch.float32, name
        assert rel_err(gp16[name], gp32[name]) <= GRAD_BOUND, (name, rel_err(gp16[name], gp32[name]))


# MegaBlocks on CPU: stand-ins for its two compiled modules, written from their source. They compute what
# megablocks/backend/kernels.py (`gather`, `scatter` = `_padded_copy` + sum over top-k) and grouped_gemm's `gmm`
# compute, and enforce grouped_gemm's TORCH_CHECKs (csrc/grouped_gemm.cu: a, b bf16 and contiguous, batch_sizes
# int64 on the CPU), in forward and in its backward (which calls gmm again on the saved operands).
class _StandInOps:
    @staticmethod
    def sort(x, end_bit):
        values, order = torch.sort(x, stable=True)
        return values, order.to(x.dtype)

    @staticmethod
    def histogram(x, num_bins):
        return torch.bincount(x, minlength=num_bins).to(torch.int32)

    @staticmethod
    def inclusive_cumsum(x, dim):
        return torch.cumsum(x, dim).to(x.dtype)

    @staticmethod
    def gather(x, indices, bin_ids, bins, top_k):  # row i of the output = token indices[i] // top_k
        return x.index_select(0, indices.long() // top_k)

    @staticmethod
    def scatter(x, indices, bin_ids, weights, bins, top_k):  # slot indices[i] ← x[i]·weights[indices[i]]; Σ over k
        slots = torch.zeros(indices.shape[0], x.shape[1], dtype=x.dtype)
        idx = indices.long()
        slots = slots.index_copy(0, idx, x * weights[idx].unsqueeze(-1))
        return slots.view(-1, top_k, x.shape[1]).sum(1)


def _gmm_checks(a, b, batch_sizes):
    for t in (a, b):
        if t.dtype != torch.bfloat16 or not t.is_contiguous():
            raise RuntimeError("grouped_gemm: Expected a.scalar_type() == torch::kBFloat16 and a.is_contiguous()")
    if batch_sizes.device.type != "cpu" or batch_sizes.dtype != torch.int64:
        raise RuntimeError("grouped_gemm: Expected batch_sizes.is_cpu() and int64")


def _gmm_forward(a, b, batch_sizes, trans_a=False, trans_b=False):
    _gmm_checks(a, b, batch_sizes)
    ends = torch.cumsum(batch_sizes, 0).tolist()
    starts = [0, *ends[:-1]]
    if trans_a:  # (E, a.cols, b.cols): per-expert aᵀ·b
        return torch.stack([a[s:e].t() @ b[s:e] for s, e in zip(starts, ends)])
    return torch.cat([a[s:e] @ (b[i].t() if trans_b else b[i]) for i, (s, e) in enumerate(zip(starts, ends))])


class _StandInGmm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, batch_sizes, trans_b):
        ctx.save_for_backward(a, b, batch_sizes)
        ctx.trans_b = trans_b
        return _gmm_forward(a, b, batch_sizes, trans_b=trans_b)

    @staticmethod
    def backward(ctx, grad):  # grouped_gemm/ops.py GroupedGemm.backward
        grad = grad.contiguous()
        a, b, batch_sizes = ctx.saved_tensors
        agrad = _gmm_forward(grad, b, batch_sizes, trans_b=not ctx.trans_b)
        lhs, rhs = (grad, a) if ctx.trans_b else (a, grad)
        return agrad, _gmm_forward(lhs, rhs, batch_sizes, trans_a=True), None, None


@pytest.fixture
def megablocks_standins(monkeypatch):
    import moe.dispatch.megablocks as mb

    def gmm(a, b, batch_sizes, trans_b=False):
        return _StandInGmm.apply(a, b, batch_sizes, trans_b)

    monkeypatch.setattr(mb, "_modules", lambda: (_StandInOps, gmm))
    return mb


@pytest.mark.parametrize("autocast", [torch.bfloat16, None])
def test_megablocks_backend_casts_for_grouped_gemm(megablocks_standins, autocast):
    """fp32 master weights, with and without bf16 autocast: gmm gets bf16 contiguous operands (else the stand-in
    raises as grouped_gemm does), the output comes back in the caller's dtype, fp32 weights get fp32 gradients."""
    x, indices, weights, experts = _problem(n=256, h=64, e=8, k=2, i=32)
    reference = dispatch_grads("loop", x, indices, weights, experts)
    out, grads = dispatch_grads(megablocks_standins.dispatch, x, indices, weights, experts, autocast=autocast)
    assert out.dtype == (autocast or torch.float32)
    assert [t.dtype for t in grads] == [torch.float32] * 5
    _assert_bf16_close((out, grads), reference)


def test_megablocks_gmm_operands_are_bf16_contiguous_and_differentiable():
    from moe.dispatch.megablocks import gmm_operands

    x, _, _, experts = _problem(n=16)
    x = x.t().contiguous().t().requires_grad_()  # a non-contiguous fp32 input
    ops = gmm_operands(x, experts)
    assert all(t.dtype == torch.bfloat16 and t.is_contiguous() for t in ops)
    sum(t.float().sum() for t in ops).backward()
    for p in (x, experts.w_gate, experts.w_up, experts.w_down):
        assert p.grad.dtype == torch.float32 and torch.equal(p.grad, torch.ones_like(p))


def test_megablocks_unavailable_reason_names_the_import_error():
    from moe.dispatch import megablocks

    reason = megablocks.unavailable_reason()
    try:
        import megablocks.ops  # noqa: F401
        import grouped_gemm.ops  # noqa: F401
    except Exception as err:  # noqa: BLE001 - whatever this machine raises is what the reason must quote
        assert reason is not None and f"import failed: {type(err).__name__}" in reason
    if not torch.cuda.is_available():
        assert "no CUDA device" in reason and not megablocks.available()


# ------------------------------------------------------------------------------------------------ on a GPU
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _cuda_problem(**shape):
    x, indices, weights, experts = _problem(**shape)
    dev = torch.device("cuda")
    return x.to(dev), indices.to(dev), weights.to(dev), experts.to(dev)


@pytest.mark.gpu
@needs_cuda
def test_megablocks_matches_loop_backend_on_cuda():
    pytest.importorskip("megablocks")
    x, indices, weights, experts = _cuda_problem(n=256, h=64, e=8, k=2, i=32)
    experts = experts.to(torch.bfloat16)
    x = x.to(torch.bfloat16)
    out_m, grads_m = dispatch_grads("megablocks", x, indices, weights, experts)
    out_t, grads_t = dispatch_grads("loop", x, indices, weights, experts)
    torch.testing.assert_close(out_m.float(), out_t.float(), atol=3e-2, rtol=3e-2)
    for gm, gt in zip(grads_m, grads_t):
        torch.testing.assert_close(gm.float(), gt.float(), atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["torch", "megablocks"])
def test_gpu_backend_under_autocast_matches_fp32_loop(backend, monkeypatch):
    """fp32 master weights, bf16 autocast on CUDA (training), vs the fp32 loop backend; experts 3 and 6 get no token:
    their weight gradients must be exactly zero (tgale96/grouped_gemm#36: uninitialised memory otherwise)."""
    if backend == "megablocks":
        pytest.importorskip("megablocks")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    x, _, weights, experts = _cuda_problem(n=512, h=128, e=8, k=2, i=64)
    used = torch.tensor([0, 1, 2, 4, 5, 7])  # experts 3 and 6 receive nothing
    indices = used[torch.rand(512, 6, generator=torch.Generator().manual_seed(1)).argsort(-1)[:, :2]].cuda()
    reference = dispatch_grads("loop", x, indices, weights, experts)
    torch.cuda.empty_cache()
    torch.full((64, 1 << 20), float("nan"), device="cuda")  # leave NaNs in freed memory for a missing zero-fill
    out, grads = dispatch_grads(backend, x, indices, weights, experts, autocast=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and [g.dtype for g in grads] == [torch.float32] * 5
    _assert_bf16_close((out, grads), reference)
    for g in grads[2:]:
        assert torch.equal(g[[3, 6]], torch.zeros_like(g[[3, 6]]))
