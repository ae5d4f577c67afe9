"""``python -m train.eval MODEL (--text PATH … | --tasks NAMES) [--seq-len N] [--batch-size B] [--out FILE]``.

MODEL is a run directory (its newest valid checkpoint and saved tokenizer) or a directory written by
``python -m train.export`` (any Qwen3 / Qwen3-MoE ``save_pretrained`` directory with its tokenizer).

- ``--text PATH``: a text file or a directory of ``*.txt/*.md/*.rst`` (read like ``data.path``; ``--doc-separator``
  splits files into documents). Each document is scored on its own, every token once, conditioned on EOS, in
  windows of ``--seq-len`` (default: the model's ``max_seq_len``) — lm-eval's ``loglikelihood_rolling``. Prints
  per path: documents, tokens, bytes, loss (nats/token), bits per byte and perplexity.
- ``--tasks hellaswag,arc_easy``: lm-evaluation-harness tasks on the in-process adapter
  (:class:`train.eval.harness.HyperpLM`; needs ``pip install -e .[eval]``). Hub tasks download their datasets;
  ``--include-path DIR`` adds local YAML tasks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

from hyperp.errors import ConfigError, HyperpError
from models.qwen3 import Qwen3
from train.eval.scoring import Score, rolling_windows, target_logprobs
from train.tokenizer import Tokenizer, token_byte_lengths


def load_model(path: Path) -> tuple[Qwen3, Tokenizer | None]:
    """A run directory (newest valid checkpoint) or an exported model directory, with its tokenizer."""
    from train.checkpoint import checkpoint_dir, load_model_from_run
    from train.tokenizer import load_tokenizer

    if checkpoint_dir(path).is_dir():
        return load_model_from_run(path)
    if (path / "config.json").is_file():
        from models.hf import load_export

        has_tokenizer = (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
        return load_export(path), load_tokenizer(str(path)) if has_tokenizer else None
    raise ConfigError(f"{path} is neither a run directory (checkpoints/) nor an exported model (config.json)")


def score_text(model: Qwen3, tokenizer: Tokenizer, path: Path, seq_len: int, batch_size: int,
               device: torch.device, separator: str | None = None) -> tuple[Score, int]:
    """(score, number of documents) of the text at ``path``; every document scored on its own."""
    from train.data.corpus import read_text_path

    docs, _ = read_text_path(path, separator)
    windows = [w for doc in docs for w in rolling_windows(tokenizer.encode(doc.text), tokenizer.eos_id, seq_len)]
    token_bytes = torch.from_numpy(token_byte_lengths(tokenizer))
    score = Score()
    for (_, targets), (logprobs, _) in zip(windows, target_logprobs(model, windows, batch_size, device,
                                                                     tokenizer.eos_id, _autocast(device))):
        score.add(logprobs, torch.tensor(targets), token_bytes)
    return score, len(docs)


def _autocast(device: torch.device):
    """bf16 autocast on CUDA (fp32 master weights, like training's ``dtype = "auto"``), fp32 elsewhere."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def run_tasks(model: Qwen3, tokenizer: Tokenizer, args: argparse.Namespace, device: torch.device) -> dict:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("--tasks needs lm-evaluation-harness: pip install -e .[eval]") from None
    from train.eval.harness import HyperpLM

    manager = TaskManager(include_path=args.include_path)
    names = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in names if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"unknown lm-eval task(s) {', '.join(unknown)} (see lm_eval --tasks list; local YAML tasks "
                          "need --include-path DIR)")
    lm = HyperpLM(model, tokenizer, args.batch_size, device, _autocast(device))
    results = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=args.num_fewshot, limit=args.limit,
                                      task_manager=manager, log_samples=False)
    print(lm_eval.utils.make_table(results))
    return {"tasks": results["results"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.eval", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="run directory or exported model directory")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", type=Path, nargs="+", help="text files or directories to score")
    what.add_argument("--tasks", help="comma-separated lm-eval task names")
    parser.add_argument("--seq-len", type=int, default=None, help="window length (default: model.max_seq_len)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--doc-separator", default=None, help="split text files into documents ('blank' = blank lines)")
    parser.add_argument("--include-path", default=None, help="directory of extra lm-eval YAML tasks")
    parser.add_argument("--num-fewshot", type=int, default=None)
    parser.add_argument("--limit", type=float, default=None, help="lm-eval: examples per task (testing only)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from train.build import resolve_device

    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model)
    if tokenizer is None:
        raise ConfigError(f"{args.model} has no saved tokenizer (trained on pre-tokenized data): nothing to encode text with")
    model.to(device)
    if args.tasks is not None:
        return run_tasks(model, tokenizer, args, device)
    seq_len = args.seq_len or model.config.max_seq_len
    if not 1 <= seq_len <= model.config.max_seq_len or args.batch_size < 1:
        raise ConfigError(f"--seq-len must be in [1, {model.config.max_seq_len}] (model.max_seq_len) and "
                          "--batch-size >= 1")
    print("| text | documents | tokens | bytes | loss | bits/byte | perplexity |\n|---|---|---|---|---|---|---|")
    results = {}
    for path in args.text:
        score, n_docs = score_text(model, tokenizer, path, seq_len, args.batch_size, device, args.doc_separator)
        results[str(path)] = {"documents": n_docs, "tokens": int(score.tokens), "bytes": int(score.bytes),
                              "loss": score.loss, "bpb": score.bpb, "perplexity": score.perplexity}
        print(f"| {path} | {n_docs} | {int(score.tokens)} | {int(score.bytes)} | {score.loss:.4f} | {score.bpb:.4f} | "
              f"{score.perplexity:.2f} |")
    return {"text": results, "seq_len": seq_len}


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        results = run(args)
        if args.out is not None:
            args.out.write_text(json.dumps(results, indent=1, default=str))
    except HyperpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an unreadable model file, an unwritable --out: the path and the reason
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot access{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
