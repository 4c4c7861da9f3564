"""Training on a real slice of flights: it learns, it is reproducible, and its bytes load back safely."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml import evaluate, model as model_lib, train
from ml.flights_source import load_completed
from ml.settings import LoopSettings

pytestmark = pytest.mark.slow

SETTINGS = LoopSettings(epochs=4, seed=7)
TRAIN_ROWS = 20_000


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first 20k flights of 2013 and the 5k that follow them."""
    flights = load_completed((1, 2), limit=TRAIN_ROWS + 5_000)
    return flights.iloc[:TRAIN_ROWS], flights.iloc[TRAIN_ROWS:]


@pytest.fixture(scope="module")
def result(data) -> train.TrainResult:
    return train.train(data[0], SETTINGS)


def test_learns_something_that_holds_on_the_next_days(data, result):
    m = evaluate.metrics(data[1]["delayed"].to_numpy(), evaluate.score(result.model, result.contract, data[1]))
    assert m["roc_auc"] > 0.6
    assert m["rows"] == 5_000
    assert result.rows_train + result.rows_val == TRAIN_ROWS
    assert 1 <= result.best_epoch <= result.epochs_run <= SETTINGS.epochs
    assert len(result.history["val_loss"]) == result.epochs_run


def test_bytes_round_trip_gives_identical_predictions(data, result):
    restored = model_lib.from_bytes(model_lib.to_bytes(result.model))
    np.testing.assert_array_equal(evaluate.score(result.model, result.contract, data[1]),
                                  evaluate.score(restored, result.contract, data[1]))


def test_same_seed_gives_the_same_model(data, result):
    again = train.train(data[0], SETTINGS)
    assert again.contract == result.contract
    np.testing.assert_array_equal(evaluate.score(result.model, result.contract, data[1]),
                                  evaluate.score(again.model, again.contract, data[1]))


def test_candidates_are_scored_on_the_same_rows_with_their_own_contracts(data, result):
    # The champion reads its own (older, smaller) contract: both are scored on the same holdout rows.
    champion = train.train(data[0].iloc[:10_000], SETTINGS)
    record = evaluate.evaluate_candidates(result.model, result.contract, champion.model, champion.contract,
                                          data[1], SETTINGS)
    assert record.challenger["rows"] == record.champion["rows"] == len(data[1])
    assert record.challenger_contract == result.contract.fingerprint
    assert record.champion_contract == champion.contract.fingerprint
    assert record.holdout_from == data[1]["sched_dep_utc"].min()
    assert record.verdict in ("promote", "reject") and record.reasons


def test_holdout_slice_is_the_most_recent_rows(data):
    earlier, holdout = evaluate.holdout_slice(data[0], fraction=0.1)
    assert len(holdout) == 2_000 and len(earlier) == TRAIN_ROWS - 2_000
    assert earlier["sched_dep_utc"].max() <= holdout["sched_dep_utc"].min()
    earlier, holdout = evaluate.holdout_slice(data[0], days=1)
    assert holdout["sched_dep_utc"].min() > data[0]["sched_dep_utc"].max() - pd.Timedelta(days=1)
    assert len(earlier) + len(holdout) == TRAIN_ROWS
