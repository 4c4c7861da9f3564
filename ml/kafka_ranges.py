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
        # Connect when made, as the admin client does (ml.topics.admin_client): a snapshot's consumer then connects
        # while the snapshot is planned.
        "enable.sparse.connections": False,
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
    reader = RangeReader(consumer, topic)
    try:
        for p, (start, end) in sorted(ranges.items()):
            yield from reader.read(p, start, end, timeout, batch_size)
    finally:
        reader.release()


class RangeReader:
    """Reads offset ranges of one topic's partitions with one consumer and keeps its place between ranges: a
    range that starts where the last one ended (the next piece of a snapshot's partition) goes on from the
    messages already fetched, with no new assignment, so nothing is fetched twice and the fetching never stops
    between the two."""

    def __init__(self, consumer: Consumer, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic
        self._at: tuple[int, int] | None = None  # (partition, offset) the fetched messages go on from
        self._ahead: list[Message] = []  # consumed beyond the last range's end, from ``_at`` on

    def release(self) -> None:
        """Drop the assignment and whatever was fetched ahead."""
        self._at, self._ahead = None, []
        self.consumer.unassign()

    def read(self, partition: int, start: int, end: int, timeout: float = 30.0, batch_size: int = BATCH
             ) -> Iterator[Batch]:
        """Yield batches of the data messages in ``[start, end)`` of ``partition`` (as ``read_ranges``)."""
        if start >= end:
            return
        if self._at != (partition, start):
            self.release()
            self.consumer.assign([TopicPartition(self.topic, partition, start)])
        self._at = None  # until this range is read through: a range left half-read is assigned afresh
        idle_since, reading = time.monotonic(), True
        while reading:
            msgs, self._ahead = self._ahead or self.consumer.consume(batch_size, timeout=0.1), []
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
            if not reading and msgs[-1].offset() >= end:
                # The next range's messages (an EOF event past the end included), or ones written after the
                # end was fixed: kept for a range that goes on from here.
                self._ahead = [m for m in msgs if m.offset() >= end]
                data = [m for m in data if m.offset() < end]
            if data:
                idle_since = time.monotonic()
                yield Batch(data, [m.value() for m in data])
            elif reading and time.monotonic() - idle_since > timeout:
                (pos,) = self.consumer.position([TopicPartition(self.topic, partition)])
                raise LoopError(f"reading {self.topic}[{partition}]: no progress for {timeout:.0f} s at "
                                f"offset {pos.offset}, short of the end offset {end}")
        self._at = (partition, end)
