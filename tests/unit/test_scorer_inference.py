"""The numpy forward pass equals Keras; the admission checks refuse contracts and models that do not fit."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ml import features
from ml.flights_source import load_completed
from scoring_service import model_checks
from scoring_service.inference import NumpyForward, UnsupportedModel
from scoring_service.model_checks import ModelRefused
from scoring_service.use_cases import flights as flight_scoring
from scoring_service.use_cases.flights import FLIGHT_DELAY as FLIGHTS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module")
def flights():
    return load_completed((1, 1), limit=3000)


@pytest.fixture(scope="module")
def contract(flights):
    return features.fit(flights)


@pytest.fixture(scope="module")
def trained(flights, contract):
    """A model of ml.model.build with a few epochs of real training (non-trivial weights)."""
    import keras

    from ml import model as model_lib

    keras.utils.set_random_seed(3)
    model = model_lib.build(contract)
    model.fit(features.transform(contract, flights), flights["delayed"].to_numpy("float32"), epochs=3,
              batch_size=256, verbose=0)
    return model


def _keras(model):
    """Keras's own output, as the model loader child computes it."""
    return lambda x: model(x, training=False)


def test_numpy_pass_matches_keras_within_1e5(flights, contract, trained):
    x = features.transform(contract, flights)
    expected = np.asarray(trained(x, training=False)).reshape(-1)
    got = NumpyForward.from_keras(trained)(x).reshape(-1)
    assert got.shape == (len(flights),) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert expected.std() > 0.01  # the comparison means something: the outputs are not constant


def test_numpy_pass_after_a_bytes_round_trip_matches_keras(contract, trained):
    from ml import model as model_lib

    loaded = model_lib.from_bytes(model_lib.to_bytes(trained))
    p = model_checks.warm_up(FLIGHTS, contract, NumpyForward.from_keras(loaded), _keras(loaded), rows=64)
    assert p.shape == (64, 1) and np.all((p >= 0) & (p <= 1))


def test_unsupported_layer_is_refused_not_approximated():
    import keras

    inp = keras.Input((4,), name="numeric")
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.BatchNormalization()(inp))
    with pytest.raises(UnsupportedModel, match="BatchNormalization is not supported"):
        NumpyForward.from_keras(keras.Model(inp, out))
    inp = keras.Input((4,), name="numeric")
    with pytest.raises(UnsupportedModel, match="activation 'gelu'"):
        NumpyForward.from_keras(keras.Model(inp, keras.layers.Dense(1, activation="gelu")(inp)))


def test_contract_fits_the_input_topic(contract):
    assert flight_scoring.contract_problems(contract) == []
    assert FLIGHTS.parse_contract(contract.to_dict()) == contract


@pytest.mark.parametrize(("change", "problem"), [
    ({"distance": "string"}, "distance: contract reads string, topic has double"),
    ({"wind_speed": "double"}, "wind_speed: contract requires it, topic makes it optional"),
    ({"runway": "string"}, "runway: not a field of FlightScheduled"),
])
def test_contract_that_does_not_fit_the_topic_is_refused(contract, change, problem):
    bad = contract.model_copy(update={"input_schema": {**contract.input_schema, **change}})
    assert problem in flight_scoring.contract_problems(bad)
    with pytest.raises(ModelRefused, match="does not fit") as info:
        FLIGHTS.parse_contract(bad.to_dict())
    assert info.value.kind == "contract"


def test_contract_of_another_features_version_is_refused(contract):
    with pytest.raises(ModelRefused, match="contract v99") as info:
        FLIGHTS.parse_contract({**contract.to_dict(), "contract_version": 99})
    assert info.value.kind == "contract"


def test_model_built_for_another_contract_is_refused(flights, contract, trained):
    other = features.fit(flights.head(300))  # smaller vocabularies and other bins
    with pytest.raises(ModelRefused) as info:
        model_checks.warm_up(FLIGHTS, other, NumpyForward.from_keras(trained), _keras(trained), rows=8)
    assert info.value.kind == "architecture"


def test_nan_weights_fail_the_canary(contract, trained):
    from ml import model as model_lib

    broken = model_lib.from_bytes(model_lib.to_bytes(trained))
    layer = broken.get_layer("p_delayed")
    layer.set_weights([np.full_like(w, np.nan) for w in layer.get_weights()])
    with pytest.raises(ModelRefused, match="non-finite") as info:
        model_checks.warm_up(FLIGHTS, contract, NumpyForward.from_keras(broken), _keras(broken), rows=8)
    assert info.value.kind == "canary"
