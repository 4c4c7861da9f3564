"""The loop's Kafka topics: reachability check and idempotent creation with the documented settings.

The topics are those of the use cases (input, labels, predictions, shadow predictions, DLQ; ``ml.use_cases``) and
the loop's own: the compacted `models` topic of signed envelopes and the `models.status` topic of scorer reports.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from ml import use_cases
from ml.client_ids import TOPIC_PROBE_GROUP
from ml.errors import BrokerUnavailable
from ml.kafka_client import ClientErrors
from ml.settings import LoopSettings
from ml.use_cases import UseCase

log = logging.getLogger(__name__)

# A model envelope (Keras file, metadata, signature) must fit in one record; the broker default is ~1 MiB.
MODEL_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def admin_client(settings: LoopSettings) -> AdminClient:
    """An admin client of ``settings`` that keeps librdkafka's errors (``admin.errors``) for require_broker."""
    errors = ClientErrors()
    # log_level 0 keeps librdkafka from printing connection-refused lines; BrokerUnavailable says it once.
    # Without sparse connections it connects when made: otherwise a new client's first request (a snapshot's plan)
    # waited for a connection started only then, far longer than the request itself (docs/performance.md).
    admin = AdminClient(settings.kafka_config({"log_level": 0, "error_cb": errors, "enable.sparse.connections": False}))
    admin.errors = errors
    return admin


def require_broker(admin: AdminClient, settings: LoopSettings, timeout: float) -> ClusterMetadata:
    """Cluster metadata from ``admin`` (an ``admin_client`` of ``settings``), or BrokerUnavailable naming the
    bootstrap servers if no broker answers in time, and why when librdkafka said (refused credentials, an untrusted
    certificate)."""
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        admin.poll(0.5)  # serves the error callbacks librdkafka queued meanwhile
        reason = admin.errors.reason(settings) or (exc.args[0] if exc.args else exc)
        raise BrokerUnavailable(settings.kafka_bootstrap_servers, reason) from exc


def replication(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) of a topic on a cluster of ``brokers``: three copies of which two
    must have a write once there are three brokers, so that one broker may fail with nothing lost and no stop
    (producers write with acks=all); one copy on a smaller cluster."""
    factor = min(3, brokers)
    return factor, 2 if factor >= 3 else 1


def topic_specs(settings: LoopSettings, cases: list[UseCase] | None = None, brokers: int = 1) -> list[NewTopic]:
    """The topics of ``cases`` (default: every registered use case) with ``topic_partitions`` partitions,
    `models` compacted, `models.status` with one partition; each replicated as ``replication(brokers)`` says."""
    cases = use_cases.registered() if cases is None else cases
    factor, min_isr = replication(brokers)

    def spec(topic: str, partitions: int, config: dict[str, str] | None = None) -> NewTopic:
        return NewTopic(topic, num_partitions=partitions, replication_factor=factor,
                        config={**(config or {}), "min.insync.replicas": str(min_isr)})

    events = list(dict.fromkeys(settings.topic(t) for uc in cases for t in uc.topics.distinct()))
    # Record timestamps are event times; replayed history is years old, so time-based retention (7 days by
    # default) would delete it within minutes of the replay. The snapshots are the long-term record.
    specs = [spec(t, settings.topic_partitions, {"retention.ms": "-1"}) for t in events]
    # One partition keeps every model version in one order; compaction keeps the latest record per key
    # (the model name), so a scorer starting from the beginning finds the current model quickly.
    specs.append(spec(settings.models_topic, 1, {"cleanup.policy": "compact",
                                                 "max.message.bytes": str(MODEL_MAX_MESSAGE_BYTES)}))
    # One partition: the rollout check and the plugin read every scorer's reports in the order written.
    specs.append(spec(settings.status_topic, 1))
    return specs


def ensure_topics(settings: LoopSettings, cases: list[UseCase] | None = None, timeout: float = 10.0
                  ) -> dict[str, bool]:
    """Create the topics of ``cases`` (default: every registered use case) and the loop's own that do not
    exist yet; returns topic -> True if created now.

    Replication follows the size of the cluster as its metadata tells (``replication``). Existing topics are left
    as they are (their partition count is logged, not changed); a client whose ACLs do not allow creating a topic
    leaves it to an admin. Raises BrokerUnavailable if the cluster does not answer within ``timeout`` seconds.
    """
    admin = admin_client(settings)
    meta = require_broker(admin, settings, timeout)
    specs = {s.topic: s for s in topic_specs(settings, cases, brokers=len(meta.brokers))}
    created = {t: False for t in specs}
    for topic in specs.keys() & meta.topics.keys():
        log.info("topic %s exists with %d partitions", topic, len(meta.topics[topic].partitions))
    missing = [s for t, s in specs.items() if t not in meta.topics]
    if missing:
        for topic, fut in admin.create_topics(missing, request_timeout=timeout).items():
            try:
                fut.result(timeout=timeout)
            except KafkaException as exc:
                code = exc.args[0].code()
                # Another process created it between our metadata read and the request: that is fine.
                if code == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                # A least-privilege client (ACLs) neither creates topics nor sees those it may not use.
                if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
                    log.info("topic %s is not visible to this client, which may not create it (its ACLs); if it "
                             "is missing, an admin creates it (`python -m ml topics`)", topic)
                    continue
                raise
            created[topic] = True
            log.info("topic %s created with %d partitions, replication factor %d, config %s", topic,
                     specs[topic].num_partitions, specs[topic].replication_factor, specs[topic].config)
        wait_until_served(settings, {t: specs[t].num_partitions for t, new in created.items() if new}, timeout)
    return created


def wait_until_served(settings: LoopSettings, partitions: dict[str, int], timeout: float = 10.0) -> None:
    """Block until every partition of the given topics answers an offsets request.

    Right after creation a partition answers NOT_LEADER_FOR_PARTITION until its leader is elected; a
    producer or reader started at that moment would fail instead of retrying.
    """
    consumer = Consumer(settings.kafka_config({"group.id": TOPIC_PROBE_GROUP}))
    deadline = time.monotonic() + timeout
    try:
        for topic, count in partitions.items():
            for p in range(count):
                while True:
                    try:
                        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=max(timeout, 1.0))
                        break
                    except KafkaException as exc:
                        if time.monotonic() > deadline:
                            raise BrokerUnavailable(settings.kafka_bootstrap_servers,
                                                    f"{topic}[{p}] not served after {timeout:.0f} s: {exc}") from exc
                        time.sleep(0.2)
    finally:
        consumer.close()
