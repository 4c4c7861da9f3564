"""Live metrics: the scorer's predictions joined with the labels that arrive later on flights.completed.

``label_predictions`` and ``metrics_by`` are pure (frames in, frames out) and serve any grouping: per model
version, per month, per day; ``ml.topic_reader.read_topic`` loads the topics into frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from use_cases.flight_delay.evaluation import EPS, metrics

CALIBRATION_BINS = 10


def label_predictions(predictions: pd.DataFrame, completed: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per predicted flight that has a label: the prediction's columns plus ``delayed`` (bool) and
    ``month`` from flights.completed; and how many duplicate predictions were dropped.

    A flight scored twice (at-least-once delivery after a restart or rebalance) keeps its first prediction
    by ``scored_at``: that is the one a consumer acted on. Flights without a completed record yet (labels
    arrive late) are left out.
    """
    ordered = predictions.sort_values(["scored_at", "flight_id"], kind="stable")
    first = ordered.drop_duplicates("flight_id", keep="first")
    labels = completed[["flight_id", "delayed", "month"]].drop_duplicates("flight_id", keep="last")
    # The prediction's own ``delayed`` is the scorer's decision at its threshold; the label replaces it.
    joined = first.rename(columns={"delayed": "decision"}).drop(columns=["month"], errors="ignore").merge(
        labels, on="flight_id", how="inner", validate="one_to_one")
    return joined.reset_index(drop=True), len(predictions) - len(first)


def metrics_by(labelled: pd.DataFrame, keys: str | Sequence[str], probability: str = "probability"
               ) -> pd.DataFrame:
    """Per group of ``keys``: predictions, positive_rate, roc_auc, log_loss, brier, mean_prediction, and the
    first/last ``scored_at`` when present. AUC and log loss are NaN for a group holding one class only."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    rows = []
    for key, group in labelled.groupby(keys, sort=True):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        y, p = group["delayed"].to_numpy(dtype="int64"), group[probability].to_numpy(dtype="float64")
        try:
            m = metrics(y, p)
        except ValueError:  # a single class: ranking metrics are undefined
            m = {"roc_auc": np.nan, "log_loss": np.nan, "brier": np.nan, "positive_rate": float(y.mean()),
                 "mean_prediction": float(p.mean()), "rows": len(y)}
        row.update(predictions=m.pop("rows"), **m)
        if "scored_at" in group:
            row.update(first_scored_at=group["scored_at"].min(), last_scored_at=group["scored_at"].max())
        rows.append(row)
    columns = [*keys, "predictions", "roc_auc", "log_loss", "brier", "positive_rate", "mean_prediction"]
    return pd.DataFrame(rows, columns=columns + (["first_scored_at", "last_scored_at"]
                                                 if "scored_at" in labelled else []))


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error: the rows' share-weighted gap between mean prediction and delay rate over
    ``bins`` equal-width probability bins."""
    y, p = np.asarray(y, dtype="float64"), np.asarray(p, dtype="float64")
    if not len(y):
        return float("nan")
    which = np.minimum((p * bins).astype("int64"), bins - 1)
    n = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, p, bins) - np.bincount(which, y, bins))
    return float(gap.sum() / len(y)) if n.any() else float("nan")


def live_metrics(y: np.ndarray, p: np.ndarray, decisions: np.ndarray) -> dict[str, float]:
    """The monitor's metrics of labelled predictions: roc_auc, log_loss, calibration_error, positive_rate (of the
    labels), predicted_positive_rate (of the decisions), mean_prediction; ranking metrics NaN on one class."""
    y = np.asarray(y, dtype="int64")
    p = np.clip(np.asarray(p, dtype="float64"), EPS, 1 - EPS)
    try:
        m = metrics(y, p)
        auc, loss = m["roc_auc"], m["log_loss"]
    except ValueError:
        auc = loss = float("nan")
    return {"roc_auc": auc, "log_loss": loss, "calibration_error": calibration_error(y, p),
            "positive_rate": float(y.mean()) if len(y) else float("nan"),
            "predicted_positive_rate": float(np.mean(decisions)) if len(y) else float("nan"),
            "mean_prediction": float(p.mean()) if len(y) else float("nan")}
