"""Exact offset ranges read from a real broker with one consumer: a range that starts where the last one ended goes
on without a new assignment, and every offset comes once however the ranges are cut, transaction markers at the
end included."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from ml.kafka_ranges import RangeReader, snapshot_consumer
from ml.settings import LoopSettings

pytestmark = pytest.mark.integration


class _CountingAssigns:
    """The real consumer, counting its ``assign`` calls (each one a fetch started afresh)."""

    def __init__(self, consumer) -> None:
        self.consumer, self.assigns = consumer, 0

    def assign(self, partitions) -> None:
        self.assigns += 1
        self.consumer.assign(partitions)

    def __getattr__(self, name: str):
        return getattr(self.consumer, name)


@pytest.fixture
def topic(kafka_bootstrap: str, kafka_admin: AdminClient):
    name = f"ranges-{uuid.uuid4().hex[:8]}"
    kafka_admin.create_topics([NewTopic(name, 1, 1)])[name].result(30)
    yield name
    kafka_admin.delete_topics([name])[name].result(30)


@pytest.fixture
def consumer(kafka_bootstrap: str):
    c = snapshot_consumer(LoopSettings(kafka_bootstrap_servers=kafka_bootstrap))
    yield _CountingAssigns(c)
    c.close()


def _produce(bootstrap: str, topic: str, n: int, transactional: bool = False) -> None:
    p = Producer({"bootstrap.servers": bootstrap, **({"transactional.id": uuid.uuid4().hex} if transactional else {})})
    if transactional:
        p.init_transactions(30)
        p.begin_transaction()
    for i in range(n):
        p.produce(topic, f"v{i}".encode(), partition=0)
    if transactional:
        p.commit_transaction(30)  # the commit marker takes offset n
    p.flush(30)


def _offsets(reader: RangeReader, start: int, end: int, batch_size: int = 7) -> list[int]:
    return [m.offset() for batch in reader.read(0, start, end, timeout=5, batch_size=batch_size)
            for m in batch.messages]


def test_consecutive_ranges_are_one_fetch_and_every_offset_comes_once(kafka_bootstrap, topic, consumer):
    _produce(kafka_bootstrap, topic, 60)
    reader = RangeReader(consumer, topic)
    got = [o for start, end in ((0, 10), (10, 11), (11, 40), (40, 60)) for o in _offsets(reader, start, end)]
    assert got == list(range(60)) and consumer.assigns == 1


def test_a_range_elsewhere_is_assigned_afresh(kafka_bootstrap, topic, consumer):
    _produce(kafka_bootstrap, topic, 30)
    reader = RangeReader(consumer, topic)
    assert _offsets(reader, 0, 10) == list(range(10))
    assert _offsets(reader, 20, 30) == list(range(20, 30))  # not 10-19, fetched ahead
    assert _offsets(reader, 5, 8) == [5, 6, 7]
    assert consumer.assigns == 3


def test_a_range_left_half_read_is_read_whole_again(kafka_bootstrap, topic, consumer):
    _produce(kafka_bootstrap, topic, 30)
    reader = RangeReader(consumer, topic)
    batches = reader.read(0, 0, 30, timeout=10, batch_size=5)
    next(batches)
    batches.close()  # a reader that stopped (an error downstream)
    assert _offsets(reader, 0, 30) == list(range(30)) and consumer.assigns == 2


def test_ranges_that_end_on_a_commit_marker_end_without_waiting(kafka_bootstrap, topic, consumer):
    _produce(kafka_bootstrap, topic, 20, transactional=True)  # data 0-19, the commit marker 20
    reader = RangeReader(consumer, topic)
    assert _offsets(reader, 0, 1, batch_size=1) == [0]
    time.sleep(1)  # the rest and the end-of-partition event (at 21) wait in the client's queue
    # One consume call brings 1-19 and the event: the event belongs to the next range too, the only thing that
    # ends it (its last offset is the marker, never delivered).
    assert _offsets(reader, 1, 12, batch_size=100) == list(range(1, 12))
    assert _offsets(reader, 12, 21) == list(range(12, 20))
    assert consumer.assigns == 1
