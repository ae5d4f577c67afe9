"""Shared fixtures: a small deterministic text corpus and tiny run configs that train in seconds on a CPU."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

# Tests whose assertions compare floating-point results of two computation orders (data parallel vs one process,
# accumulation splits, dispatch layouts, transformers parity, optimizer references, exact resume). `.ci/run` runs
# them a second time with another thread count, so CI sees a second reduction order (`-m numerics`).
NUMERICS = ("tests/distributed/", "tests/moe/", "tests/models/", "tests/hyperp/", "tests/reliability/test_checkpoints.py",
            "tests/reliability/test_sphere_invariants.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(str(config.rootpath))
    for item in items:
        if Path(str(item.path)).relative_to(root).as_posix().startswith(NUMERICS):
            item.add_marker(pytest.mark.numerics)

_WORDS = (
    "the a one every some model expert token layer sphere norm gate router loss step weight radius update train "
    "learns moves keeps routes balances measures grows falls stays small large stable quick slow bright quiet "
    "on under over near with without before after and but so because while"
).split()


def _sentence(rng: random.Random) -> str:
    n = rng.randint(5, 12)
    words = [rng.choice(_WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + rng.choice(".!?")


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~80 documents of seeded pseudo-English in a directory (data.path), identical across runs."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(1234)
    for i in range(80):
        paragraphs = [" ".join(_sentence(rng) for _ in range(rng.randint(3, 8))) for _ in range(rng.randint(2, 5))]
        (root / f"doc_{i:03d}.txt").write_text("\n\n".join(paragraphs) + "\n")
    return root


def tiny_overrides(corpus: Path, cache: Path, moe: bool = False, **extra: object) -> list[str]:
    """``--set`` strings for a 2-layer, width-32 model on ``corpus`` (byte-level BPE with 512 tokens)."""
    sets = {
        "name": '"tiny-test"',
        "data.path": f'"{corpus}"',
        "data.cache_dir": f'"{cache}"',
        "data.tokenizer": '"bpe-512"',
        "data.seq_len": 32,
        "data.val_fraction": 0.1,
        "model.vocab_size": 512,
        "model.hidden": 32,
        "model.n_layers": 2,
        "model.n_heads": 2,
        "model.n_kv_heads": 1,
        "model.mlp_hidden": 64,
        "model.max_seq_len": 32,
        "train.batch_size": 4,
        "train.max_steps": 6,
        "train.eval_every": 3,
        "train.eval_batches": 2,
        "train.ckpt_every": 3,
        "train.log_every": 1,
        "train.device": '"cpu"',  # CPU tests never pick a GPU by accident (auto would take CUDA + bf16 autocast)
        "log.wandb": '"disabled"',
        "log.progress": "false",
    }
    if moe:
        sets.update({"model.moe.num_experts": 4, "model.moe.top_k": 2, "model.moe.expert_hidden": 32,
                     "model.moe.aux_weight": 0.01})
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]
