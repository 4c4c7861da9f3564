"""Batching policy: whichever of count and time comes first closes the batch."""

from __future__ import annotations

from scoring_service.batching import Cadence, collect


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_full_batch_closes_on_count_without_waiting():
    clock, calls = Clock(), []

    def consume(n, timeout):
        calls.append((n, round(timeout, 6)))
        return list(range(n))

    assert collect(consume, 500, 0.1, clock) == list(range(500))
    assert calls == [(500, 0.1)]


def test_early_returns_ask_only_for_the_missing_records_and_the_time_left():
    clock, calls = Clock(), []
    arrivals = [[1, 2], [], [3]]

    def consume(n, timeout):
        calls.append((n, round(timeout, 6)))
        clock.now += 0.03
        return arrivals.pop(0) if arrivals else []

    assert collect(consume, 10, 0.1, clock) == [1, 2, 3]
    assert calls == [(10, 0.1), (8, 0.07), (8, 0.04), (7, 0.01)]


def test_idle_stream_closes_an_empty_batch_at_the_deadline():
    clock = Clock()

    def consume(n, timeout):
        clock.now += timeout
        return []

    assert collect(consume, 10, 0.25, clock) == []
    assert clock.now == 100.25


def test_no_time_left_still_takes_what_has_arrived_without_waiting():
    calls = []

    def consume(n, timeout):
        calls.append((n, timeout))
        return [1, 2]

    assert collect(consume, 10, 0.0, Clock()) == [1, 2]
    assert calls == [(10, 0.0)]


def test_cadence_counts_the_interval_from_the_previous_close():
    clock = Clock()
    cadence = Cadence(0.02, clock)
    assert cadence.wait_s() == 0.02  # the first batch
    cadence.closed()
    clock.now += 0.006  # scoring and delivery took 6 ms
    assert round(cadence.wait_s(), 6) == 0.014
    clock.now += 0.05  # a slow batch: the next one closes at once
    assert cadence.wait_s() == 0.0
