"""Dense → MoE upcycling (models.upcycle): step-0 function, expert radii, refusals. The reference is the dense model
itself (its logits, its MLP weights); the CLI over real runs is in tests/train/test_upcycle.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hyperp.errors import ConfigError
from hyperp.groups import build_optimizer
from hyperp.optim.config import OptimConfig
from models.config import ModelConfig
from models.qwen3 import Qwen3
from models.upcycle import down_scale, upcycle
from moe.config import MoEConfig

DENSE = ModelConfig(vocab_size=61, hidden=32, n_layers=3, n_heads=2, n_kv_heads=1, mlp_hidden=64, max_seq_len=16)
# fp64: the MoE sums each MLP's hidden units in another order (in slices, then over experts), ~I·ε relative per
# layer (64 · 1.1e-16); through 3 layers and the head, logits of size ~1 agree to well below 1e-12.
TOL = 1e-12


def dense_model(seed: int = 0) -> Qwen3:
    torch.manual_seed(seed)
    model = Qwen3(DENSE).double().eval()
    with torch.no_grad():
        model.embed.weight.normal_(std=1.0)  # visible logits (the HyperP embedding init is 1e-4)
    return model


def target(gate: str = "sqrt", experts: int = 8, top_k: int = 4, width: int = 16, **kw: object) -> ModelConfig:
    moe = MoEConfig(num_experts=experts, top_k=top_k, expert_hidden=width, gate=gate)
    return dataclasses.replace(DENSE, moe=moe, **kw)


CASES = {  # (gate, E, k, expert_hidden): slices s = 64 / expert_hidden
    "copies-top2-sqrt": ("sqrt", 4, 2, 64),  # s = 1: identical copies, scaled 1/√2
    "slices-top4-sqrt": ("sqrt", 8, 4, 16),  # s = k: the HyperP fine-grained family
    "two-copies-of-2-slices": ("sqrt", 8, 4, 32),
    "copies-top2-softmax": ("softmax", 4, 2, 64),
    "slices-top2-softmax": ("softmax", 6, 2, 32),
    "top1": ("sqrt", 3, 1, 64),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.filterwarnings("ignore:moe.expert_hidden=.*identical copies")  # the copies cases, on purpose
def test_step0_logits_equal_the_dense_models(case: str) -> None:
    gate, experts, top_k, width = CASES[case]
    dense = dense_model()
    moe = upcycle(dense, target(gate, experts, top_k, width)).eval()
    tokens = torch.randint(0, DENSE.vocab_size, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = dense(tokens), moe(tokens)
    assert len(got.routing) == DENSE.n_layers
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=TOL)
    for stats in got.routing:  # each token takes one whole group of k experts, each with gate weight 1/k
        groups = stats.indices // top_k
        assert (groups == groups[:, :1]).all()
        torch.testing.assert_close(stats.weights, torch.full_like(stats.weights, 1 / top_k), rtol=0, atol=1e-15)


def test_sqrtgate_block_output_and_rms_equal_the_dense_mlps() -> None:
    dense = dense_model()
    moe = upcycle(dense, target())
    x = torch.randn(200, DENSE.hidden, dtype=torch.float64)
    for block, dense_block in zip(moe.layers, dense.layers, strict=True):
        y, _ = block.mlp(x)
        y_dense = dense_block.mlp(x)
        torch.testing.assert_close(y, y_dense, rtol=0, atol=TOL)
        assert abs(y.pow(2).mean().sqrt() / y_dense.pow(2).mean().sqrt() - 1) < TOL


def test_copies_inside_a_group_are_warned_about() -> None:
    with pytest.warns(UserWarning, match="2 identical copies of each slice.*expert_hidden = mlp_hidden / top_k = 16"):
        upcycle(dense_model(), target(width=32))


def test_other_weights_are_copied_and_layers_kept_dense_stay_dense() -> None:
    dense = dense_model()
    moe = upcycle(dense, target(mlp_only_layers=(1,)))
    assert not moe.layers[1].is_moe
    moe_state = moe.state_dict()
    for name, value in dense.state_dict().items():
        if ".mlp." not in name or name.startswith("layers.1."):
            assert torch.equal(moe_state[name], value), name


@pytest.mark.parametrize(("gate", "width", "scale"), [("sqrt", 16, 2.0), ("sqrt", 64, 0.5), ("sqrt", 32, 1.0),
                                                      ("softmax", 16, 4.0), ("softmax", 64, 1.0)])
def test_down_scale_closed_form(gate: str, width: int, scale: float) -> None:
    # top-4: c = s/√4 under SqrtGate (s = 4, 1, 2), c = s under the standard gate
    assert down_scale(target(gate, width=width), 64 // width) == pytest.approx(scale, rel=1e-15)


def test_expert_radii_are_the_dense_slices_norms_and_the_sphere_keeps_them() -> None:
    dense = dense_model()
    moe = upcycle(dense, target())  # 8 experts of 16 = slices of 64, top-4 SqrtGate: c = √4 = 2
    mlp, experts = dense.layers[0].mlp, moe.layers[0].mlp.experts
    norm = lambda t: float(torch.linalg.norm(t.detach()))  # noqa: E731
    for e in range(8):
        rows = slice(e % 4 * 16, e % 4 * 16 + 16)
        assert norm(experts.w_gate[e]) == pytest.approx(norm(mlp.gate_proj.weight[rows]), rel=1e-14)
        assert norm(experts.w_down[e]) == pytest.approx(2 * norm(mlp.down_proj.weight[:, rows]), rel=1e-14)
    # a group's squared gate/up radii add up to the dense matrix's (the slices partition it)
    assert sum(norm(experts.w_up[e]) ** 2 for e in range(4)) == pytest.approx(norm(mlp.up_proj.weight) ** 2, rel=1e-12)
    # the router has a fresh router's shape of norm: E rows of U(±1/√H) → E·H·(1/(3H)) = E/3 in expectation (loose)
    assert 0.5 * 8 / 3 < norm(moe.layers[0].mlp.router.weight) ** 2 < 2 * 8 / 3
    before = {n: torch.linalg.norm(p.detach().flatten(1), dim=1) for n, p in moe.named_parameters() if "experts" in n}
    optimizer = build_optimizer(moe, OptimConfig(name="muonh"))
    tokens = torch.randint(0, DENSE.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        out = moe(tokens[:, :-1], tokens[:, 1:])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in moe.named_parameters():
        if "experts" in name:  # per-expert spheres: each expert's radius is the norm it was upcycled with
            after = torch.linalg.norm(param.detach().flatten(1), dim=1)
            torch.testing.assert_close(after, before[name], rtol=1e-12, atol=0)


def test_refusals_name_the_field() -> None:
    dense = dense_model()
    cases = {
        "already has [model.moe]": (upcycle(dense, target()), target()),
        "model.hidden": (dense, dataclasses.replace(target(), hidden=64, n_heads=4)),
        "no [model.moe]": (dense, DENSE),
        "must divide model.mlp_hidden": (dense, target(width=24)),
        "must be a multiple of mlp_hidden/expert_hidden=4": (dense, target(top_k=2, experts=8, width=16)),
        "must be a multiple of moe.top_k=4": (dense, target(experts=6)),
        "moe.shared_expert": (dense, dataclasses.replace(target(), moe=dataclasses.replace(target().moe,
                                                                                           shared_expert=True))),
    }
    for needle, (model, cfg) in cases.items():
        with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            upcycle(model, cfg)
