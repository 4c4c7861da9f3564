"""Training on a real slice of flights: it learns, it is reproducible, its bytes load back safely, and the
use case judges challenger and champion on the same rows, each through its own preprocessing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.keras_models import from_bytes, to_bytes
from ml.pipeline import gate_intervals, score_model
from ml.settings import LoopSettings
from ml.training import TrainResult
from use_cases.flight_delay import evaluation, training
from use_cases.flight_delay.source import load_completed
from use_cases.flight_delay.use_case import FlightDelay

pytestmark = pytest.mark.slow

SETTINGS = LoopSettings(epochs=4, seed=7, use_case="flight_delay")
TRAIN_ROWS = 20_000


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first 20k flights of 2013 and the 5k that follow them."""
    flights = load_completed((1, 2), limit=TRAIN_ROWS + 5_000)
    return flights.iloc[:TRAIN_ROWS], flights.iloc[TRAIN_ROWS:]


@pytest.fixture(scope="module")
def result(data) -> TrainResult:
    return training.train(data[0], SETTINGS)


def test_learns_something_that_holds_on_the_next_days(data, result):
    m = FlightDelay().evaluate(result.model, result.preprocessing, data[1])
    assert m["roc_auc"] > 0.6
    assert m["rows"] == 5_000
    assert result.rows_train + result.rows_val == TRAIN_ROWS
    assert 1 <= result.best_epoch <= result.epochs_run <= SETTINGS.epochs
    assert len(result.history["val_loss"]) == result.epochs_run


def test_bytes_round_trip_gives_identical_predictions(data, result):
    restored = from_bytes(to_bytes(result.model))
    np.testing.assert_array_equal(evaluation.score(result.model, result.preprocessing, data[1]),
                                  evaluation.score(restored, result.preprocessing, data[1]))


def test_same_seed_gives_the_same_model_whatever_the_row_order(data, result):
    again = training.train(data[0].sample(frac=1, random_state=3), SETTINGS)
    assert again.preprocessing == result.preprocessing
    np.testing.assert_array_equal(evaluation.score(result.model, result.preprocessing, data[1]),
                                  evaluation.score(again.model, again.preprocessing, data[1]))


def test_candidates_are_scored_on_the_same_rows_with_their_own_preprocessing(data, result):
    # The champion reads its own (older, smaller) preprocessing: both are scored on the same holdout rows.
    uc = FlightDelay()
    champion = training.train(data[0].iloc[:10_000], SETTINGS)
    assert champion.preprocessing != result.preprocessing
    mine = uc.evaluate(result.model, result.preprocessing, data[1])
    theirs = uc.evaluate(champion.model, champion.preprocessing, data[1])
    assert mine["rows"] == theirs["rows"] == len(data[1])
    assert set(mine) >= {c.metric for c in uc.gate_criteria()} | set(uc.ui_metrics)

    # The gate scores each once, for the metrics and for the intervals of their differences.
    ours, champions = (score_model(uc, r.model, r.preprocessing, data[1]) for r in (result, champion))
    assert ours.metrics == mine and ours.scores.shape == (len(data[1]),)
    intervals = gate_intervals(SETTINGS.model_copy(update={"gate_bootstrap_samples": 200}), uc, uc.gate_criteria(),
                               data[1], ours, champions)
    assert set(intervals) == {"roc_auc", "log_loss"}
    for name, interval in intervals.items():
        assert interval.point == pytest.approx(mine[name] - theirs[name], abs=1e-9)
        assert interval.low <= interval.point <= interval.high and interval.samples == 200
    assert gate_intervals(SETTINGS.model_copy(update={"gate_interval": False}), uc, uc.gate_criteria(), data[1],
                          ours, champions) == {}


def test_a_single_class_or_a_missing_label_cannot_train_and_a_single_class_cannot_judge(data, result):
    one_class = data[0].assign(delayed=False)
    with pytest.raises(ValueError, match="single class"):
        training.train(one_class, SETTINGS)
    unlabelled = data[0].astype({"delayed": "object"})
    unlabelled.loc[unlabelled.index[-1], "delayed"] = None
    with pytest.raises(ValueError, match="training needs the label 'delayed' on every row"):
        training.train(unlabelled, SETTINGS)
    with pytest.raises(ValueError, match="the rows lack the label 'delayed'"):
        training.train(data[0].drop(columns=["delayed"]), SETTINGS)
    with pytest.raises(ValueError, match="single class"):
        FlightDelay().evaluate(result.model, result.preprocessing, one_class.head(100))
