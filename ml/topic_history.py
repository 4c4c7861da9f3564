"""A topic's history: every record from the beginning up to the end offsets of one moment.

Both readers of the compacted `models` topic start this way: ``publish`` (through ``read_envelopes``) to
see what is already published, and the scorer's model watcher to choose the model that serves. Each keeps
its own policy for errors and for when to give up; this module only does the reading.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

# How long one poll waits for a record; also how often ``stop`` is asked.
POLL_S = 0.5


class TopicHistory:
    """The records of ``topic`` below ``ends`` (partition -> end offset: its high watermark when the history
    was opened). ``pending`` holds the partitions that had records and are not read to their end yet."""

    def __init__(self, consumer: Consumer, topic: str, ends: dict[int, int], pending: set[int]) -> None:
        self.consumer = consumer
        self.topic = topic
        self.ends = ends
        self.pending = pending

    @classmethod
    def open(cls, consumer: Consumer, topic: str, partitions: list[int], timeout_s: float) -> TopicHistory:
        """Take the end offsets of ``partitions`` now and assign them all from the beginning. The consumer
        needs ``enable.partition.eof``. Raises KafkaException when the watermarks cannot be read."""
        ends, pending = {}, set()
        for p in partitions:
            low, ends[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if ends[p] > low:
                pending.add(p)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        return cls(consumer, topic, ends, pending)

    def records(self, stop: Callable[[], bool]) -> Iterator[Message]:
        """Yield each record below its partition's end offset, and each error other than a partition's end,
        until every partition is read to its end or ``stop()`` is true (asked at least every POLL_S)."""
        while self.pending and not stop():
            # poll, not consume(n): consume waits out its whole timeout unless n records come, and a models
            # topic holds a handful (it made every publish take a second longer).
            msg = self.consumer.poll(POLL_S)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.pending.discard(msg.partition())
                else:
                    yield msg
                continue
            end = self.ends[msg.partition()]
            if msg.offset() >= end - 1:
                self.pending.discard(msg.partition())
            if msg.offset() < end:
                yield msg

    def follow_from_ends(self) -> None:
        """After the history is read, position the consumer at the end offsets, so that following the topic
        from there misses no record published while the history was read (the fetcher may have gone past an
        end already; those records were not yielded)."""
        for p, end in self.ends.items():
            self.consumer.seek(TopicPartition(self.topic, p, end))
