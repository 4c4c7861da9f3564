"""A ``.keras`` archive read without Keras gives the outputs of the model Keras loads (the flight model's test is
in test_scorer_inference.py); what it cannot mirror exactly is refused, not approximated."""

from __future__ import annotations

import io
import os
import zipfile

import h5py
import numpy as np
import pytest

from ml.keras_archive import WEIGHTS_FILE, archive_forward, archive_plan
from ml.keras_models import predict, to_bytes
from ml.numpy_forward import UnsupportedModel
from use_cases.sensor_anomaly import preprocessing as sensor_features
from use_cases.sensor_anomaly.generator import generate

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def test_a_single_input_model_reads_its_array_as_keras_does():
    """The sensor autoencoder: one input, fed as a plain array (not named), as its use case scores it."""
    import keras

    from use_cases.sensor_anomaly.model import build

    readings = generate(2, 400, seed=3, anomaly_rate=0.05)
    fitted = sensor_features.fit(readings)
    x = sensor_features.transform(fitted, readings)
    keras.utils.set_random_seed(5)
    model = build(fitted)
    model.fit(x, x, epochs=2, batch_size=64, verbose=0)
    forward = archive_forward(to_bytes(model))
    np.testing.assert_allclose(predict(forward, x, batch=128), predict(model, x), rtol=1e-5, atol=1e-6)


def test_layers_the_numpy_pass_does_not_mirror_are_refused():
    import keras

    inputs = keras.Input((3,), name="x")
    normalised = keras.layers.BatchNormalization()(inputs)
    functional = keras.Model(inputs, keras.layers.Dense(1)(normalised))
    with pytest.raises(UnsupportedModel, match="BatchNormalization is not supported"):
        archive_plan(to_bytes(functional))
    sequential = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(UnsupportedModel, match="'Sequential' is not a functional model"):
        archive_plan(to_bytes(sequential))


def _small_functional():
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="out")(hidden))


def _edited(data: bytes, edit) -> bytes:
    """``data`` with its weights file changed by ``edit(h5py.File)``."""
    with zipfile.ZipFile(io.BytesIO(data)) as source:
        files = {name: source.read(name) for name in source.namelist()}
    weights = io.BytesIO(files[WEIGHTS_FILE])
    with h5py.File(weights, "r+") as h5:
        edit(h5)
    files[WEIGHTS_FILE] = weights.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name, content in files.items():
            target.writestr(name, content)
    return out.getvalue()


def _reshape_kernel(h5) -> None:
    del h5["layers/dense_1/vars/0"]
    h5["layers/dense_1/vars/0"] = np.zeros((4, 2), dtype="float32")


def test_variables_that_do_not_match_the_config_are_refused():
    """The reader relies on Keras' layout of the weights file; a file that breaks it is refused, not misread."""
    data = to_bytes(_small_functional())
    archive_plan(data)  # as saved: read
    wrong_shape = r"layer out \(Dense\): variables of shapes \[\(4, 2\), \(1,\)\] in dense_1"
    with pytest.raises(UnsupportedModel, match=wrong_shape):
        archive_plan(_edited(data, _reshape_kernel))
    with pytest.raises(UnsupportedModel, match="layer out: no dense_1/vars"):
        archive_plan(_edited(data, lambda h5: h5.__delitem__("layers/dense_1")))
    with pytest.raises(UnsupportedModel, match=r"holds layers \['dense_9'\] the config does not name"):
        archive_plan(_edited(data, lambda h5: h5.create_group("layers/dense_9/vars")))
    with pytest.raises(zipfile.BadZipFile):
        archive_plan(data[: len(data) // 2])
