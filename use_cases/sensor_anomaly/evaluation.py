"""How an autoencoder is judged: anomaly scores of readings, the threshold chosen on validation readings, and
precision, recall and F1 of ``score > threshold`` against the labels (each model at its own threshold, the one
that travelled with it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ml.bootstrap import Metric, at_threshold, weighted_roc_auc
from ml.keras_models import predict
from use_cases.sensor_anomaly.preprocessing import SensorPreprocessing, anomaly_score, transform

if TYPE_CHECKING:
    import keras

# Without a labelled anomaly in the validation readings, the threshold is this quantile of their scores.
FALLBACK_QUANTILE = 0.99


def score(model: keras.Model, fitted: SensorPreprocessing, data: pd.DataFrame | list[dict]) -> np.ndarray:
    """Anomaly score (reconstruction error) per reading, float64 (n,)."""
    x = transform(fitted, data)
    if len(x) == 0:
        return np.zeros(0)
    return anomaly_score(predict(model, x), x)


def choose_threshold(y: np.ndarray, scores: np.ndarray) -> tuple[float, str]:
    """The threshold maximising F1 of ``scores > threshold`` on labelled validation readings, and the method.

    The threshold sits halfway between the lowest flagged score and the next one below, so a slightly
    different score on the same reading does not flip it. Without a labelled anomaly, the
    ``FALLBACK_QUANTILE`` of the scores ("quantile"). Raises ValueError on no readings.
    """
    y, scores = np.asarray(y, dtype=bool), np.asarray(scores, dtype="float64")
    if len(scores) == 0:
        raise ValueError("cannot choose a threshold on zero readings")
    if not y.any():
        return max(float(np.quantile(scores, FALLBACK_QUANTILE)), 1e-12), "quantile"
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], y[order]
    tp = np.cumsum(hits)
    flagged = np.arange(1, len(scores) + 1)
    # Only cut where the score changes: ties are flagged together or not at all.
    cut = np.r_[ranked[1:] < ranked[:-1], True]
    f1 = np.where(cut, 2 * tp / (flagged + y.sum()), -1.0)
    k = int(np.argmax(f1))  # the top k + 1 readings are flagged
    below = ranked[k + 1] if k + 1 < len(ranked) else 0.0
    return max(float((ranked[k] + below) / 2), 1e-12), "max_f1"


def metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """precision, recall, f1 at ``threshold``, roc_auc of the scores, threshold, flagged_rate, positive_rate, rows.

    Raises ValueError when ``y`` holds a single class (recall or precision is undefined).
    """
    y = np.asarray(y, dtype=bool)
    if len(np.unique(y)) < 2:
        raise ValueError(f"cannot evaluate on {len(y)} readings holding a single class")
    scores = np.asarray(scores, dtype="float64")
    return {**{name: float(fn(y, scores)) for name, fn in metric_functions(threshold).items()},
            "roc_auc": float(weighted_roc_auc(y, scores)), "threshold": float(threshold),
            "flagged_rate": float((scores > threshold).mean()), "positive_rate": float(y.mean()), "rows": int(len(y))}


def metric_functions(threshold: float) -> dict[str, Metric]:
    """precision, recall and f1 of ``scores > threshold`` as functions of (labels, scores, weights): the
    bootstrap of the gate's interval reads them (``ml.bootstrap``)."""
    return at_threshold(threshold)
