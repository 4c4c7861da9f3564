"""A blocking client call bounded by a deadline of our own, for the calls that may not honour their own timeout."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class CallStuck(RuntimeError):
    """The call did not return by its deadline. It still runs on its thread, so its client is unusable: the
    process must stop (its orchestrator restarts it)."""


def call_with_deadline(fn: Callable[[], T], deadline_s: float, what: str) -> T:
    """``fn()``'s result (or its exception) when it returns within ``deadline_s``; CallStuck otherwise. The call
    runs on a daemon thread, which a stopping process does not wait for."""
    outcome: list = []

    def call() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as e:  # noqa: BLE001 - handed to the caller as it is
            outcome.append((False, e))

    thread = threading.Thread(target=call, name=f"deadline-{what}", daemon=True)
    thread.start()
    thread.join(deadline_s)
    if not outcome:
        raise CallStuck(f"{what} did not return within {deadline_s:.0f} s")
    returned, value = outcome[0]
    if not returned:
        raise value
    return value
