"""Where the best lr sits and whether HyperP predicted it: the bookkeeping of ``python -m train.transfer_check``.

Pure functions of loss tables, no training. Learning rates live on a ×2 grid around a centre lr: grid step ``k``
is ``centre·2^k``, so a distance in steps is a factor of 2 per step. A *curve* maps grid steps to the final loss of
one scale (``inf`` for a run that diverged). The rule's prediction for every scale is the optimum of the base scale:
HyperP gives each scale its lr as ``base lr × transfer factor``, so in base-lr coordinates the optimum should not move.

- :func:`locate`: the optimum of one curve as a point (the vertex of the parabola through the best grid point and its
  two neighbours, in log₂ lr) or, where a neighbour is missing, as an interval. Under a parabola, L(a) < L(b) means
  the vertex is nearer a than b, so a grid minimum at k bounds the vertex to (k − ½, k + ½) even when a neighbour
  diverged, and a minimum at the low edge of the grid bounds it to (−∞, k + ½].
- :func:`judge`: one scale against the base — the shift in grid steps (point and interval), the loss lost by
  training at the predicted lr instead of the best one (*regret*), and the verdict: PASS when the regret is within
  the seed noise (the difference is not meaningful) or the whole shift interval is within the tolerance, FAIL when
  the interval lies entirely outside it, INCONCLUSIVE otherwise (the optimum is at the edge of the grid).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


@dataclass(frozen=True)
class Optimum:
    """The optimum of one curve in grid steps: ``estimate`` (vertex or grid argmin), the interval [lo, hi] that must
    contain it, the grid argmin ``best`` and its ``loss``."""

    estimate: float
    lo: float
    hi: float
    best: int
    loss: float

    @property
    def at_edge(self) -> int:
        """−1 / +1 when the grid minimum is the lowest / highest lr of the curve (the grid should grow there)."""
        return -1 if self.lo == -math.inf else 1 if self.hi == math.inf else 0


def _finite(loss: float) -> float:
    """A NaN loss (diverged evaluation) ranks like a diverged run: worse than every finite loss."""
    return math.inf if math.isnan(loss) else loss


def vertex(k: int, left: float, mid: float, right: float) -> float:
    """Vertex of the parabola through (k−1, left), (k, mid), (k+1, right) with ``mid`` the smallest: in (k−½, k+½)."""
    curvature = left - 2 * mid + right
    return k + 0.5 * (left - right) / curvature if curvature > 0 else float(k)


def locate(curve: Mapping[int, float]) -> Optimum | None:
    """The optimum of ``{grid step: loss}``; None when every run diverged (or the curve is empty)."""
    losses = {k: _finite(v) for k, v in curve.items()}
    finite = [k for k, v in losses.items() if math.isfinite(v)]
    if not finite:
        return None
    best = min(finite, key=lambda k: (losses[k], k))
    left, right = losses.get(best - 1), losses.get(best + 1)
    lo = -math.inf if left is None else best - 0.5
    hi = math.inf if right is None else best + 0.5
    if left is not None and right is not None and math.isfinite(left) and math.isfinite(right):
        point = vertex(best, left, losses[best], right)
        return Optimum(point, point, point, best, losses[best])
    return Optimum(float(best), lo, hi, best, losses[best])


def meaningful_difference(seed_losses: Sequence[float]) -> float:
    """Two standard deviations of the difference of two single-seed losses: 2·√2·σ, σ the seeds' sample std.

    NaN with fewer than two finite values (then no difference is judged "within noise")."""
    values = [v for v in seed_losses if math.isfinite(v)]
    if len(values) < 2:
        return math.nan
    return 2.0 * math.sqrt(2.0) * statistics.stdev(values)


@dataclass(frozen=True)
class Judgement:
    shift: float  # estimate − base estimate, in grid steps (×2 each)
    shift_lo: float
    shift_hi: float
    regret: float  # loss at the base's best grid lr − this scale's best loss (nan when that lr was not run)
    verdict: str
    why: str


def judge(opt: Optimum | None, base: Optimum | None, curve: Mapping[int, float], tolerance: float,
          noise: float) -> Judgement:
    """One scale's optimum against the base's (the rule's prediction); ``noise`` from :func:`meaningful_difference`."""
    if base is None:
        return Judgement(math.nan, math.nan, math.nan, math.nan, INCONCLUSIVE, "every run of the base scale diverged")
    if opt is None:  # the base trains at these lrs, this scale at none of them: the rule's lrs are far off
        return Judgement(math.nan, math.nan, math.nan, math.inf, FAIL, "every run of this scale diverged")
    shift = opt.estimate - base.estimate
    shift_lo, shift_hi = opt.lo - base.hi, opt.hi - base.lo
    regret = _finite(curve[base.best]) - opt.loss if base.best in curve else math.nan
    if math.isfinite(noise) and regret <= noise:
        verdict, why = PASS, f"loss at the predicted lr within noise ({regret:.3g} ≤ {noise:.3g})"
    elif -tolerance <= shift_lo and shift_hi <= tolerance:
        verdict, why = PASS, f"|shift| ≤ {tolerance:g} step"
    elif shift_lo > tolerance or shift_hi < -tolerance:
        verdict, why = FAIL, f"|shift| > {tolerance:g} step" + (f", regret {regret:.3g} > noise {noise:.3g}"
                                                                 if math.isfinite(noise) else "")
    else:
        verdict, why = INCONCLUSIVE, "optimum at the grid edge: the shift may or may not exceed the tolerance"
    return Judgement(shift, shift_lo, shift_hi, regret, verdict, why)


def combine(verdicts: Iterable[str]) -> str:
    """FAIL if any FAIL, else INCONCLUSIVE if any, else PASS (an empty list is INCONCLUSIVE: nothing was judged)."""
    seen = set(verdicts)
    if FAIL in seen:
        return FAIL
    return INCONCLUSIVE if INCONCLUSIVE in seen or not seen else PASS
