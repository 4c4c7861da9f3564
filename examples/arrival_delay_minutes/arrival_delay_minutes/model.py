"""The regression model and its training: an MLP over the flight features with a linear output, trained with
the Huber loss (robust to the delays' long tail); the epoch count is chosen by early stopping on the latest
rows, then the model is refitted on all rows for that many epochs."""

from __future__ import annotations

import logging
import time

import keras
import pandas as pd

from arrival_delay_minutes.preprocessing import LABEL, ArrivalPreprocessing, fit as fit_preprocessing
from ml.settings import LoopSettings
from ml.split import time_split
from ml.training import TrainResult, fit
from use_cases.flight_delay import preprocessing as flight_features

log = logging.getLogger(__name__)

TIME_ORDER = ("sched_dep_utc", "flight_id")
HIDDEN_UNITS = (64, 32)
LEARNING_RATE = 2e-3
BATCH_SIZE = 2048
VALIDATION_FRACTION = 0.12


def build(fitted: ArrivalPreprocessing) -> keras.Model:
    """A compiled MLP: the flight features' inputs -> the scaled delay (one linear output)."""
    features = fitted.features
    numeric = keras.Input(shape=(features.numeric_width,), name=flight_features.NUMERIC_INPUT)
    inputs, parts = [numeric], [numeric]
    for name, size in features.vocab_sizes.items():
        cat = keras.Input(shape=(), dtype="int32", name=flight_features.CATEGORICAL_PREFIX + name)
        inputs.append(cat)
        parts.append(keras.layers.Embedding(size, min(8, size), name=f"emb_{name}")(cat))
    x = keras.layers.Concatenate(name="concat")(parts)
    for i, units in enumerate(HIDDEN_UNITS):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
    out = keras.layers.Dense(1, activation="linear", name="delay_scaled")(x)
    model = keras.Model(inputs, out, name="arrival_delay_minutes")
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss=keras.losses.Huber(delta=1.0))
    return model


def train(rows: pd.DataFrame, settings: LoopSettings) -> TrainResult:
    """Train on labelled `flights.completed` rows; deterministic for ``settings.seed``. Raises ValueError on
    fewer than ``settings.min_training_rows`` rows."""
    started = time.perf_counter()
    if len(rows) < settings.min_training_rows:
        raise ValueError(f"{len(rows)} rows is fewer than min_training_rows={settings.min_training_rows}")
    train_df, val_df = time_split(rows, TIME_ORDER, fraction=VALIDATION_FRACTION)
    everything = pd.concat([train_df, val_df], ignore_index=True)
    fitted = fit_preprocessing(everything)

    def inputs(frame: pd.DataFrame):
        return flight_features.transform(fitted.features, frame), fitted.scaled(frame[LABEL])

    _, history, best_epoch = fit(lambda: build(fitted), *inputs(train_df), seed=settings.seed,
                                 epochs=settings.epochs, batch_size=BATCH_SIZE, validation=inputs(val_df))
    model, _, _ = fit(lambda: build(fitted), *inputs(everything), seed=settings.seed, epochs=best_epoch,
                      batch_size=BATCH_SIZE)
    seconds = time.perf_counter() - started
    log.info("arrival delay model trained on %d rows for %d epochs (best of %d, val_loss %.4f), preprocessing %s, "
             "%.1f s", len(everything), best_epoch, len(history["loss"]), history["val_loss"][best_epoch - 1],
             fitted.fingerprint, seconds)
    return TrainResult(model=model, preprocessing=fitted, history=history, rows_train=len(train_df),
                       rows_val=len(val_df), epochs_run=len(history["loss"]), best_epoch=best_epoch, seconds=seconds)
