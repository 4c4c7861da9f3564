"""The sensor use case through the same retraining core, against the real broker and MLflow on SQLite:
publish, a second run gated against the champion, bad readings rejected at the snapshot."""

from __future__ import annotations

import uuid
from datetime import timedelta

import orjson
import pytest
from confluent_kafka import Producer

from ml import pipeline, snapshot
from ml.keras_models import from_bytes
from ml.publish import read_envelopes
from ml.registry import Registry
from ml.settings import LoopSettings
from ml.wire import Framing
from use_cases.sensor_anomaly.generator import START, generate, replay_readings
from use_cases.sensor_anomaly.preprocessing import SensorPreprocessing, anomaly_score, transform
from use_cases.sensor_anomaly.use_case import SensorAnomaly

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READINGS = 2000  # per machine: 4 machines, 33 hours at one reading a minute


@pytest.fixture
def settings(kafka_bootstrap, tmp_path, signing_keys) -> LoopSettings:
    u = uuid.uuid4().hex[:8]
    return LoopSettings(
        use_case="sensor_anomaly", kafka_bootstrap_servers=kafka_bootstrap, loop_data_dir=tmp_path / "data",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", mlflow_artifact_root=tmp_path / "artifacts",
        topic_prefix=f"t{u}.",
        min_training_rows=500, epochs=10, holdout_days=0.25, **signing_keys.loop,
    )


def test_retrain_publishes_an_autoencoder_whose_envelope_rebuilds_the_scores(high_watermark, settings):
    first = generate(4, READINGS, seed=1, anomaly_rate=0.08)
    replay_readings(settings, first)

    outcome = pipeline.retrain(settings, "sensors-1")
    assert outcome.status == "published", outcome.reason
    assert outcome.model_version == 1
    (manifest,) = snapshot.list_manifests(settings, settings.topic("sensors.readings"))
    assert (manifest.row_count, manifest.rejected_count, manifest.contract) == (4 * READINGS, 0, "SensorReading")
    registry = Registry(settings)
    assert registry.champion().lineage[0]["partitions"] == [p.model_dump() for p in manifest.partitions]
    decision = registry.decision(outcome.mlflow_run_id)
    assert decision["use_case"] == "sensor_anomaly" and decision["champion"] is None

    # The envelope is keyed by the sensor model's name and carries everything the scorer needs.
    (envelope,) = read_envelopes(settings)
    assert (envelope.model_name, envelope.model_version) == ("sensor_anomaly", 1)
    fitted = SensorPreprocessing.from_dict(envelope.preprocessing)
    assert fitted.use_case == "sensor_anomaly" and fitted.threshold > 0
    assert set(fitted.machine_center) == {"m000", "m001", "m002", "m003"}
    model = from_bytes(envelope.artifact())
    holdout = first[first["ts"] > first["ts"].max() - timedelta(days=settings.holdout_days)]
    records = holdout.to_dict("records")
    x = transform(fitted, records)
    flagged = anomaly_score(model.predict_on_batch(x), x) > fitted.threshold
    recall = flagged[holdout["is_anomaly"].to_numpy()].mean()
    precision = holdout["is_anomaly"].to_numpy()[flagged].mean()
    assert (precision, recall) == pytest.approx((envelope.metrics["precision"], envelope.metrics["recall"]))

    # The next day's readings: a challenger judged against the champion on the same, most recent readings.
    replay_readings(settings, generate(4, 1000, seed=2, anomaly_rate=0.08,
                                       start=START + timedelta(minutes=READINGS)))
    second = pipeline.retrain(settings, "sensors-2")
    assert second.status in ("published", "rejected")
    decision = registry.decision(second.mlflow_run_id)
    assert decision["champion"] is not None
    challenger, champion = decision["challenger"], decision["champion"]
    assert challenger["rows"] == champion["rows"]
    gate = {c.metric: c for c in SensorAnomaly().gate_criteria()}
    # The interval of the F1 difference on the same readings, each model at its own threshold (GATE_INTERVAL).
    interval = decision["intervals"]["f1"]
    assert interval["point"] == pytest.approx(challenger["f1"] - champion["f1"])
    assert interval["low"] <= interval["point"] <= interval["high"]
    assert (interval["level"], interval["samples"]) == (settings.gate_ci_level, settings.gate_bootstrap_samples)
    assert registry.client().get_run(second.mlflow_run_id).data.metrics["holdout_f1_diff_low"] == pytest.approx(
        interval["low"])
    promote = (challenger["f1"] >= champion["f1"] - gate["f1"].margin and interval["low"] >= -gate["f1"].margin
               and challenger["precision"] >= gate["precision"].floor
               and challenger["recall"] >= gate["recall"].floor)
    assert decision["verdict"] == ("promote" if promote else "reject")
    assert high_watermark(settings.models_topic) == (2 if promote else 1)
    assert len(snapshot.list_manifests(settings, settings.topic("sensors.readings"))) == 2


def test_bad_readings_are_rejected_by_class_and_too_many_stop_the_run(high_watermark, settings):
    readings = generate(4, 500, seed=1, anomaly_rate=0.08)
    replay_readings(settings, readings)
    good = readings.iloc[0].to_dict()
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    framing, topic = Framing(settings), settings.topic("sensors.readings")
    bad = [framing.frame(topic, b"not json")] * 10 + [b"no frame"] * 10  # undecodable
    bad += [framing.frame(topic, b'{"schema_version":1,"reading_id":"x","machine_id":"m000"}')] * 15  # schema
    out_of_range = {**good, "ts": good["ts"].isoformat(), "rpm": 99_999.0}
    bad += [framing.frame(topic, orjson.dumps(out_of_range))] * 10
    for value in bad:
        producer.produce(settings.topic("sensors.readings"), key=b"m000", value=value)
    assert producer.flush(30) == 0

    outcome = pipeline.retrain(settings, "corrupt")
    (manifest,) = snapshot.list_manifests(settings, settings.topic("sensors.readings"))
    assert (manifest.row_count, manifest.rejected_count) == (2000, 45)
    assert manifest.rejected_by_class == {"undecodable": 20, "schema": 15, "range": 10}
    # 45 of 2045 records (2.2%) rejected: above the 1% the suite allows.
    assert outcome.status == "invalid" and "rejected" in outcome.reason
    assert high_watermark(settings.models_topic) == 0
