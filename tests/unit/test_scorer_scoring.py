"""score_batch: one prediction per good record, one dead letter per bad one, outputs follow their contracts."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest

from ml.contracts import DeadLetter
from ml.decode import ContractDecoder
from ml.numpy_forward import NumpyForward
from ml.settings import LoopSettings
from ml.wire import header
from scoring_service.scoring import InputBatch, OutputFrames, ServingModel, score_batch
from use_cases.flight_delay import preprocessing
from use_cases.flight_delay.contracts import FlightPrediction, FlightScheduled
from use_cases.flight_delay.replay import build_stream
from use_cases.flight_delay.source import load_completed
from use_cases.flight_delay.use_case import FlightDelay, FlightDelaySettings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def values() -> list[bytes]:
    stream = build_stream(LoopSettings(), load_completed((1, 1), limit=1000))
    return [v for t, v in zip(stream.topics, stream.values, strict=True) if t == "flights.scheduled"]


@pytest.fixture(scope="module")
def serving(values):
    import keras

    from use_cases.flight_delay.model import build

    fitted = preprocessing.fit(load_completed((1, 1), limit=1000))
    keras.utils.set_random_seed(5)
    model = build(fitted)
    return ServingModel("m", 3, fitted, NumpyForward.from_keras(model), "0" * 64), model


FRAMES = OutputFrames(predictions=header(7), dead_letters=header(8))


def test_good_and_bad_records_split_with_positions_and_contracts(values, serving):
    model, keras_model = serving
    good = orjson.loads(values[0])
    bad = [b"\x00garbage", orjson.dumps({**good, "month": 13}), orjson.dumps({**good, "carrier": 7}), None]
    raw = [*values[:300], *bad, *values[300:]]
    batch = InputBatch.of("in", [(2, 100 + i, b"k", v) for i, v in enumerate(raw)])
    # The use case's own setting decides (FLIGHT_DELAY_DECISION_THRESHOLD).
    use_case = FlightDelay(FlightDelaySettings(decision_threshold=0.3))
    scored = score_batch(batch, model, use_case, ContractDecoder(FlightScheduled), FRAMES, now=NOW)

    assert len(scored.predictions) == len(values)
    assert scored.dead_letter_classes == ["undecodable", "range", "schema", "undecodable"]
    # Each output value is framed with its topic's schema id.
    assert {v[:5] for _, v in scored.predictions} == {FRAMES.predictions}
    assert {v[:5] for _, v in scored.dead_letters} == {FRAMES.dead_letters}
    predictions = [FlightPrediction.model_validate_json(v[5:]) for _, v in scored.predictions]
    assert [p.source_offset for p in predictions] == [100 + i for i, v in enumerate(raw) if v in values]
    assert [k for k, _ in scored.predictions] == [orjson.loads(v)["flight_id"].encode() for v in values]
    assert {(p.model_name, p.model_version, p.threshold, p.scored_at) for p in predictions} == {("m", 3, 0.3, NOW)}
    # The probabilities are the model's on the same records transformed as a list of dicts.
    expected = np.asarray(keras_model(preprocessing.transform(model.preprocessing, [orjson.loads(v) for v in values]),
                                      training=False)).reshape(-1)
    np.testing.assert_allclose([p.probability for p in predictions], expected, atol=1e-5)
    assert [p.delayed for p in predictions] == (expected >= 0.3).tolist()

    dead = [DeadLetter.model_validate_json(v[5:]) for _, v in scored.dead_letters]
    assert [d.source_offset for d in dead] == [400, 401, 402, 403]
    assert [base64.b64decode(d.original_b64) for d in dead] == [b"\x00garbage", bad[1], bad[2], b""]
    assert "month" in dead[1].reason and "carrier" in dead[2].reason


def test_a_batch_of_only_dead_letters_scores_nothing(serving):
    batch = InputBatch.of("in", [(0, i, None, b"{}") for i in range(3)])
    scored = score_batch(batch, serving[0], FlightDelay(), ContractDecoder(FlightScheduled), FRAMES, now=NOW)
    assert scored.predictions == [] and scored.dead_letter_classes == ["schema"] * 3
