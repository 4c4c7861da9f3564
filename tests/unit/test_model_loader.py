"""The model loader child: Keras loads and runs there, arrays come back, and a dead or hung child is replaced."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from ml import features
from ml.flights_source import load_completed
from scoring_service import model_checks
from scoring_service.inference import NumpyForward
from scoring_service.model_loader import LoaderFailed, ModelLoader
from scoring_service.use_cases.flights import FLIGHT_DELAY

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module")
def contract():
    return features.fit(load_completed((1, 1), limit=1000))


@pytest.fixture(scope="module")
def artifact(contract) -> bytes:
    import keras

    from ml import model as model_lib

    keras.utils.set_random_seed(5)
    return model_lib.to_bytes(model_lib.build(contract))


@pytest.fixture(scope="module")
def loader():
    loader = ModelLoader(timeout_s=120)
    loader.start()
    yield loader
    loader.close()


def test_plan_from_the_child_scores_like_keras_in_the_child(loader, contract, artifact):
    forward = NumpyForward.from_plan(loader.load(artifact))
    p = model_checks.warm_up(FLIGHT_DELAY, contract, forward, loader.keras_output, rows=32)
    assert p.shape == (32, 1) and np.all(np.isfinite(p))


def test_corrupt_bytes_are_refused_and_the_child_keeps_serving(loader, contract, artifact):
    with pytest.raises(LoaderFailed) as info:
        loader.load(b"PK\x03\x04 not really a keras archive")
    assert info.value.kind == "load"
    assert NumpyForward.from_plan(loader.load(artifact)).inputs  # same child, next model fine


def test_keras_failure_on_inputs_is_a_canary_refusal(loader, artifact):
    loader.load(artifact)
    with pytest.raises(LoaderFailed) as info:
        loader.keras_output({"wrong": np.zeros((2, 3), np.float32)})
    assert info.value.kind == "canary"


class _ExitOnArrival:
    """A request payload that makes the child exit as it unpickles it: a crash in the middle of a request."""

    def __reduce__(self):
        return os._exit, (3,)


def test_a_child_dying_during_a_request_is_refused_and_replaced(loader, artifact):
    with pytest.raises(LoaderFailed, match="died") as info:
        loader._request("load", _ExitOnArrival())
    assert info.value.kind == "load"
    assert NumpyForward.from_plan(loader.load(artifact)).inputs


def test_a_child_killed_between_requests_is_replaced_before_the_next(loader, artifact):
    os.kill(loader._process.pid, signal.SIGKILL)
    loader._process.wait(10)
    assert NumpyForward.from_plan(loader.load(artifact)).inputs


def test_a_child_that_does_not_answer_in_time_is_replaced(artifact):
    slow = ModelLoader(timeout_s=0.001)  # the child cannot even import TensorFlow in a millisecond
    try:
        with pytest.raises(LoaderFailed, match="no answer"):
            slow.load(artifact)
        assert slow._process.poll() is None  # a fresh child took its place
    finally:
        slow.close()
