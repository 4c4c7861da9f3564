"""The same scorer serving the sensor use case against the real broker: autoencoder scores with the
threshold that travelled with the model, a hot swap mid-stream with every reading scored once, and bad
readings in `sensors.dlq`."""

from __future__ import annotations

import base64
import time
import uuid
from collections import Counter

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, Producer

from ml.keras_models import to_bytes
from ml.publish import build_envelope, publish
from ml.settings import LoopSettings
from ml.wire import Framing, TopicReader
from scoring_service.config import ScorerSettings
from use_cases.sensor_anomaly import model as autoencoder, preprocessing as features
from use_cases.sensor_anomaly.contracts import SensorScore
from use_cases.sensor_anomaly.generator import generate, stream

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def readings():
    return generate(3, 1500, seed=3, anomaly_rate=0.05)


@pytest.fixture(scope="module")
def models(readings):
    """Two autoencoders (different seeds) with their preprocessing, each carrying its own threshold."""
    import keras

    fitted = features.fit(readings[~readings["is_anomaly"]])
    out = {}
    for version, (seed, threshold) in {1: (1, 0.8), 2: (2, 1.5)}.items():
        keras.utils.set_random_seed(seed)
        out[version] = (autoencoder.build(fitted), fitted.with_threshold(threshold, "test"))
    return out


@pytest.fixture
def settings(kafka_bootstrap, new_topic, signing_keys) -> ScorerSettings:
    return ScorerSettings(
        use_case="sensor_anomaly", kafka_bootstrap_servers=kafka_bootstrap,
        topic_names={"sensors.readings": new_topic("readings", 3), "sensors.scores": new_topic("scores", 3),
                     "sensors.dlq": new_topic("sdlq", 1), "models.status": new_topic("status", 1),
                     "models": new_topic("models", 1, {"cleanup.policy": "compact",
                                                       "max.message.bytes": str(4 << 20)})},
        batch_size=500, batch_max_wait_ms=20, http_port=0,
        model_trusted_keys_dir=signing_keys.trusted_dir, session_timeout_ms=6000)


def _publish(s: ScorerSettings, keys, version: int, model, fitted) -> None:
    loop = LoopSettings(kafka_bootstrap_servers=s.kafka_bootstrap_servers, topic_names=s.topic_names,
                        use_case="sensor_anomaly", **keys.loop)
    publish(loop, build_envelope(
        model_name=s.model_name, model_version=version, run_id=f"run-{version}",
        model_uri=f"models:/{s.model_name}/{version}", preprocessing=fitted.to_dict(), metrics={"f1": 0.8},
        decision_id=f"d-{version}", artifact=to_bytes(model), signer=loop.signer()))


def _read(s: ScorerSettings, topic: str, count: int, timeout: float = 90.0) -> list[dict]:
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers, "group.id": f"r-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    c.subscribe([topic])
    reader = TopicReader(s, topic)
    out, deadline = [], time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            out += [reader.loads(m.value()) for m in c.consume(1000, 0.2) if m.error() is None]
        time.sleep(1.0)  # and nothing more after the expected count
        out += [reader.loads(m.value()) for m in c.consume(1000, 0.5) if m.error() is None]
    finally:
        c.close()
    return out


def test_sensor_scorer_swaps_mid_stream_and_dead_letters_bad_readings(settings, readings, models, scorer_in_thread,
                                                                       signing_keys):
    s = settings
    _publish(s, signing_keys, 1, *models[1])
    with scorer_in_thread(s, "sensor-it"):
        events = stream(LoopSettings(topic_names=s.topic_names), readings)
        good = list(zip(events.keys, events.values, strict=True))
        first = orjson.loads(good[0][1])
        bad = [b"\xffnot json", orjson.dumps({k: v for k, v in first.items() if k != "vibration"}),
               orjson.dumps({**first, "temperature": 500.0})]
        producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers, "enable.idempotence": True})
        framing = Framing(s)
        for i, (key, value) in enumerate(good):
            producer.produce(s.input_topic, key=key.encode(), value=framing.frame(s.input_topic, value))
            if i == len(good) // 2:
                producer.flush()
                _publish(s, signing_keys, 2, *models[2])  # mid-stream: the scorer swaps while readings keep coming
                for b in bad:
                    producer.produce(s.input_topic, key=b"m000", value=framing.frame(s.input_topic, b))
            if i % 200 == 0:
                producer.poll(0)
                time.sleep(0.02)
        assert producer.flush(30) == 0
        scores = _read(s, s.output_topic, len(good))
        dead = _read(s, s.dlq_topic, len(bad), timeout=30)

    by_reading = Counter(r["reading_id"] for r in scores)
    assert len(by_reading) == len(good) and max(by_reading.values()) == 1, "a reading lost or scored twice"
    versions = Counter(r["model_version"] for r in scores)
    assert set(versions) == {1, 2}, versions
    for r in scores[:200]:
        SensorScore.model_validate(r)
    # Each score is the autoencoder's reconstruction error of its version, judged at that version's threshold.
    sample = readings.set_index("reading_id").loc[[r["reading_id"] for r in scores[:300]]].reset_index()
    for version in (1, 2):
        model, fitted = models[version]
        mine = [(i, r) for i, r in enumerate(scores[:300]) if r["model_version"] == version]
        if not mine:
            continue
        x = features.transform(fitted, sample.iloc[[i for i, _ in mine]])
        expected = features.anomaly_score(np.asarray(model(x, training=False)), x)
        np.testing.assert_allclose([r["score"] for _, r in mine], expected, rtol=1e-4, atol=1e-6)
        assert all(r["threshold"] == fitted.threshold for _, r in mine)
        assert all(r["is_anomaly"] == (r["score"] > fitted.threshold) for _, r in mine)
    assert sorted(d["error_class"] for d in dead) == ["range", "schema", "undecodable"]
    assert {base64.b64decode(d["original_b64"]) for d in dead} == {framing.frame(s.input_topic, b) for b in bad}
    assert all(d["source_topic"] == s.input_topic for d in dead)
