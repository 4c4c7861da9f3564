"""A client call bounded by a deadline of our own: its result or its exception when it returns in time, CallStuck
(with control back to the caller) when it does not."""

from __future__ import annotations

import threading

import pytest

from scoring_service.deadline import CallStuck, call_with_deadline


def test_a_call_that_returns_in_time_gives_its_result():
    assert call_with_deadline(lambda: 42, 5.0, "answer") == 42


def test_a_call_that_raises_in_time_raises_its_own_error():
    def fail():
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        call_with_deadline(fail, 5.0, "refusal")


def test_a_call_that_blocks_past_its_deadline_is_stuck_and_the_caller_goes_on():
    release, finished = threading.Event(), threading.Event()

    def blocks():
        release.wait()
        finished.set()

    with pytest.raises(CallStuck, match="send_offsets_to_transaction did not return within 0 s"):
        call_with_deadline(blocks, 0.2, "send_offsets_to_transaction")
    assert not finished.is_set()  # still running on its own thread
    stuck = [t for t in threading.enumerate() if t.name == "deadline-send_offsets_to_transaction"]
    assert stuck and all(t.daemon for t in stuck)  # a stopping process does not wait for it
    release.set()
    assert finished.wait(5)
