"""The batching policy: a batch closes at ``max_records`` records or at its deadline, whichever first.

Deadlines follow a fixed cadence: a batch closes ``interval`` after the previous one closed, not after
scoring it finished, so the time spent scoring and delivering is not added to the interval between batches,
and no record waits in an open batch longer than ``interval``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def collect(consume: Callable[[int, float], Sequence[T]], max_records: int, max_wait_s: float,
            clock: Callable[[], float] = time.monotonic) -> list[T]:
    """Call ``consume(n, timeout_s)`` until ``max_records`` items arrived or ``max_wait_s`` has passed.

    ``consume`` may return early with fewer items (librdkafka does on rebalances and errors); it is asked only
    for the records still missing and only for the time left, so no batch exceeds either bound. With no time
    left (``max_wait_s`` <= 0) it is still asked once, without waiting, for what has already arrived.
    """
    batch: list[T] = []
    deadline = clock() + max_wait_s
    while True:
        batch.extend(consume(max_records - len(batch), max(0.0, deadline - clock())))
        if len(batch) >= max_records or clock() >= deadline:
            return batch


class Cadence:
    """Batch deadlines every ``interval_s``, counted from when the previous batch closed."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._closed: float | None = None

    def wait_s(self) -> float:
        """How long the next batch may stay open: the interval minus the time since the last one closed."""
        if self._closed is None:
            return self.interval_s
        return max(0.0, self.interval_s - (self.clock() - self._closed))

    def closed(self) -> None:
        """Record that a batch just closed."""
        self._closed = self.clock()
