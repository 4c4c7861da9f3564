"""Live metrics: predictions joined with late labels, grouped per model version and per month; swap gaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from infra.demo.report import swap_gaps, throughput
from use_cases.flight_delay.live_metrics import label_predictions, metrics_by


def at(ms: int) -> pd.Timestamp:
    return pd.Timestamp(ms, unit="ms", tz="UTC")


def predictions(rows: list[tuple[str, float, int, int]]) -> pd.DataFrame:
    """(flight_id, probability, model_version, scored_at ms) -> a frame shaped like flights.predictions."""
    return pd.DataFrame({"flight_id": [r[0] for r in rows], "probability": [r[1] for r in rows],
                         "delayed": [r[1] >= 0.5 for r in rows], "model_version": [r[2] for r in rows],
                         "scored_at": [at(r[3]) for r in rows]})


COMPLETED = pd.DataFrame({"flight_id": ["a", "b", "c", "d", "e", "f"], "month": [1, 1, 1, 2, 2, 2],
                          "delayed": [True, False, False, True, False, True]})


def test_join_keeps_the_first_prediction_of_a_flight_and_drops_unlabelled_ones():
    preds = predictions([("a", 0.9, 1, 10), ("b", 0.2, 1, 10), ("a", 0.1, 2, 50), ("x", 0.5, 1, 10),
                         ("d", 0.7, 2, 60)])
    joined, duplicates = label_predictions(preds, COMPLETED)
    assert duplicates == 1
    assert joined.set_index("flight_id")[["probability", "model_version", "month", "delayed"]].to_dict("index") == {
        "a": {"probability": 0.9, "model_version": 1, "month": 1, "delayed": True},
        "b": {"probability": 0.2, "model_version": 1, "month": 1, "delayed": False},
        "d": {"probability": 0.7, "model_version": 2, "month": 2, "delayed": True}}
    assert joined.set_index("flight_id")["decision"].to_dict() == {"a": True, "b": False, "d": True}


def test_metrics_per_month_and_per_version_match_sklearn():
    preds = predictions([("a", 0.9, 1, 10), ("b", 0.2, 1, 11), ("c", 0.4, 1, 12),
                         ("d", 0.6, 2, 20), ("e", 0.7, 2, 21), ("f", 0.8, 2, 22)])
    joined, _ = label_predictions(preds, COMPLETED)
    by_month = metrics_by(joined, "month").set_index("month")
    assert by_month.loc[1, "predictions"] == 3 and by_month.loc[1, "roc_auc"] == 1.0
    assert by_month.loc[2, "roc_auc"] == pytest.approx(roc_auc_score([1, 0, 1], [0.6, 0.7, 0.8]))
    assert by_month.loc[2, "positive_rate"] == pytest.approx(2 / 3)
    assert by_month.loc[2, "first_scored_at"] == at(20) and by_month.loc[2, "last_scored_at"] == at(22)
    by_version = metrics_by(joined, "model_version").set_index("model_version")
    assert list(by_version["predictions"]) == [3, 3]


def test_a_single_class_group_has_no_auc_but_keeps_its_counts():
    preds = predictions([("b", 0.2, 1, 10), ("c", 0.4, 1, 12)])
    row = metrics_by(label_predictions(preds, COMPLETED)[0], "month").iloc[0]
    assert row["predictions"] == 2 and np.isnan(row["roc_auc"]) and row["positive_rate"] == 0.0


def test_swap_gap_is_the_pause_before_the_new_version_s_first_prediction():
    # v1 batches every 100 ms, then v2's first batch 450 ms after v1's last one.
    rows = [(f"f{i}", 0.5, 1, 1000 + 100 * i) for i in range(10)] + [("g0", 0.5, 2, 1900 + 450), ("g1", 0.5, 2, 2450)]
    (gap,) = swap_gaps(predictions(rows))
    assert gap == {"model_version": 2, "previous_version": 1, "gap_ms": 450, "typical_gap_ms": 100.0,
                   "last_old_ms": 1900, "first_new_ms": 2350}
    assert throughput(predictions(rows)) == {"predictions": 12, "seconds": 1.45, "per_s": round(12 / 1.45, 1),
                                             "peak_per_s": 10}


def test_a_rollback_to_an_older_version_is_a_swap_with_its_own_gap():
    rows = [(f"f{i}", 0.5, v, ms) for i, (v, ms) in enumerate([(1, 0), (1, 100), (2, 300), (2, 400), (1, 900),
                                                                (1, 1000)])]
    gaps = swap_gaps(predictions(rows))
    assert [(g["model_version"], g["previous_version"], g["gap_ms"]) for g in gaps] == [(2, 1, 200), (1, 2, 500)]
