"""A random model for parity tests: norm gains away from 1 and embeddings large enough that logits differ visibly,
so a wrong norm, scale or routing shows up in the comparison against transformers."""

from __future__ import annotations

import torch

from models.config import ModelConfig
from models.qwen3 import Qwen3


def build(config: ModelConfig, seed: int = 0) -> Qwen3:
    torch.manual_seed(seed)
    model = Qwen3(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
        model.embed.weight.normal_(std=0.5)
    return model
