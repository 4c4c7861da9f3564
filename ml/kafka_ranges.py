"""Read exact offset ranges of a topic: the snapshot's consumer (assigned partitions, read_committed, never
committing) and the partition-by-partition reader that stops at each range's end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from ml.client_ids import SNAPSHOT_GROUP
from ml.errors import LoopError
from ml.settings import LoopSettings

BATCH = 10_000


def snapshot_consumer(settings: LoopSettings) -> Consumer:
    """A consumer for reading explicit offset ranges with ``assign``; it never commits."""
    return Consumer(settings.kafka_config({
        # Required by librdkafka even with assign(); nothing is committed under it (the manifests are the
        # offset record), so sharing the id between snapshots is harmless.
        "group.id": SNAPSHOT_GROUP,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # EOF events tell us a partition is caught up even when its last offsets are transaction markers.
        "enable.partition.eof": True,
        # Never snapshot records of open or aborted transactions.
        "isolation.level": "read_committed",
        # An offset that vanished (retention) between planning and reading must fail, not silently jump.
        "auto.offset.reset": "error",
        # Larger fetches: snapshots read whole ranges, latency does not matter.
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "fetch.wait.max.ms": 100,
        "queued.min.messages": 1_000_000,
        # Once the local queue holds queued.max.messages.kbytes (64 MB: about 75,000 flights), librdkafka waits
        # this long before fetching again; with its default of a second a reader that only consumes (replay's
        # duplicate_keys) sat idle most of the time. A snapshot decodes slower than it fetches either way.
        "fetch.queue.backoff.ms": 20,
        "log_level": 3,
    }))


@dataclass(frozen=True)
class Batch:
    """The data messages of one consume call and their values (pulled out once)."""

    messages: list[Message]
    values: list[bytes | None]


def read_ranges(consumer: Consumer, topic: str, ranges: dict[int, tuple[int, int]], timeout: float = 30.0,
                batch_size: int = BATCH) -> Iterator[Batch]:
    """Yield batches of the data messages in ``[start, end)`` of each partition, partition by partition, so
    the records come in (partition, offset) order.

    A partition is done at its last offset, at a message beyond the end (written after the end was fixed),
    or at an EOF at or past the end (the last offsets may be transaction markers, which are never delivered).
    Raises LoopError if a partition makes no progress for ``timeout`` seconds.
    """
    for p, (start, end) in sorted(ranges.items()):
        if start < end:
            yield from _read_partition(consumer, TopicPartition(topic, p, start), end, timeout, batch_size)


def _read_partition(consumer: Consumer, tp: TopicPartition, end: int, timeout: float, batch_size: int
                    ) -> Iterator[Batch]:
    consumer.assign([tp])
    try:
        idle_since, reading = time.monotonic(), True
        while reading:
            msgs = consumer.consume(batch_size, timeout=0.1)
            # Comprehensions rather than one loop with appends: this runs once per record.
            data = [m for m in msgs if m.error() is None]
            if len(data) != len(msgs):
                for m in msgs:
                    err = m.error()
                    if err is not None and err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(err)
                    if err is not None and m.offset() >= end:
                        reading = False
            if data and data[-1].offset() >= end - 1:
                reading = False
                if data[-1].offset() >= end:  # written after the end was fixed: the next snapshot's
                    data = [m for m in data if m.offset() < end]
            if data:
                idle_since = time.monotonic()
                yield Batch(data, [m.value() for m in data])
            elif reading and time.monotonic() - idle_since > timeout:
                (pos,) = consumer.position([tp])
                raise LoopError(f"reading {tp.topic}[{tp.partition}]: no progress for {timeout:.0f} s at "
                                f"offset {pos.offset}, short of the end offset {end}")
    finally:
        consumer.unassign()
