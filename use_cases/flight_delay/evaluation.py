"""How a delay model is judged: P(delayed) on labelled rows, through its own preprocessing, and the metrics of
those probabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ml.bootstrap import batched, weighted_log_loss, weighted_roc_auc
from ml.keras_models import predict
from use_cases.flight_delay import preprocessing as prep

if TYPE_CHECKING:
    import keras

# Keeps log loss finite for a model that is certain and wrong.
EPS = 1e-7


def score(model: keras.Model, fitted: prep.FlightPreprocessing, data: pd.DataFrame | list[dict[str, Any]]
          ) -> np.ndarray:
    """P(delayed) per row, float64 (n,)."""
    return predict(model, prep.transform(fitted, data)).reshape(-1).astype("float64")


def _clipped(p: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(p, dtype="float64"), EPS, 1 - EPS)


@batched
def roc_auc(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None) -> float | np.ndarray:
    """ROC AUC of P(delayed) (clipped as for log loss), per-row ``weights`` optional (``ml.bootstrap``)."""
    return weighted_roc_auc(y, _clipped(p), weights)


@batched
def log_loss(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None) -> float | np.ndarray:
    """Log loss of P(delayed) clipped to [EPS, 1 - EPS], per-row ``weights`` optional (``ml.bootstrap``)."""
    return weighted_log_loss(y, _clipped(p), weights)


# The gate's metrics as functions of (labels, probabilities, weights): the bootstrap of its interval reads them.
METRICS = {"roc_auc": roc_auc, "log_loss": log_loss}


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """roc_auc, log_loss, brier, positive_rate (of labels), mean_prediction and rows.

    Raises ValueError when ``y`` holds a single class (AUC is undefined: the rows are too few).
    """
    y = np.asarray(y, dtype="int64")
    p = _clipped(p)
    if len(np.unique(y)) < 2:
        raise ValueError(f"cannot evaluate on {len(y)} rows holding a single class")
    return {
        **{name: float(fn(y, p)) for name, fn in METRICS.items()},
        "brier": float(np.mean((p - y) ** 2)),
        "positive_rate": float(y.mean()),
        "mean_prediction": float(p.mean()),
        "rows": int(len(y)),
    }
