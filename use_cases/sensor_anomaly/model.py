"""The sensor autoencoder: built from a SensorPreprocessing, trained on normal readings only, thresholded on
validation readings.

The network compresses the standardised channels of one reading through a two-unit bottleneck (a healthy
machine has about two degrees of freedom: its load and its lagged temperature) and reconstructs them; a
reading that breaks the channels' usual relationship reconstructs badly. Only Dense layers, so the model
serialises as a ``.keras`` archive, loads with ``safe_mode`` and is served by the scorer's numpy pass.
"""

from __future__ import annotations

import logging
import time

import keras
import pandas as pd

from ml.settings import LoopSettings
from ml.split import time_split
from ml.training import TrainResult, fit
from use_cases.sensor_anomaly import evaluation
from use_cases.sensor_anomaly.preprocessing import INPUT, SensorPreprocessing, fit as fit_preprocessing, transform

log = logging.getLogger(__name__)

HIDDEN_UNITS = 16
BOTTLENECK = 2
LEARNING_RATE = 3e-3
BATCH_SIZE = 128
VALIDATION_FRACTION = 0.2
TIME_ORDER = ("ts", "machine_id")


def build(fitted: SensorPreprocessing) -> keras.Model:
    """A compiled dense autoencoder: input ``readings`` (n, width) -> reconstruction (n, width), MSE loss."""
    x = keras.Input(shape=(fitted.width,), name=INPUT)
    h = keras.layers.Dense(HIDDEN_UNITS, activation="tanh", name="encode")(x)
    z = keras.layers.Dense(BOTTLENECK, activation="linear", name="bottleneck")(h)
    h = keras.layers.Dense(HIDDEN_UNITS, activation="tanh", name="decode")(z)
    out = keras.layers.Dense(fitted.width, activation="linear", name="reconstruction")(h)
    model = keras.Model(x, out, name="sensor_autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="mse")
    return model


def train(df: pd.DataFrame, settings: LoopSettings) -> TrainResult:
    """Train an autoencoder on labelled `sensors.readings` rows; deterministic for a given ``settings.seed``.

    1. The latest ``VALIDATION_FRACTION`` of readings (by ``ts``) are held for validation.
    2. The preprocessing's statistics are fitted on the normal readings of the earlier part, and the network is
       trained on those same readings, with early stopping (best weights restored) on the validation part's
       normal readings: the model never learns what an anomaly looks like.
    3. The threshold is chosen on every validation reading (``evaluation.choose_threshold``) and stored in the
       preprocessing.

    Raises ValueError on fewer than ``settings.min_training_rows`` readings.
    """
    started = time.perf_counter()
    if len(df) < settings.min_training_rows:
        raise ValueError(f"{len(df)} rows is fewer than min_training_rows={settings.min_training_rows}")
    train_df, val_df = time_split(df, TIME_ORDER, fraction=VALIDATION_FRACTION)
    normal_train = train_df[~train_df["is_anomaly"].astype(bool)]
    normal_val = val_df[~val_df["is_anomaly"].astype(bool)]
    fitted = fit_preprocessing(normal_train)
    x_train, x_val = transform(fitted, normal_train), transform(fitted, normal_val)
    model, history, best_epoch = fit(lambda: build(fitted), x_train, x_train, seed=settings.seed,
                                     epochs=settings.epochs, batch_size=BATCH_SIZE, validation=(x_val, x_val))
    scores = evaluation.score(model, fitted, val_df)
    threshold, method = evaluation.choose_threshold(val_df["is_anomaly"].to_numpy(dtype=bool), scores)
    fitted = fitted.with_threshold(threshold, method)
    seconds = time.perf_counter() - started
    log.info("autoencoder trained on %d normal readings (%d validation readings, %d anomalous) for %d epochs "
             "(best %d, val_loss %.4f); threshold %.4f by %s; preprocessing %s; %.1f s", len(normal_train),
             len(val_df), len(val_df) - len(normal_val), len(history["loss"]), best_epoch,
             history["val_loss"][best_epoch - 1], threshold, method, fitted.fingerprint, seconds)
    return TrainResult(model=model, preprocessing=fitted, history=history, rows_train=len(normal_train),
                       rows_val=len(val_df), epochs_run=len(history["loss"]), best_epoch=best_epoch,
                       seconds=seconds)
