"""Evaluation: held-out loss / bits per byte / perplexity, and lm-evaluation-harness tasks.

- :mod:`train.eval.scoring`: the scoring core (sums of token log-losses and bytes), used by the training loop's
  per-source validation, by the command line and by the harness adapter;
- :mod:`train.eval.harness`: ``HyperpLM``, our model as an lm-eval ``LM`` (optional extra ``lm-eval``);
- ``python -m train.eval MODEL --text PATH`` / ``--tasks NAMES`` (:mod:`train.eval.__main__`), MODEL a run
  directory or an exported model directory.
"""

from __future__ import annotations

from train.eval.scoring import Score, rolling_windows, score_batches, target_logprobs

__all__ = ["Score", "rolling_windows", "score_batches", "target_logprobs"]
