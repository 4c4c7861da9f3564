"""How sure the gate may be: a paired bootstrap of the difference of one metric between two models scored on the
same rows, and weighted metrics fast enough to run it a thousand times.

Each replicate resamples the rows with replacement; instead of materialising the resample, it weighs every row
by how many times it was drawn (a multinomial count), and both models are judged on the same weights: the
interval is of the difference on the same events, so what makes every model look better or worse on these rows
(an easy week) cancels out. The interval is the percentile interval of the replicates' differences,
challenger minus champion in the metric's own units.

A metric here is ``metric(y, scores, weights) -> float``: ``weights`` None (every row once) or one weight per
row. A metric marked ``batched`` also takes a (k, n) matrix of k replicates' weights and returns k values: the
bootstrap then evaluates its replicates in blocks (one sort per block, not per replicate); an unmarked one is
called once per replicate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Metric = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], Any]

# Rows x replicates per block of a batched metric: a few MB of weights, in the CPU's cache.
BLOCK_CELLS = 1_500_000


class Interval(BaseModel):
    """A bootstrap confidence interval of ``metric``'s difference, challenger minus champion, on the same rows:
    ``point`` on the rows as they are, [``low``, ``high``] at confidence ``level`` from ``samples`` replicates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str = Field(min_length=1)
    level: float = Field(gt=0, lt=1)
    samples: int = Field(ge=1)
    low: float
    high: float
    point: float

    def level_text(self) -> str:
        """``95%``, ``97.5%``."""
        return f"{self.level * 100:g}%"

    def describe(self) -> str:
        """``+0.0062 [-0.0031, +0.0154] 95%``."""
        return f"{self.point:+.4f} [{self.low:+.4f}, {self.high:+.4f}] {self.level_text()}"


def batched(metric: Metric) -> Metric:
    """Mark ``metric`` as taking a (k, n) weight matrix and returning k values (see the module's doc)."""
    metric.batched = True  # type: ignore[attr-defined]
    return metric


def _labels(y: np.ndarray) -> np.ndarray:
    return np.asarray(y).astype(bool)


def _weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    """``weights`` as floats (n,) or (k, n) (their own float width kept), or ones."""
    if weights is None:
        return np.ones(n)
    weights = np.asarray(weights)
    return weights if weights.dtype.kind == "f" else weights.astype("float64")


def _result(values: np.ndarray) -> float | np.ndarray:
    return float(values) if np.ndim(values) == 0 else values


@batched
def weighted_roc_auc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float | np.ndarray:
    """ROC AUC with per-row weights: the weighted share of (positive, negative) pairs the scores order rightly,
    tied pairs counting half (sklearn's ``roc_auc_score`` with ``sample_weight``). The negatives are sorted once
    by score; each positive adds its weight times the cumulative weight of the negatives below it (plus half of
    those tied with it), found by binary search. NaN when the weights leave no positive or no negative."""
    y, scores = _labels(y), np.asarray(scores, dtype="float64")
    w = _weights(weights, len(y)).T  # one row per data row, one column per replicate
    negatives = np.flatnonzero(~y)
    negatives = negatives[np.argsort(scores[negatives], kind="stable")]
    ranked = scores[negatives]
    w_pos, w_neg = w[y], w[negatives]
    below = np.concatenate([np.zeros((1, *w.shape[1:]), w.dtype), np.cumsum(w_neg, axis=0)])
    lo = np.searchsorted(ranked, scores[y], side="left")
    hi = np.searchsorted(ranked, scores[y], side="right")
    pairs = below[lo] if np.array_equal(lo, hi) else (below[lo] + below[hi]) * 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (w_pos * pairs).sum(0, dtype="float64") / (w_pos.sum(0, dtype="float64")
                                                        * w_neg.sum(0, dtype="float64"))
    return _result(auc)


@batched
def weighted_log_loss(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None) -> float | np.ndarray:
    """Mean binary cross-entropy of probabilities ``p`` (already clipped away from 0 and 1), weighted."""
    y, p = _labels(y), np.asarray(p, dtype="float64")
    losses = -np.log(np.where(y, p, 1.0 - p))
    w = _weights(weights, len(y))
    # In the weights' own width: a float32 product with float64 losses would leave BLAS for a slow loop.
    return _result((w @ losses.astype(w.dtype)) / w.sum(-1, dtype="float64"))


def _confusion(y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None, threshold: float):
    """Weighted (true positives, flagged, positives) of ``scores > threshold``."""
    y, flagged = _labels(y), np.asarray(scores, dtype="float64") > threshold
    w = _weights(weights, len(y))
    return w @ (flagged & y).astype(w.dtype), w @ flagged.astype(w.dtype), w @ y.astype(w.dtype)


def _precision(tp, flagged):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(flagged > 0, tp / flagged, 0.0)  # nothing flagged: precision 0, as sklearn's zero_division


def _recall(tp, positives):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positives > 0, tp / positives, np.nan)


def _f1(precision, recall):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)


def weighted_precision(y, scores, weights=None, *, threshold: float) -> float | np.ndarray:
    """Weighted precision of ``scores > threshold`` (0 when nothing is flagged)."""
    tp, flagged, _ = _confusion(y, scores, weights, threshold)
    return _result(_precision(tp, flagged))


def weighted_recall(y, scores, weights=None, *, threshold: float) -> float | np.ndarray:
    """Weighted recall of ``scores > threshold`` (NaN without a positive)."""
    tp, _, positives = _confusion(y, scores, weights, threshold)
    return _result(_recall(tp, positives))


def weighted_f1(y, scores, weights=None, *, threshold: float) -> float | np.ndarray:
    """Weighted F1 of ``scores > threshold`` (0 when precision and recall are both 0)."""
    tp, flagged, positives = _confusion(y, scores, weights, threshold)
    return _result(_f1(_precision(tp, flagged), _recall(tp, positives)))


def at_threshold(threshold: float) -> dict[str, Metric]:
    """Batched precision, recall and F1 of ``scores > threshold``, by name."""
    def bind(fn):
        return batched(lambda y, scores, weights=None: fn(y, scores, weights, threshold=threshold))

    return {"precision": bind(weighted_precision), "recall": bind(weighted_recall), "f1": bind(weighted_f1)}


def _replicates(metric: Metric, y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    if getattr(metric, "batched", False):
        return np.asarray(metric(y, scores, weights), dtype="float64").reshape(len(weights))
    return np.array([metric(y, scores, w) for w in weights], dtype="float64")


def paired_bootstrap(y: np.ndarray, challenger_scores: np.ndarray, champion_scores: np.ndarray, metric: Metric,
                     *, champion_metric: Metric | None = None, name: str | None = None, samples: int = 1000,
                     level: float = 0.95, seed: int = 0) -> Interval:
    """The ``level`` percentile interval of ``metric(challenger) - metric(champion)`` over ``samples`` paired
    resamples of the rows (the same rows, the same draws for both models).

    ``champion_metric``: the champion's own metric when it differs (a threshold that travelled with it; default
    ``metric``). ``name``: the metric's name in the interval (default the function's). Deterministic for
    ``seed``. Replicates where a metric is undefined (a resample without a positive) are left out. Raises
    ValueError on rows of different lengths, no rows, or no replicate where both metrics are defined.
    """
    name = name or getattr(metric, "__name__", "metric")
    return paired_bootstraps(y, challenger_scores, champion_scores, {name: metric},
                             champion_metrics={name: champion_metric or metric}, samples=samples, level=level,
                             seed=seed)[name]


def paired_bootstraps(y: np.ndarray, challenger_scores: np.ndarray, champion_scores: np.ndarray,
                      metrics: Mapping[str, Metric], *, champion_metrics: Mapping[str, Metric] | None = None,
                      samples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """``paired_bootstrap`` of several metrics on the same resamples (drawn once): name -> interval.

    ``champion_metrics``: the champion's own function of each metric that differs (default ``metrics``'). The
    draws depend on the number of rows, ``samples`` and ``seed`` only. Raises ValueError as ``paired_bootstrap``
    does, naming the metric.
    """
    y = np.asarray(y)
    challenger_scores, champion_scores = np.asarray(challenger_scores), np.asarray(champion_scores)
    n = len(y)
    if not n or len(challenger_scores) != n or len(champion_scores) != n:
        raise ValueError(f"a paired bootstrap needs the same rows for both models: {n} labels, "
                         f"{len(challenger_scores)} and {len(champion_scores)} scores")
    if not 0 < level < 1 or samples < 1:
        raise ValueError(f"level must lie in (0, 1) and samples be positive, not {level} and {samples}")
    pairs = {k: (fn, (champion_metrics or {}).get(k) or fn) for k, fn in metrics.items()}
    points = {k: float(ours(y, challenger_scores, None)) - float(theirs(y, champion_scores, None))
              for k, (ours, theirs) in pairs.items()}
    rng = np.random.default_rng(seed)
    block = max(1, min(samples, BLOCK_CELLS // n))
    counts = "float32" if n < 2**24 else "float64"  # whole counts and their sums stay exact in float32
    index = np.int32 if block * n < 2**31 else np.int64
    diffs: dict[str, list[np.ndarray]] = {k: [] for k in pairs}
    for start in range(0, samples, block):
        k = min(block, samples - start)
        drawn = rng.integers(0, n, (k, n), dtype=index)
        drawn += (np.arange(k, dtype=index) * n)[:, None]  # replicate r's rows counted in bins r * n ...
        weights = np.bincount(drawn.ravel(), minlength=k * n).reshape(k, n).astype(counts)
        for name, (ours, theirs) in pairs.items():
            diffs[name].append(_replicates(ours, y, challenger_scores, weights)
                               - _replicates(theirs, y, champion_scores, weights))
    intervals = {}
    for name, parts in diffs.items():
        diff = np.concatenate(parts)
        diff = diff[np.isfinite(diff)]
        if not len(diff):
            raise ValueError(f"no bootstrap replicate of {samples} has {name} defined for both models")
        low, high = np.quantile(diff, [(1 - level) / 2, (1 + level) / 2])
        intervals[name] = Interval(metric=name, level=level, samples=samples, low=float(low), high=float(high),
                                   point=points[name])
    return intervals
