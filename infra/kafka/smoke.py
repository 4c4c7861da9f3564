"""A round trip through a broker: the check behind `make demo` until the full loop exists."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from infra.kafka.errors import KafkaSetupError
from infra.kafka.security import connection_failure


@dataclass(frozen=True)
class RoundTrip:
    topic: str
    produced: int
    high_watermark: int
    consumed: int
    produce_s: float
    consume_s: float


def round_trip(bootstrap: str, messages: int = 10_000, timeout: float = 30.0,
               settings: Mapping[str, str] | None = None) -> RoundTrip:
    """Produce ``messages`` records to a new topic, read them back, delete the topic; every client with the
    librdkafka ``settings`` (a secured broker's credentials and CA; its bootstrap servers are ``bootstrap``).

    Raises KafkaSetupError naming the bootstrap servers if the broker does not answer, refuses the credentials or
    the certificate, or a record is missing.
    """
    common = {**(settings or {}), "bootstrap.servers": bootstrap}
    # Why a connection failed (credentials, certificate) reaches the error callback only, not the exception.
    errors: list[KafkaError] = []
    admin = AdminClient({**common, "error_cb": errors.append})
    try:
        admin.list_topics(timeout=10)
    except KafkaException as exc:
        admin.poll(0)
        raise KafkaSetupError(connection_failure(bootstrap, common, errors, exc)) from exc
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=-1)])[topic].result(timeout)
    try:
        producer = Producer({**common, "linger.ms": 5, "enable.idempotence": True})
        failures: list[KafkaError] = []

        def on_delivery(err, _msg):
            if err is not None:
                failures.append(err)

        t0 = time.monotonic()
        for i in range(messages):
            producer.produce(topic, key=str(i).encode(), value=f"record {i}".encode(), on_delivery=on_delivery)
            producer.poll(0)
        remaining = producer.flush(timeout)
        produce_s = time.monotonic() - t0
        if remaining or failures:
            raise KafkaSetupError(f"{remaining} undelivered, {len(failures)} failed records on {bootstrap}: "
                                  f"{failures[:1]}")

        consumer = Consumer({
            **common,
            "group.id": f"{topic}-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        })
        try:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout)
            consumer.assign([TopicPartition(topic, 0, 0)])
            consumed, t0 = 0, time.monotonic()
            while consumed < messages and time.monotonic() - t0 < timeout:
                for msg in consumer.consume(1000, timeout=1.0):
                    if msg.error() is None:
                        consumed += 1
                    elif msg.error().code() != KafkaError._PARTITION_EOF:
                        raise KafkaSetupError(f"consuming {topic} from {bootstrap}: {msg.error()}")
            consume_s = time.monotonic() - t0
        finally:
            consumer.close()
        if consumed != messages or high != messages:
            raise KafkaSetupError(f"{topic} on {bootstrap}: produced {messages}, high watermark {high}, "
                                  f"consumed {consumed}")
        return RoundTrip(topic, messages, high, consumed, produce_s, consume_s)
    finally:
        admin.delete_topics([topic])
