"""Each assigned input partition's next offset to score, so a record the consumer delivers a second time is dropped.

librdkafka can deliver a partition's records twice (seen here just after the scorer's seek to ``OFFSET_BEGINNING`` at
start, and during a rolling restart of the brokers; also confluentinc/librdkafka#4637, #4686): the second copies were
scored in an earlier batch of this assignment, whose outputs are delivered or in flight. Scoring them again would
duplicate their predictions, even in exactly_once mode, since each batch's transaction commits on its own.
"""

from __future__ import annotations

from collections.abc import Iterable

Partition = tuple[str, int]  # topic, partition


class NextOffsets:
    """The offset after the last record admitted, per partition. A partition is forgotten whenever its position is set
    on purpose (assigned, revoked, or sought to its committed offset or to an aborted batch's start): the next record
    then sets it again, whatever its offset."""

    def __init__(self) -> None:
        self._next: dict[Partition, int] = {}

    def admit(self, partition: Partition, offset: int) -> bool:
        """True for a record past every one admitted on its partition (and moves the position past it); False for one
        at or below an offset already admitted: delivered again."""
        if offset < self._next.get(partition, offset):
            return False
        self._next[partition] = offset + 1
        return True

    def forget(self, partitions: Iterable[Partition]) -> None:
        for partition in partitions:
            self._next.pop(partition, None)
