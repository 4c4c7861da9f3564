"""The numpy forward pass equals Keras; the admission checks refuse preprocessings and models that do not fit."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ml.keras_archive import archive_plan
from ml.keras_models import from_bytes, predict, to_bytes
from ml.numpy_forward import NumpyForward, UnsupportedModel, forward_plan
from ml.preprocessing import schema_problems
from scoring_service import model_checks
from scoring_service.model_checks import ModelRefused
from use_cases.flight_delay import preprocessing as features
from use_cases.flight_delay.contracts import FlightScheduled
from use_cases.flight_delay.source import load_completed
from use_cases.flight_delay.use_case import FlightDelay

FLIGHTS = FlightDelay()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module")
def flights():
    return load_completed((1, 1), limit=3000)


@pytest.fixture(scope="module")
def fitted(flights):
    return features.fit(flights)


@pytest.fixture(scope="module")
def members(flights, fitted):
    """Members of the flight delay model, a few epochs of real training each (non-trivial weights)."""
    import keras

    from use_cases.flight_delay.model import MEMBERS, build

    members = []
    for seed in range(MEMBERS):
        keras.utils.set_random_seed(seed)
        member = build(fitted)
        member.fit(features.transform(fitted, flights), flights["delayed"].to_numpy("float32"), epochs=3,
                   batch_size=256, verbose=0)
        members.append(member)
    return members


@pytest.fixture(scope="module")
def trained(fitted, members):
    """The served model: the members assembled into one."""
    from use_cases.flight_delay.model import assemble

    return assemble(fitted, members)


def test_the_served_model_is_the_mean_of_its_members(flights, fitted, members, trained):
    x = features.transform(fitted, flights)
    each = np.stack([np.asarray(m(x, training=False)).reshape(-1) for m in members])
    assert len(members) >= 2 and np.abs(each[0] - each[1]).max() > 1e-3  # members that differ
    np.testing.assert_allclose(np.asarray(trained(x, training=False)).reshape(-1), each.mean(axis=0), atol=1e-6)


def _keras(model):
    """Keras's own output, as the model loader child computes it."""
    return lambda x: model(x, training=False)


def test_numpy_pass_matches_keras_within_1e6_on_a_month_of_flights(fitted, trained):
    month = load_completed((1, 1))
    x = features.transform(fitted, month)
    expected = np.asarray(trained(x, training=False)).reshape(-1)
    got = NumpyForward.from_keras(trained)(x).reshape(-1)
    assert got.shape == (len(month),) == (27_004,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert expected.std() > 0.01  # the comparison means something: the outputs are not constant


def test_numpy_pass_after_a_bytes_round_trip_matches_keras(fitted, trained):
    loaded = from_bytes(to_bytes(trained))
    p = model_checks.warm_up(FLIGHTS, fitted, NumpyForward.from_keras(loaded), _keras(loaded), rows=64)
    assert p.shape == (64, 1) and np.all((p >= 0) & (p <= 1))


def test_the_served_model_read_from_its_archive_without_keras_is_the_pass_keras_derives(flights, fitted, trained):
    """What the gate and the monitor score with (``ml.keras_archive``): the same plan as ``forward_plan`` of the
    model Keras holds, weights equal bit for bit, so the same outputs."""
    read, derived = archive_plan(to_bytes(trained)), forward_plan(trained)
    assert [(s.name, s.row_shape, s.dtype) for s in read.inputs] == [
        (s.name, s.row_shape, s.dtype) for s in derived.inputs]
    assert [(layer.name, layer.kind, layer.sources) for layer in read.layers] == [
        (layer.name, layer.kind, layer.sources) for layer in derived.layers]
    for ours, theirs in zip(read.layers, derived.layers, strict=True):
        assert len(ours.weights) == len(theirs.weights), ours.name
        for a, b in zip(ours.weights, theirs.weights, strict=True):
            np.testing.assert_array_equal(a, b)
    assert read.output == derived.output
    x = features.transform(fitted, flights)
    got = predict(NumpyForward.from_plan(read), x, batch=700)  # the pass in batches, concatenated
    assert got.shape == (len(flights), 1)
    np.testing.assert_allclose(got, predict(trained, x), rtol=1e-5, atol=1e-6)


def test_unsupported_layer_is_refused_not_approximated():
    import keras

    inp = keras.Input((4,), name="numeric")
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.BatchNormalization()(inp))
    with pytest.raises(UnsupportedModel, match="BatchNormalization is not supported"):
        NumpyForward.from_keras(keras.Model(inp, out))
    inp = keras.Input((4,), name="numeric")
    with pytest.raises(UnsupportedModel, match="activation 'gelu'"):
        NumpyForward.from_keras(keras.Model(inp, keras.layers.Dense(1, activation="gelu")(inp)))


def test_the_preprocessing_fits_the_input_topic(fitted):
    assert schema_problems(fitted, FlightScheduled) == []
    assert model_checks.read_preprocessing(FLIGHTS, fitted.to_dict()) == fitted


@pytest.mark.parametrize(("change", "problem"), [
    ({"distance": "string"}, "distance: the preprocessing reads string, the topic has double"),
    ({"wind_speed": "double"}, "wind_speed: the preprocessing requires it, the topic makes it optional"),
    ({"runway": "string"}, "runway: not a field of FlightScheduled"),
])
def test_a_preprocessing_that_does_not_fit_the_topic_is_refused(fitted, change, problem):
    bad = fitted.model_copy(update={"input_schema": {**fitted.input_schema, **change}})
    assert problem in schema_problems(bad, FlightScheduled)
    with pytest.raises(ModelRefused, match="does not fit") as info:
        model_checks.read_preprocessing(FLIGHTS, bad.to_dict())
    assert info.value.kind == "preprocessing"


@pytest.mark.parametrize(("change", "match"), [({"version": 99}, "v99"), ({"use_case": "sensor_anomaly"}, "use_case")])
def test_a_preprocessing_of_another_version_or_use_case_is_refused(fitted, change, match):
    with pytest.raises(ModelRefused, match=match) as info:
        model_checks.read_preprocessing(FLIGHTS, {**fitted.to_dict(), **change})
    assert info.value.kind == "preprocessing"


def test_a_model_built_for_another_preprocessing_is_refused(flights, fitted, trained):
    other = features.fit(flights.head(300))  # smaller vocabularies and other bins
    with pytest.raises(ModelRefused) as info:
        model_checks.warm_up(FLIGHTS, other, NumpyForward.from_keras(trained), _keras(trained), rows=8)
    assert info.value.kind == "architecture"


def test_nan_weights_fail_the_canary(fitted, trained):
    broken = from_bytes(to_bytes(trained))
    layer = broken.get_layer("p_delayed")
    layer.set_weights([np.full_like(w, np.nan) for w in layer.get_weights()])
    with pytest.raises(ModelRefused, match="non-finite") as info:
        model_checks.warm_up(FLIGHTS, fitted, NumpyForward.from_keras(broken), _keras(broken), rows=8)
    assert info.value.kind == "canary"
