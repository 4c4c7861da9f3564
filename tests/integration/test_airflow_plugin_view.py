"""What the plugin page lists, from real topics: versions on the model topic and which scorers run them."""

from __future__ import annotations

import uuid

import orjson
import pytest
from confluent_kafka import Producer

from ml.loop_view import model_versions
from ml.publish import build_envelope, publish
from ml.settings import LoopSettings
from ml.topics import ensure_topics
from ml.wire import Framing

pytestmark = pytest.mark.integration


def test_versions_are_listed_newest_first_with_the_scorers_that_run_or_rejected_them(kafka_bootstrap, new_topic):
    status = new_topic("status")
    settings = LoopSettings(kafka_bootstrap_servers=kafka_bootstrap, use_case="flight_delay",
                            topic_prefix=f"t{uuid.uuid4().hex[:8]}.", topic_names={"models.status": status},
                            model_signing_key="k")
    ensure_topics(settings)
    for version in (1, 2):  # the page needs valid signed envelopes, not loadable models
        publish(settings, build_envelope(
            model_name="flight_delay", model_version=version, run_id=f"run-{version}", model_uri="models:/x/1",
            preprocessing={}, metrics={"roc_auc": 0.7 + version / 100, "log_loss": 0.6},
            decision_id=f"d{version}", artifact=b"model bytes %d" % version, key=b"k"))
    # Another use case's version on the same models topic is not listed under this one.
    publish(settings, build_envelope(
        model_name="sensor_anomaly", model_version=7, run_id="run-s", model_uri="models:/s/7", preprocessing={},
        metrics={"f1": 0.8}, decision_id="ds", artifact=b"sensor model", key=b"k"))
    producer, framing = Producer({"bootstrap.servers": kafka_bootstrap}), Framing(settings)
    for scorer, state, version in [("s1", "live", 1), ("s2", "live", 1), ("s1", "live", 2), ("s3", "rejected", 2)]:
        producer.produce(status, key=b"flight_delay", value=framing.frame(status, orjson.dumps({
            "schema_version": 1, "status": state, "model_name": "flight_delay", "model_version": version,
            "reason_kind": "canary" if state == "rejected" else "ok", "reason": "NaN scores", "scorer_id": scorer})))
    assert producer.flush(10) == 0

    rows = model_versions(settings, with_decisions=False)
    assert [(r.model_version, r.live_on, r.rejected_by) for r in rows] == [
        (2, ["s1"], {"s3": "canary: NaN scores"}), (1, ["s2"], {})]
    assert rows[0].metrics["roc_auc"] == pytest.approx(0.72)
    sensors = LoopSettings.model_validate({**settings.model_dump(), "use_case": "sensor_anomaly",
                                           "model_name": None, "mlflow_experiment": None})
    assert [r.model_version for r in model_versions(sensors, with_decisions=False)] == [7]
