"""The MLflow signature logged with each model: what a user of the registry sees the model read and return."""

from __future__ import annotations

import os

import numpy as np

from ml.registry import model_signature
from use_cases.flight_delay import preprocessing
from use_cases.flight_delay.model import untrained
from use_cases.flight_delay.source import load_completed

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def test_the_flight_models_signature_names_each_input_the_preprocessing_makes():
    fitted = preprocessing.fit(load_completed((1, 1), limit=1000))
    inputs = preprocessing.transform(fitted, load_completed((1, 2), limit=50))
    signature = model_signature(untrained(fitted))
    specs = {spec.name: spec for spec in signature.inputs.inputs}
    assert set(specs) == set(inputs)
    for name, values in inputs.items():
        assert specs[name].type == values.dtype
        assert specs[name].shape == (-1, *values.shape[1:])
    [output] = signature.outputs.inputs
    assert output.name is None and output.type == np.dtype("float32") and output.shape == (-1, 1)


def test_a_subclassed_model_never_called_has_no_signature():
    import keras

    class Scale(keras.Model):
        def call(self, x):
            return 2 * x

    assert model_signature(Scale()) is None
