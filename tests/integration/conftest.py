"""Integration tests run against the session's schema registry as well as its broker: every client they make
(settings read in this process, scorers, Airflow and its tasks started from it) finds it through
SCHEMA_REGISTRY_URL."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _schema_registry_env(schema_registry_url: str) -> Iterator[str]:
    previous = os.environ.get("SCHEMA_REGISTRY_URL")
    os.environ["SCHEMA_REGISTRY_URL"] = schema_registry_url
    try:
        yield schema_registry_url
    finally:
        if previous is None:
            os.environ.pop("SCHEMA_REGISTRY_URL", None)
        else:
            os.environ["SCHEMA_REGISTRY_URL"] = previous


@pytest.fixture
def scorer_in_thread() -> Callable[..., contextlib.AbstractContextManager]:
    """``with scorer_in_thread(settings, scorer_id) as scorer:`` runs a scorer on a thread of this process
    (TensorFlow is imported once for the whole session), waits until it is ready (120 s at most), and stops it
    on leaving; the block sees the scorer."""

    @contextlib.contextmanager
    def run(settings, scorer_id: str) -> Iterator:
        from scoring_service.app import Scorer

        scorer = Scorer(settings, scorer_id=scorer_id)
        thread = threading.Thread(target=scorer.run, name=f"scorer-{scorer_id}")
        thread.start()
        try:
            deadline = time.monotonic() + 120
            while not scorer.ready()[0] and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.1)
            yield scorer
            assert thread.is_alive(), "the scorer stopped on its own"
        finally:
            scorer.stop()
            thread.join(60)

    return run
