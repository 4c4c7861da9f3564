"""The sensor autoencoder: built from a SensorFeatureContract, trained on normal readings only, thresholded on
validation readings.

The network compresses the standardised channels of one reading through a two-unit bottleneck (a healthy
machine has about two degrees of freedom: its load and its lagged temperature) and reconstructs them; a
reading that breaks the channels' usual relationship reconstructs badly. Only Dense layers, so the model
serialises with ``ml.model.to_bytes`` and loads with ``safe_mode``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from ml.sensors import evaluate
from ml.sensors.features import INPUT, SensorFeatureContract, fit, transform
from ml.settings import LoopSettings

log = logging.getLogger(__name__)

HIDDEN_UNITS = 16
BOTTLENECK = 2
LEARNING_RATE = 3e-3
BATCH_SIZE = 128
PATIENCE = 3
VALIDATION_FRACTION = 0.2


@dataclass(frozen=True)
class TrainResult:
    """A trained candidate: the autoencoder, the contract it reads (threshold included), how training went."""

    model: keras.Model
    contract: SensorFeatureContract
    history: dict[str, list[float]]
    rows_train: int
    rows_val: int
    epochs_run: int
    best_epoch: int
    seconds: float


def build(contract: SensorFeatureContract) -> keras.Model:
    """A compiled dense autoencoder: input ``readings`` (n, width) -> reconstruction (n, width), MSE loss."""
    x = keras.Input(shape=(contract.width,), name=INPUT)
    h = keras.layers.Dense(HIDDEN_UNITS, activation="tanh", name="encode")(x)
    z = keras.layers.Dense(BOTTLENECK, activation="linear", name="bottleneck")(h)
    h = keras.layers.Dense(HIDDEN_UNITS, activation="tanh", name="decode")(z)
    out = keras.layers.Dense(contract.width, activation="linear", name="reconstruction")(h)
    model = keras.Model(x, out, name="sensor_autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="mse")
    return model


def time_split(df: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(earlier, latest) readings by event time; the latest ``fraction`` of readings form the second part."""
    ordered = df.sort_values(["ts", "machine_id"], kind="stable", ignore_index=True)
    cut = len(ordered) - int(round(len(ordered) * fraction))
    return ordered.iloc[:cut], ordered.iloc[cut:]


def train(df: pd.DataFrame, settings: LoopSettings) -> TrainResult:
    """Train an autoencoder on labelled `sensors.readings` rows; deterministic for a given ``settings.seed``.

    1. The latest ``VALIDATION_FRACTION`` of readings (by ``ts``) are held for validation.
    2. The contract's statistics are fitted on the normal readings of the earlier part, and the network is
       trained on those same readings, with early stopping (best weights restored) on the validation part's
       normal readings: the model never learns what an anomaly looks like.
    3. The threshold is chosen on every validation reading (``evaluate.choose_threshold``) and stored in the
       contract.

    Raises ValueError on fewer than ``settings.min_training_rows`` readings.
    """
    started = time.perf_counter()
    if len(df) < settings.min_training_rows:
        raise ValueError(f"{len(df)} rows is fewer than min_training_rows={settings.min_training_rows}")
    train_df, val_df = time_split(df, VALIDATION_FRACTION)
    normal_train = train_df[~train_df["is_anomaly"].astype(bool)]
    normal_val = val_df[~val_df["is_anomaly"].astype(bool)]
    contract = fit(normal_train)
    x_train, x_val = transform(contract, normal_train), transform(contract, normal_val)
    keras.utils.set_random_seed(settings.seed)
    model = build(contract)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=PATIENCE, restore_best_weights=True)
    fitted = model.fit(x_train, x_train, validation_data=(x_val, x_val), epochs=settings.epochs,
                       batch_size=BATCH_SIZE, shuffle=True, verbose=0, callbacks=[stop])
    history = {k: [float(v) for v in vals] for k, vals in fitted.history.items()}
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    scores = evaluate.score(model, contract, val_df)
    threshold, method = evaluate.choose_threshold(val_df["is_anomaly"].to_numpy(dtype=bool), scores)
    contract = contract.with_threshold(threshold, method)
    seconds = time.perf_counter() - started
    log.info("autoencoder trained on %d normal readings (%d validation readings, %d anomalous) for %d epochs "
             "(best %d, val_loss %.4f); threshold %.4f by %s; contract %s; %.1f s", len(normal_train),
             len(val_df), len(val_df) - len(normal_val), len(history["loss"]), best_epoch,
             history["val_loss"][best_epoch - 1], threshold, method, contract.fingerprint, seconds)
    return TrainResult(model=model, contract=contract, history=history, rows_train=len(normal_train),
                       rows_val=len(val_df), epochs_run=len(history["loss"]), best_epoch=best_epoch,
                       seconds=seconds)
