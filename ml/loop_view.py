"""What the Airflow plugin page shows: every model version on the model topic with its metrics, its gate
decision (with the intervals of its metrics' differences from the champion) and which scorers run it (from the
status topic). Plain functions, testable without Airflow."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict

from ml.bootstrap import Interval
from ml.client_ids import STATUS_READER_GROUP
from ml.errors import BrokerUnavailable, LoopError
from ml.settings import LoopSettings

log = logging.getLogger(__name__)



class VersionRow(BaseModel):
    """One published model version as the page lists it."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: int
    created_at: str
    run_id: str
    metrics: dict[str, float]
    decision_id: str
    verdict: str | None = None
    reasons: list[str] = []
    intervals: dict[str, Interval] = {}  # the gate's interval of each metric's difference from the champion
    stage: str = "champion"  # its newest envelope's: champion, or shadow (scored beside the champion, not served)
    live_on: list[str] = []  # scorer ids whose latest status is "live" with this version
    shadow_on: list[str] = []  # scorer ids running it as their shadow (not retired or promoted since)
    rejected_by: dict[str, str] = {}  # scorer id -> reason


def read_status(settings: LoopSettings, topic: str | None = None, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Every readable record of the status topic up to its end offsets at the start, in offset order.

    An absent topic gives [] (no scorer has reported yet).
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    from ml.wire import TopicReader, WireError

    topic = topic or settings.status_topic
    reader = TopicReader(settings, topic)
    consumer = Consumer(settings.kafka_config({
        "enable.auto.commit": False, "group.id": f"{STATUS_READER_GROUP}{uuid.uuid4().hex[:8]}",
        "enable.partition.eof": True, "log_level": 0}))
    out: list[dict[str, Any]] = []
    try:
        try:
            found = consumer.list_topics(timeout=timeout_s).topics.get(topic)
        except KafkaException as e:  # no broker answered
            raise BrokerUnavailable(settings.kafka_bootstrap_servers, e) from e
        if found is None or found.error is not None:
            return []
        ends = {}
        for p in found.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        pending, deadline = set(ends), time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise BrokerUnavailable(settings.kafka_bootstrap_servers, msg.error())
            if msg.offset() + 1 >= ends[msg.partition()]:
                pending.discard(msg.partition())
            try:
                out.append(reader.loads(msg.value()))
            except WireError as e:
                log.warning("unreadable status record at %s[%d]@%d: %s", topic, msg.partition(), msg.offset(), e)
    finally:
        consumer.close()
    return out


def model_versions(settings: LoopSettings, *, with_decisions: bool = True, timeout_s: float = 10.0
                   ) -> list[VersionRow]:
    """Published versions of ``settings.model_name``, newest first, with decisions and scorer status.

    Raises BrokerUnavailable or TopicMissing (LoopError) when Kafka cannot say.
    """
    from confluent_kafka import KafkaException

    from ml.publish import read_envelopes

    try:
        envelopes = read_envelopes(settings, timeout_s=timeout_s)
    except KafkaException as e:  # read_envelopes lets a metadata timeout through unwrapped
        raise BrokerUnavailable(settings.kafka_bootstrap_servers, e) from e
    # A promoted shadow's version has a shadow envelope and then a champion one: the newest says its stage.
    rows = {e.model_version: VersionRow(model_name=e.model_name, model_version=e.model_version,
                                        created_at=e.created_at.isoformat(), run_id=e.run_id, metrics=e.metrics,
                                        decision_id=e.decision_id, stage=e.stage)
            for e in envelopes if e.model_name == settings.model_name}
    live: dict[str, Any] = {}  # scorer id -> the version its latest live record names
    shadow: dict[str, Any] = {}  # scorer id -> the version it runs as its shadow
    for record in read_status(settings, timeout_s=timeout_s):
        if record.get("model_name") != settings.model_name:
            continue
        scorer, version, status = str(record.get("scorer_id")), record.get("model_version"), record.get("status")
        if status == "live":
            live[scorer] = version
            if shadow.get(scorer) == version:  # promoted
                del shadow[scorer]
        elif status == "shadow":
            shadow[scorer] = version
        elif status == "retired" and shadow.get(scorer) == version:
            del shadow[scorer]
        elif status == "rejected" and version in rows:
            rows[version].rejected_by[scorer] = f"{record.get('reason_kind')}: {record.get('reason')}"
    for on, versions in (("live_on", live), ("shadow_on", shadow)):
        for scorer, version in versions.items():
            if version in rows:
                getattr(rows[version], on).append(scorer)
    if with_decisions and rows:
        from mlflow.exceptions import MlflowException

        from ml.registry import Registry

        registry = Registry(settings)
        for row in rows.values():
            try:
                decision = registry.decision(row.run_id) or {}
            except (LoopError, MlflowException) as e:  # MLflow down or another store: Kafka's view still shows
                log.warning("no decision for run %s: %s", row.run_id, e)
                continue
            row.verdict, row.reasons = decision.get("verdict"), decision.get("reasons", [])
            row.intervals = {k: Interval.model_validate(v) for k, v in (decision.get("intervals") or {}).items()}
    return sorted(rows.values(), key=lambda r: r.model_version, reverse=True)
