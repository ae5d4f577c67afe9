"""MoE-aware MFU: the FLOPs formula against a hand count, the datasheet table, the step log's value."""

from __future__ import annotations

import pytest
import torch

from models.config import ModelConfig
from models.qwen3 import Qwen3
from moe.config import MoEConfig
from train import mfu
from train.mfu import MFU, datasheet_peak, flops_per_token


def _model(tied: bool = False) -> Qwen3:
    return Qwen3(ModelConfig(vocab_size=64, hidden=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_hidden=48,
                             max_seq_len=16, tie_embeddings=tied, mlp_only_layers=(1,),
                             moe=MoEConfig(num_experts=4, top_k=2, expert_hidden=16, shared_expert=True,
                                           shared_hidden=24)))


def test_flops_per_token_by_hand() -> None:
    h, v, heads, kv, d, seq = 32, 64, 4, 2, 8, 16
    attention = h * heads * d + 2 * h * kv * d + heads * d * h  # q, k, v, o
    norms = 2 * d + 2 * h  # q/k norms, input and post-attention norms
    moe_layer = 4 * h + 2 * 3 * h * 16 + 3 * h * 24  # router (all E), 2 of 4 experts, the shared expert
    dense_layer = 3 * h * 48  # layer 1 is in mlp_only_layers
    active = 2 * (attention + norms) + moe_layer + dense_layer + h + v * h  # + final norm + LM head, no embedding
    assert active == 18496
    want = 6 * active + 12 * 2 * heads * d * seq  # PaLM: 6N + 12·L·H·d·T
    assert flops_per_token(_model(), seq) == want
    # a tied head is still a matmul: counted once (the embedding lookup is not); untied it is v·h more parameters
    assert flops_per_token(_model(tied=True), seq) == want


def test_datasheet_table_by_device_name() -> None:
    assert datasheet_peak("NVIDIA H100 80GB HBM3") == 989.5e12
    assert datasheet_peak("NVIDIA H100 80GB HBM3", bf16=False) == 67e12
    assert datasheet_peak("NVIDIA H100 PCIe") == 756.5e12  # not the SXM value it contains
    assert datasheet_peak("NVIDIA H200 NVL") == 835.5e12 and datasheet_peak("NVIDIA H200") == 989.5e12
    assert datasheet_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert datasheet_peak("Tesla T4") is None


def test_mfu_is_achieved_over_peak_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mfu, "measured_matmul_peak", lambda dtype: 1e9)
    model = _model()
    one = MFU(model, 16, torch.device("cpu"), bf16=False)
    assert one.metrics(1000.0) == {"train/mfu": pytest.approx(flops_per_token(model, 16) * 1000.0 / 1e9)}
    two = MFU(model, 16, torch.device("cpu"), bf16=False, world_size=2)  # global tokens/s over two devices' peak
    assert two.metrics(1000.0)["train/mfu"] == pytest.approx(one.metrics(1000.0)["train/mfu"] / 2)


def test_measured_peak_is_a_plausible_flop_rate() -> None:
    peak = mfu.measured_matmul_peak(torch.float32, n=256, repeats=2)
    assert 1e8 < peak < 1e14  # any CPU from a slow shared core to a large server
