"""The at-least-once sink's close: a record no broker acknowledged is reported to its batch, not dropped silently,
and the producer is released (no client left retrying the broker)."""

import pytest

from scoring_service.config import ScorerSettings
from scoring_service.sink import Sink


def test_close_reports_what_no_broker_acknowledged_and_releases_the_producer():
    sink = Sink(ScorerSettings(use_case="flight_delay", kafka_bootstrap_servers="127.0.0.1:1", http_port=0,
                               delivery_timeout_s=1))
    batch = sink.send([("predictions", b"k", b"v")], [], consumer=None)
    sink.close()
    assert batch.unacknowledged == 0 and len(batch.errors) == 1
    with pytest.raises(RuntimeError, match="closed"):
        sink.producer.flush(0)
