"""Live metrics of the sensor scorer: its decisions (``score > threshold`` at the model's own threshold) joined
with the readings' labels, which the replay carries and a live line would add later."""

from __future__ import annotations

import numpy as np


def live_metrics(y: np.ndarray, scores: np.ndarray, decisions: np.ndarray) -> dict[str, float]:
    """precision, recall and f1 of the decisions, flagged_rate, positive_rate (of the labels), mean_score;
    precision is NaN when nothing was flagged, recall and f1 NaN without a labelled anomaly."""
    y, flagged = np.asarray(y, dtype=bool), np.asarray(decisions, dtype=bool)
    if not len(y):
        return dict.fromkeys(("precision", "recall", "f1", "flagged_rate", "positive_rate", "mean_score"),
                             float("nan"))
    tp = float(np.sum(flagged & y))
    precision = tp / flagged.sum() if flagged.any() else float("nan")
    recall = tp / y.sum() if y.any() else float("nan")
    if np.isnan(precision) or np.isnan(recall):
        f1 = 0.0 if y.any() else float("nan")
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "flagged_rate": float(flagged.mean()), "positive_rate": float(y.mean()),
            "mean_score": float(np.mean(scores))}
