"""Rollout verification on a real status topic: live, rejected, another model's records, timeout."""

from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka import Producer

from ml.airflow_tasks import RolloutFailed, wait_for_live
from ml.contracts import ModelStatus
from ml.schemas import TopicSchema
from ml.settings import LoopSettings
from ml.wire import Framing

pytestmark = pytest.mark.integration


def _status(settings: LoopSettings, topic: str, *records: dict | bytes) -> None:
    """Status records on ``topic``, framed with its schema; bytes go as they are (unreadable: skipped)."""
    framing = Framing(settings, [TopicSchema(topic, ModelStatus)])
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for r in records:
        if isinstance(r, bytes):  # an unreadable record: logged and skipped by the reader
            producer.produce(topic, value=r)
            continue
        record = {"schema_version": 1, "model_name": "flight_delay", "reason_kind": "ok", "reason": "",
                  "scorer_id": "s1", "envelope_topic": "models", "envelope_partition": 0, "envelope_offset": 0,
                  "at": "2026-11-24T00:00:00+00:00", **r}
        producer.produce(topic, key=record["model_name"].encode(), value=framing.frame(topic, orjson.dumps(record)))
    assert producer.flush(10) == 0


@pytest.fixture
def settings(kafka_bootstrap) -> LoopSettings:
    return LoopSettings(kafka_bootstrap_servers=kafka_bootstrap, use_case="flight_delay")


def test_a_live_record_written_before_the_wait_counts_and_other_models_are_ignored(settings, new_topic):
    topic = new_topic("status")
    _status(settings, topic,
            {"status": "live", "model_name": "other_model", "model_version": 3},
            {"status": "live", "model_version": 1}, b"not json",
            {"status": "live", "model_version": 2, "scorer_id": "s2"})

    record = wait_for_live(settings, 2, 20, topic=topic)
    assert (record["model_version"], record["scorer_id"]) == (2, "s2")


def test_a_rejection_of_the_version_fails_at_once_with_the_scorers_reason(settings, new_topic):
    topic = new_topic("status")
    _status(settings, topic,
            {"status": "rejected", "model_version": 4, "reason_kind": "signature", "reason": "bad signature"})

    t0 = time.monotonic()
    with pytest.raises(RolloutFailed, match=r"rejected flight_delay v4 \(signature\): bad signature"):
        wait_for_live(settings, 4, 60, topic=topic)
    assert time.monotonic() - t0 < 20


def test_no_live_record_fails_after_the_timeout_naming_the_topic(settings, new_topic):
    topic = new_topic("status")
    _status(settings, topic, {"status": "live", "model_version": 1})

    t0 = time.monotonic()
    with pytest.raises(RolloutFailed, match=rf"no scorer reported flight_delay v2 live on {topic} within 3 s "
                                            r"\(1 status records read\)"):
        wait_for_live(settings, 2, 3, topic=topic)
    assert 3 <= time.monotonic() - t0 < 10


def test_a_missing_status_topic_is_waited_for_then_named(settings):
    with pytest.raises(RolloutFailed, match="the topic does not exist"):
        wait_for_live(settings, 1, 2, topic="status-never-created")
