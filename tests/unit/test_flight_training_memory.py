"""Streamed training of the flight model: the ``Batches`` dataset yields every row once an epoch, as ``transform``
makes it, in a seeded order; training through it is deterministic whatever the row order of its input."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from ml import training as ml_training
from ml.row_scan import table_scan
from ml.settings import LoopSettings
from use_cases.flight_delay import evaluation, training
from use_cases.flight_delay import preprocessing as prep
from use_cases.flight_delay.source import load_completed


@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    return load_completed((1, 1), limit=3000)


@pytest.fixture()
def small_chunks(monkeypatch):
    """Chunks of two batches, so that 3000 rows span several chunks and end in a partial batch."""
    monkeypatch.setattr(training, "CHUNK_BATCHES", 2)
    monkeypatch.setattr(training, "CHUNK_ROWS", 2 * training.BATCH_SIZE)


class _CountedScan:
    """A scan of ``table`` in slices of 700 rows that counts its passes and the rows it yields."""

    def __init__(self, table):
        self.scan, self.passes, self.rows = table_scan(table, 700), 0, 0

    def __call__(self):
        self.passes += 1
        for chunk in self.scan():
            self.rows += len(chunk)
            yield chunk


def _epoch(batches: training.Batches) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One epoch of ``batches`` as Keras reads it, its batches concatenated."""
    batches.on_epoch_begin()
    parts = [batches[i] for i in range(len(batches))]
    batches.on_epoch_end()
    return {k: np.concatenate([x[k] for x, _ in parts]) for k in parts[0][0]}, np.concatenate([y for _, y in parts])


def test_batches_yield_every_row_once_an_epoch_as_transformed_in_a_new_seeded_order(flights, small_chunks):
    fitted, table = prep.fit(flights), prep.input_table(flights)
    scan = table_scan(table, 700)
    # Labels that name their row, so the order of an epoch can be read back.
    rows, ids = np.arange(1, len(flights)), np.arange(len(flights), dtype="float32")
    batches = training.Batches(fitted, scan, ids, rows, seed=5)
    assert len(batches) == -(-len(rows) // training.BATCH_SIZE) and len(batches) > 2 * training.CHUNK_BATCHES
    (x1, order1), (x2, order2) = _epoch(batches), _epoch(batches)
    for x, order in ((x1, order1), (x2, order2)):
        assert sorted(order.astype(int)) == rows.tolist()
        expected = prep.transform(fitted, table.take(order.astype(int)))
        for key in expected:
            np.testing.assert_array_equal(x[key], expected[key], err_msg=key)
    assert (order1 != order2).any()
    again = training.Batches(fitted, scan, ids, rows, seed=5)
    np.testing.assert_array_equal(_epoch(again)[1], order1)
    # Without a seed (validation), every epoch reads the rows in the order given.
    plain = training.Batches(fitted, scan, ids, rows)
    np.testing.assert_array_equal(_epoch(plain)[1], rows)
    np.testing.assert_array_equal(_epoch(plain)[1], rows)


def test_a_shuffled_epoch_is_the_first_epoch_rows_of_its_seeded_permutation(flights, small_chunks, monkeypatch):
    monkeypatch.setattr(training, "EPOCH_ROWS", 1000)
    fitted, table = prep.fit(flights), prep.input_table(flights)
    rows, ids = np.arange(2, len(flights)), np.arange(len(flights), dtype="float32")
    scan = _CountedScan(table)
    batches = training.Batches(fitted, scan, ids, rows, seed=5)
    assert len(batches) == 2 and batches._order is rows and scan.passes == 0
    for epoch in (1, 2):
        order = _epoch(batches)[1].astype(int)
        expected = rows[np.random.default_rng([5, epoch]).permutation(len(rows))][:1000]
        np.testing.assert_array_equal(order, expected)
        # The rest of the permutation is not kept, and of the rows only the epoch's are held, read in one pass.
        assert len(batches._order) == len(batches._held) == 1000 and scan.passes == epoch
    assert scan.rows == 2 * len(flights)
    # Validation (no seed) reads every row, whatever EPOCH_ROWS, gathered once.
    plain = training.Batches(fitted, _CountedScan(table), ids, rows)
    np.testing.assert_array_equal(_epoch(plain)[1], rows)
    np.testing.assert_array_equal(_epoch(plain)[1], rows)
    assert plain.scan.passes == 1


def test_shapes_are_read_before_the_first_epoch_from_the_rows_in_the_order_given(flights, small_chunks):
    fitted, table = prep.fit(flights), prep.input_table(flights)
    rows, ids = np.arange(len(flights))[::-1].copy(), np.arange(len(flights), dtype="float32")
    scan = _CountedScan(table)
    batches = training.Batches(fitted, scan, ids, rows, seed=5)
    # As Keras peeks at a batch to learn its shapes before calling on_epoch_begin.
    x, y = batches[1]
    np.testing.assert_array_equal(y, rows[training.BATCH_SIZE:2 * training.BATCH_SIZE])
    expected = prep.transform(fitted, table.take(rows[training.BATCH_SIZE:2 * training.BATCH_SIZE]))
    for key in expected:
        np.testing.assert_array_equal(x[key], expected[key], err_msg=key)
    assert scan.passes == 1


def test_a_dataset_comes_without_labels(flights):
    fitted = prep.fit(flights)
    batches = training.Batches(fitted, table_scan(prep.input_table(flights)), np.zeros(len(flights), "float32"),
                               np.arange(len(flights)))
    with pytest.raises(ValueError, match="y must be None"):
        ml_training.fit(lambda: keras.Sequential(), batches, np.zeros(len(flights)), seed=0, epochs=1,
                        batch_size=training.BATCH_SIZE)


@pytest.mark.slow
def test_streamed_training_is_deterministic_whatever_the_row_order(flights, small_chunks, monkeypatch):
    monkeypatch.setattr(training, "IN_MEMORY_INPUT_BYTES", 0)  # stream whatever the size
    settings = LoopSettings(epochs=2, seed=3, use_case="flight_delay")
    result = training.train(flights, settings)
    again = training.train(flights.sample(frac=1, random_state=4), settings)
    assert again.preprocessing == result.preprocessing
    assert result.rows_train + result.rows_val == len(flights)
    assert 1 <= result.best_epoch <= result.epochs_run <= 2 and len(result.history["val_loss"]) == result.epochs_run
    p = evaluation.score(result.model, result.preprocessing, flights)
    np.testing.assert_array_equal(p, evaluation.score(again.model, again.preprocessing, flights))
    assert 0 < p.min() and p.max() < 1
