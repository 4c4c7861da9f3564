"""The batching policy: a batch closes at ``max_records`` records or ``max_wait_s`` after it opened."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def collect(consume: Callable[[int, float], Sequence[T]], max_records: int, max_wait_s: float,
            clock: Callable[[], float] = time.monotonic) -> list[T]:
    """Call ``consume(n, timeout_s)`` until ``max_records`` items arrived or ``max_wait_s`` has passed.

    ``consume`` may return early with fewer items (librdkafka does on rebalances and errors); it is asked only
    for the records still missing and only for the time left, so no batch exceeds either bound. The wait is
    measured from the call, which bounds the latency an idle stream adds to a lone record.
    """
    batch: list[T] = []
    deadline = clock() + max_wait_s
    while len(batch) < max_records:
        remaining = deadline - clock()
        if remaining <= 0:
            break
        batch.extend(consume(max_records - len(batch), remaining))
    return batch
