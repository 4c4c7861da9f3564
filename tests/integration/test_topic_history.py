"""A topic's history against the real broker: up to the end offsets of one moment, then followed without
losing what was published in between."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer

from ml.topic_history import TopicHistory

pytestmark = pytest.mark.integration


def _produce(bootstrap: str, topic: str, records: list[tuple[int, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, value in records:
        producer.produce(topic, value=value, partition=partition)
    assert producer.flush(30) == 0


def _follow(consumer: Consumer, n: int) -> list[tuple[int, bytes]]:
    """The next ``n`` records (partition, value), waiting up to 30 s for them."""
    out, deadline = [], time.monotonic() + 30
    while len(out) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            out.append((msg.partition(), msg.value()))
    return out


def _consumer(bootstrap: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"history-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False, "enable.partition.eof": True})


def test_history_stops_at_the_end_offsets_and_following_misses_nothing(kafka_bootstrap, new_topic):
    topic = new_topic("history", partitions=3)  # partition 2 stays empty until after the history opens
    _produce(kafka_bootstrap, topic, [(0, b"a0"), (0, b"a1"), (1, b"b0")])
    consumer = _consumer(kafka_bootstrap)
    try:
        history = TopicHistory.open(consumer, topic, [0, 1, 2], timeout_s=30)
        assert history.ends == {0: 2, 1: 1, 2: 0} and history.pending == {0, 1}
        # Published after the end offsets were taken, before anything was read: not history.
        _produce(kafka_bootstrap, topic, [(0, b"a2"), (1, b"b1"), (2, b"c0")])
        read = [(m.partition(), m.value()) for m in history.records(stop=lambda: False)]
        assert sorted(read) == [(0, b"a0"), (0, b"a1"), (1, b"b0")]
        assert history.pending == set()

        history.follow_from_ends()
        assert sorted(_follow(consumer, 3)) == [(0, b"a2"), (1, b"b1"), (2, b"c0")]
    finally:
        consumer.close()


def test_an_empty_topic_has_no_history_and_a_stop_ends_the_read(kafka_bootstrap, new_topic):
    topic = new_topic("history-empty")
    consumer = _consumer(kafka_bootstrap)
    try:
        history = TopicHistory.open(consumer, topic, [0], timeout_s=30)
        assert list(history.records(stop=lambda: False)) == [] and history.pending == set()
        history.follow_from_ends()  # right after the assignment, before any fetch
        _produce(kafka_bootstrap, topic, [(0, b"x")])
        assert _follow(consumer, 1) == [(0, b"x")]
    finally:
        consumer.close()
    consumer = _consumer(kafka_bootstrap)
    try:
        history = TopicHistory.open(consumer, topic, [0], timeout_s=30)
        assert list(history.records(stop=lambda: True)) == [] and history.pending == {0}
    finally:
        consumer.close()
