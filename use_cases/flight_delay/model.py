"""The Keras delay model, built from a FlightPreprocessing: an MLP over the standardised numerics and one
embedding per categorical."""

from __future__ import annotations

import logging

import keras

from use_cases.flight_delay import preprocessing as prep
from use_cases.flight_delay.preprocessing import FlightPreprocessing

log = logging.getLogger(__name__)

HIDDEN_UNITS = (128, 64)
DROPOUT = 0.1
LEARNING_RATE = 2e-3


def embedding_dim(vocab_size: int) -> int:
    """A small embedding width that grows slowly with the vocabulary (3 for 5 values, 10 for 100, at most 16)."""
    return int(min(16, max(2, round(1.6 * vocab_size ** 0.4))))


def build(fitted: FlightPreprocessing) -> keras.Model:
    """A compiled MLP over the standardised numerics and one embedding per categorical.

    Input names equal the keys of ``preprocessing.transform``; the output is P(delayed).
    """
    numeric = keras.Input(shape=(fitted.numeric_width,), name=prep.NUMERIC_INPUT)
    inputs, parts = [numeric], [numeric]
    for name, size in fitted.vocab_sizes.items():
        cat = keras.Input(shape=(), dtype="int32", name=prep.CATEGORICAL_PREFIX + name)
        inputs.append(cat)
        parts.append(keras.layers.Embedding(size, embedding_dim(size), name=f"emb_{name}")(cat))
    x = keras.layers.Concatenate(name="concat")(parts)
    for i, units in enumerate(HIDDEN_UNITS):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
        x = keras.layers.Dropout(DROPOUT, name=f"dropout_{i}")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="p_delayed")(x)
    model = keras.Model(inputs, out, name="flight_delay")
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc")])
    log.info("built model for flight preprocessing v%d %s: %d parameters", fitted.version, fitted.fingerprint,
             model.count_params())
    return model
