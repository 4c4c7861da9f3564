"""Batching policy: whichever of count and time comes first closes the batch; an empty batch closes on its
first record."""

from __future__ import annotations

from scoring_service.batching import Cadence, collect


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def no_first(timeout):
    raise AssertionError("a batch with records must not wait for a first record")


def test_full_batch_closes_on_count_without_waiting():
    clock, calls = Clock(), []

    def consume(n, timeout):
        calls.append((n, round(timeout, 6)))
        return list(range(n))

    assert collect(consume, no_first, 500, 0.1, 1.0, clock) == list(range(500))
    assert calls == [(500, 0.1)]


def test_early_returns_ask_only_for_the_missing_records_and_the_time_left():
    clock, calls = Clock(), []
    arrivals = [[1, 2], [], [3]]

    def consume(n, timeout):
        calls.append((n, round(timeout, 6)))
        clock.now += 0.03
        return arrivals.pop(0) if arrivals else []

    assert collect(consume, no_first, 10, 0.1, 1.0, clock) == [1, 2, 3]
    assert calls == [(10, 0.1), (8, 0.07), (8, 0.04), (7, 0.01)]


def test_idle_stream_waits_for_a_first_record_then_returns_an_empty_batch():
    clock, waits = Clock(), []

    def consume(n, timeout):
        clock.now += timeout
        return []

    def first(timeout):
        waits.append(timeout)
        clock.now += timeout
        return None

    assert collect(consume, first, 10, 0.25, 0.1, clock) == []
    assert waits == [0.1]
    assert round(clock.now, 6) == 100.35


def test_records_arriving_after_the_deadline_close_the_batch_at_once():
    clock, calls = Clock(), []

    def consume(n, timeout):
        calls.append((n, round(timeout, 6)))
        clock.now += timeout
        return [] if len(calls) == 1 else ["b", "c"]  # the rest of the late fetch, already there

    def first(timeout):
        clock.now += 0.004  # the fetch lands 4 ms after the deadline
        return "a"

    assert collect(consume, first, 10, 0.01, 0.1, clock) == ["a", "b", "c"]
    assert calls == [(10, 0.01), (9, 0.0)]  # nothing waits for a second interval
    assert round(clock.now - 100.0, 6) == 0.014


def test_a_late_first_record_of_a_one_record_batch_is_the_whole_batch():
    def consume(n, timeout):
        return []

    assert collect(consume, lambda timeout: "a", 1, 0.0, 0.1, Clock()) == ["a"]


def test_no_time_left_still_takes_what_has_arrived_without_waiting():
    calls = []

    def consume(n, timeout):
        calls.append((n, timeout))
        return [1, 2]

    assert collect(consume, no_first, 10, 0.0, 1.0, Clock()) == [1, 2]
    assert calls == [(10, 0.0)]


def test_cadence_counts_the_interval_from_the_previous_close():
    clock = Clock()
    cadence = Cadence(0.02, clock)
    assert cadence.wait_s() == 0.02  # the first batch
    cadence.closed()
    clock.now += 0.006  # scoring and delivery took 6 ms
    assert round(cadence.wait_s(), 6) == 0.014
    clock.now += 0.05  # a slow batch, or an interval without records: the next one closes at once
    assert cadence.wait_s() == 0.0
