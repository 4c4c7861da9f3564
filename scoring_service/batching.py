"""The batching policy: a batch closes at ``max_records`` records or at its deadline, whichever first; a
batch still empty at its deadline closes as soon as its first record arrives.

Deadlines follow a fixed cadence: a batch closes ``interval`` after the previous one closed, not after
scoring it finished, so the time spent scoring and delivering is not added to the interval between batches,
and no record waits in an open batch longer than ``interval``. When the records of an interval come late
(a fetch answered a few milliseconds after the deadline), the batch takes them the moment they arrive
rather than waiting out a second interval: a late fetch delays its predictions by its own lateness only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def collect(consume: Callable[[int, float], Sequence[T]], first: Callable[[float], T | None], max_records: int,
            max_wait_s: float, idle_wait_s: float, clock: Callable[[], float] = time.monotonic) -> list[T]:
    """Call ``consume(n, timeout_s)`` until ``max_records`` items arrived or ``max_wait_s`` has passed; if
    nothing arrived by then, wait up to ``idle_wait_s`` for one item with ``first(timeout_s)`` (which returns
    on the first item, or None) and close the batch with it and whatever has arrived beside it.

    ``consume`` may return early with fewer items (librdkafka does on rebalances and errors); it is asked only
    for the records still missing and only for the time left, so no batch exceeds either bound. With no time
    left (``max_wait_s`` <= 0) it is still asked once, without waiting, for what has already arrived.
    """
    batch: list[T] = []
    deadline = clock() + max_wait_s
    while True:
        batch.extend(consume(max_records - len(batch), max(0.0, deadline - clock())))
        if len(batch) >= max_records or clock() >= deadline:
            break
    if batch:
        return batch
    item = first(idle_wait_s)
    if item is None:
        return batch
    batch.append(item)
    if max_records > 1:
        batch.extend(consume(max_records - 1, 0.0))
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
        """Record that a batch (with records) just closed."""
        self._closed = self.clock()
