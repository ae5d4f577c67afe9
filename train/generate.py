"""``python -m train.generate --run RUN_DIR --prompt "..." [--max-new-tokens N] [--temperature T] [--top-k K]``."""

from __future__ import annotations

import argparse
import sys

import torch

from hyperp.errors import ConfigError
from models.qwen3 import Qwen3
from train.cli import run_cli, utf8_path


@torch.no_grad()
def sample(model: Qwen3, ids: list[int], max_new_tokens: int, temperature: float = 0.8, top_k: int | None = 50,
           eos_id: int | None = None, generator: torch.Generator | None = None) -> list[int]:
    """Autoregressive sampling (greedy when temperature == 0), cropping the context to max_seq_len."""
    out = list(ids)
    for _ in range(max_new_tokens):
        context = torch.tensor([out[-model.config.max_seq_len:]])
        logits = model(context).logits[0, -1].float()
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits[logits < kth] = -float("inf")
            nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        out.append(nxt)
        if eos_id is not None and nxt == eos_id:
            break
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.generate", description="Sample text from a run.")
    parser.add_argument("--run", required=True, help="run directory (runs/NAME)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def command() -> None:
        if args.max_new_tokens < 1 or args.temperature < 0 or args.top_k < 1:
            raise ConfigError("--max-new-tokens and --top-k must be >= 1 and --temperature >= 0")
        from train.checkpoint import load_model_from_run

        model, tokenizer = load_model_from_run(utf8_path("--run", args.run))
        if tokenizer is None:
            raise ConfigError(f"run {args.run} has no saved tokenizer (trained on pre-tokenized data)")
        ids = tokenizer.encode(args.prompt) or [tokenizer.eos_id]
        gen = torch.Generator().manual_seed(args.seed)
        out = sample(model, ids, args.max_new_tokens, args.temperature, args.top_k, tokenizer.eos_id, gen)
        print(tokenizer.decode(out))

    return run_cli(command)


if __name__ == "__main__":
    sys.exit(main())
