"""``python -m train.generate --run runs/NAME [--prompt TEXT | --prompt-file PATH] [--num-samples N] …``: sample
text from a run's checkpoint (single-file or distributed), stopping at the end-of-text token."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor

from hyperp.errors import ConfigError
from models.qwen3 import Qwen3
from train.cli import Parser, add_run_args, run_cli, utf8_path


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Keep the ``top_k`` largest logits (0: all) and, of those, the smallest set of most likely tokens whose
    probability reaches ``top_p`` (nucleus sampling, Holtzman et al. 2019; 1.0: all); the rest become -inf."""
    logits = logits.clone()
    if 0 < top_k < logits.numel():
        logits[logits < torch.topk(logits, top_k).values[-1]] = -float("inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        before = torch.softmax(sorted_logits, -1).cumsum(-1) - torch.softmax(sorted_logits, -1)
        logits[order[before >= top_p]] = -float("inf")  # mass before a token already reaches p: drop it
    return logits


@torch.no_grad()
def sample(model: Qwen3, ids: list[int], max_new_tokens: int, temperature: float = 0.8, top_k: int = 0,
           top_p: float = 1.0, eos_id: int | None = None, generator: torch.Generator | None = None) -> list[int]:
    """The new tokens after ``ids`` (greedy when temperature == 0), up to and without the first ``eos_id``; the
    context is cropped to the model's max_seq_len."""
    device = next(model.parameters()).device
    out = list(ids)
    for _ in range(max_new_tokens):
        context = torch.tensor([out[-model.config.max_seq_len:]], device=device)
        logits = model(context).logits[0, -1].float().cpu()
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), -1)
            nxt = int(torch.multinomial(probs, 1, generator=generator))
        if nxt == eos_id:
            break
        out.append(nxt)
    return out[len(ids):]


def build_parser() -> Parser:
    parser = Parser("python -m train.generate", "Sample text from a run's checkpoint; each sample stops at the "
                    "end-of-text token or after --max-new-tokens.")
    add_run_args(parser, "sample from")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help="text to continue (empty: start after an end-of-text token)")
    prompt.add_argument("--prompt-file", type=Path, default=None, metavar="PATH", help="read the prompt from a file")
    parser.add_argument("--num-samples", type=int, default=1, metavar="N", help="independent samples to draw")
    parser.add_argument("--max-new-tokens", type=int, default=100, metavar="N", help="tokens per sample at most")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy")
    parser.add_argument("--top-k", type=int, default=50, metavar="K", help="sample among the K most likely; 0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, metavar="P",
                        help="nucleus: the most likely tokens holding probability P; 1 = off")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (samples are reproducible)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the model runs")
    return parser


def _check(args) -> None:
    if args.num_samples < 1 or args.max_new_tokens < 1:
        raise ConfigError("--num-samples and --max-new-tokens must be >= 1")
    if args.temperature < 0 or args.top_k < 0 or not 0 < args.top_p <= 1:
        raise ConfigError("--temperature and --top-k must be >= 0 and --top-p in (0, 1]")


def generate(argv: list[str] | None) -> None:
    from train.build import resolve_device
    from train.checkpoint import load_model_from_run

    args = build_parser().parse_args(argv)
    _check(args)
    text = args.prompt_file.read_text(encoding="utf-8") if args.prompt_file is not None else args.prompt
    model, tokenizer = load_model_from_run(utf8_path("--run", args.run), step=args.checkpoint)
    if tokenizer is None:
        raise ConfigError(f"run {args.run} has no saved tokenizer (trained on pre-tokenized data)")
    model.to(resolve_device(args.device))
    ids = tokenizer.encode(text) or [tokenizer.eos_id]
    gen = torch.Generator().manual_seed(args.seed)
    for i in range(args.num_samples):
        new = sample(model, ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p, tokenizer.eos_id, gen)
        if args.num_samples > 1:
            print(f"--- sample {i + 1}/{args.num_samples}")
        print(text + tokenizer.decode(new), flush=True)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: generate(argv))


if __name__ == "__main__":
    sys.exit(main())
