"""The Keras delay model, built from a FlightPreprocessing: the average of ``MEMBERS`` small MLPs over the
standardised numerics and one embedding per categorical, each trained on its own from its own seed.

One network's AUC on the next month moved by up to 0.02 with its seed alone; the average of two independently
trained half-width networks moves far less. The members are fused into one MLP (``assemble``), so the scorer,
MLflow and the numpy forward pass see one model of Dense, Embedding and Concatenate layers, with about the
arithmetic per prediction of one full-width network.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import keras
import numpy as np

from use_cases.flight_delay import preprocessing as prep
from use_cases.flight_delay.preprocessing import FlightPreprocessing

log = logging.getLogger(__name__)

MEMBERS = 2
HIDDEN_UNITS = (64, 32)
DROPOUT = 0.1
LEARNING_RATE = 2e-3
# Batches run per call into TensorFlow while a member trains: a member is small, so a step costs less than the
# call's own overhead; grouping steps trains the same weights (the same batches in the same order) in less time
# (docs/performance.md). The served model keeps one: its first prediction would trace the longer loop.
STEPS_PER_EXECUTION = 16
OUTPUT = "p_delayed"


def embedding_dim(vocab_size: int) -> int:
    """A small embedding width that grows slowly with the vocabulary (3 for 5 values, 10 for 100, at most 16)."""
    return int(min(16, max(2, round(1.6 * vocab_size ** 0.4))))


def _inputs(fitted: FlightPreprocessing) -> list[keras.KerasTensor]:
    """One input per key of ``preprocessing.transform``: the numeric block, then each categorical."""
    return [keras.Input(shape=(fitted.numeric_width,), name=prep.NUMERIC_INPUT),
            *(keras.Input(shape=(), dtype="int32", name=prep.CATEGORICAL_PREFIX + name) for name in fitted.vocab_sizes)]


def _member(fitted: FlightPreprocessing, inputs: list[keras.KerasTensor], suffix: str = "") -> keras.KerasTensor:
    """One MLP over ``inputs``, its layers named with ``suffix``; returns its P(delayed)."""
    parts = [inputs[0]]
    for cat, (name, size) in zip(inputs[1:], fitted.vocab_sizes.items(), strict=True):
        parts.append(keras.layers.Embedding(size, embedding_dim(size), name=f"emb_{name}{suffix}")(cat))
    x = keras.layers.Concatenate(name=f"concat{suffix}")(parts)
    for i, units in enumerate(HIDDEN_UNITS):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}{suffix}")(x)
        x = keras.layers.Dropout(DROPOUT, name=f"dropout_{i}{suffix}")(x)
    return keras.layers.Dense(1, activation="sigmoid", name=f"{OUTPUT}{suffix}")(x)


def _compile(model: keras.Model, steps_per_execution: int = 1, *, auc: bool = True,
             jit_compile: bool | str = "auto") -> keras.Model:
    """Compile ``model`` as every flight model is (``benchmarks/member_epoch.py`` varies the metric and XLA)."""
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc")] if auc else [], steps_per_execution=steps_per_execution,
                  jit_compile=jit_compile)
    return model


def build(fitted: FlightPreprocessing) -> keras.Model:
    """One compiled member, to be trained: input names equal the keys of ``preprocessing.transform``; the
    output is P(delayed)."""
    inputs = _inputs(fitted)
    model = _compile(keras.Model(inputs, _member(fitted, inputs), name="flight_delay_member"), STEPS_PER_EXECUTION)
    log.info("built a member for flight preprocessing v%d %s: %d parameters", fitted.version, fitted.fingerprint,
             model.count_params())
    return model


def assemble(fitted: FlightPreprocessing, members: Sequence[keras.Model]) -> keras.Model:
    """The served model: the trained members fused into one MLP of the same depth, its output the mean of
    theirs. Each embedding table is the members' tables side by side, each hidden layer the members' layers
    side by side with zero blocks between them (a member reads only its own embeddings and units), the output
    layer yields every member's P(delayed) and a fixed Dense averages them: the arithmetic of one network of
    ``MEMBERS`` times the width, not ``MEMBERS`` networks. A single member is served as it is."""
    if len(members) == 1:
        return members[0]
    k, sizes = len(members), fitted.vocab_sizes
    inputs = _inputs(fitted)
    parts, rows = [inputs[0]], [fitted.numeric_width]  # rows: the width of each part of the concatenation
    for cat, (name, size) in zip(inputs[1:], sizes.items(), strict=True):
        parts.append(keras.layers.Embedding(size, k * embedding_dim(size), name=f"emb_{name}")(cat))
        rows.append(k * embedding_dim(size))
    x = keras.layers.Concatenate(name="concat")(parts)
    for i, units in enumerate(HIDDEN_UNITS):
        x = keras.layers.Dense(k * units, activation="relu", name=f"dense_{i}")(x)
    x = keras.layers.Dense(k, activation="sigmoid", name="members")(x)
    out = keras.layers.Dense(1, use_bias=False, trainable=False, name=OUTPUT,
                             kernel_initializer=keras.initializers.Constant(1 / k))(x)
    model = _compile(keras.Model(inputs, out, name="flight_delay"))

    for name in sizes:
        model.get_layer(f"emb_{name}").set_weights(
            [np.concatenate([m.get_layer(f"emb_{name}").get_weights()[0] for m in members], axis=1)])
    # The first hidden layer: member j's kernel rows go to its numeric rows and its own slice of each
    # embedding, its columns to its own units.
    units, offsets = HIDDEN_UNITS[0], np.cumsum([0, *rows])
    kernel = np.zeros((offsets[-1], k * units), dtype="float32")
    for j, m in enumerate(members):
        theirs = m.get_layer("dense_0").get_weights()[0]
        cols = slice(j * units, (j + 1) * units)
        kernel[:fitted.numeric_width, cols] = theirs[:fitted.numeric_width]
        at = fitted.numeric_width
        for part, size in enumerate(sizes.values(), start=1):
            dim = embedding_dim(size)
            kernel[offsets[part] + j * dim:offsets[part] + (j + 1) * dim, cols] = theirs[at:at + dim]
            at += dim
    bias = np.concatenate([m.get_layer("dense_0").get_weights()[1] for m in members])
    model.get_layer("dense_0").set_weights([kernel, bias])
    # Every later layer: block-diagonal.
    for name in [f"dense_{i}" for i in range(1, len(HIDDEN_UNITS))] + [OUTPUT]:
        weights = [m.get_layer(name).get_weights() for m in members]
        fused = np.zeros((sum(w[0].shape[0] for w in weights), sum(w[0].shape[1] for w in weights)), "float32")
        r = c = 0
        for kern, _ in weights:
            fused[r:r + kern.shape[0], c:c + kern.shape[1]] = kern
            r, c = r + kern.shape[0], c + kern.shape[1]
        model.get_layer("members" if name == OUTPUT else name).set_weights(
            [fused, np.concatenate([b for _, b in weights])])
    return model


def untrained(fitted: FlightPreprocessing) -> keras.Model:
    """The served architecture with fresh weights: what benchmarks and tests of the scorer load."""
    return assemble(fitted, [build(fitted) for _ in range(MEMBERS)])
