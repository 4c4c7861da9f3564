"""Keras models as ``.keras`` archive bytes (architecture JSON and weights, nothing pickled), and their outputs
computed in large batches."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

    from ml.numpy_forward import NumpyForward

PREDICT_BATCH = 16384
# How a model is loaded to predict, wherever it is loaded (the scorer, the gate, the monitor): no deserialised code,
# and not compiled (a served model is never trained again; compiling rebuilt an optimizer the saved one did not match).
LOAD_OPTIONS = {"safe_mode": True, "compile": False}


def to_bytes(model: keras.Model) -> bytes:
    """The model as ``.keras`` archive bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as fh:
            return fh.read()


def from_bytes(data: bytes) -> keras.Model:
    """Load ``.keras`` archive bytes with ``safe_mode=True`` (refuses lambdas and other deserialised code)."""
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as fh:
            fh.write(data)
        return keras.saving.load_model(path, **LOAD_OPTIONS)


def predict(model: keras.Model | NumpyForward, inputs: dict[str, np.ndarray] | np.ndarray,
            batch: int = PREDICT_BATCH) -> np.ndarray:
    """The model's outputs for ``inputs`` (one array, or named arrays with one row per input), computed in batches
    of ``batch`` rows: with ``predict_on_batch`` for a Keras model (``model.predict`` costs far more per call), or
    by the model's numpy pass (``Registry.load_predictor``)."""
    from ml.numpy_forward import NumpyForward

    if isinstance(model, NumpyForward):
        forward = model
        call = forward if isinstance(inputs, dict) else (lambda x: forward({forward.inputs[0].name: x}))
    else:
        call = model.predict_on_batch
    named = isinstance(inputs, dict)
    n = len(next(iter(inputs.values()))) if named else len(inputs)

    def rows(a: int) -> dict[str, np.ndarray] | np.ndarray:
        return {k: v[a:a + batch] for k, v in inputs.items()} if named else inputs[a:a + batch]

    if n == 0:
        return np.zeros(0)
    return np.concatenate([np.asarray(call(rows(a))) for a in range(0, n, batch)])
