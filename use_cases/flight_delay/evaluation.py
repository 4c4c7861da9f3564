"""How a delay model is judged: P(delayed) on labelled rows, through its own preprocessing, and the metrics of
those probabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

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


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """roc_auc, log_loss, brier, positive_rate (of labels), mean_prediction and rows.

    Raises ValueError when ``y`` holds a single class (AUC is undefined: the rows are too few).
    """
    y = np.asarray(y, dtype="int64")
    p = np.clip(np.asarray(p, dtype="float64"), EPS, 1 - EPS)
    if len(np.unique(y)) < 2:
        raise ValueError(f"cannot evaluate on {len(y)} rows holding a single class")
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "positive_rate": float(y.mean()),
        "mean_prediction": float(p.mean()),
        "rows": int(len(y)),
    }
