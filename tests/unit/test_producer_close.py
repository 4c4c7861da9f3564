"""The scorer's producers when it stops without a broker: what could not be delivered is reported (the sink's
batch) or dropped with a warning (the watcher's status records), never silently, and each producer is released,
leaving no client retrying the broker."""

from types import SimpleNamespace

from confluent_kafka import Producer

from scoring_service import model_watcher
from scoring_service.config import ScorerSettings
from scoring_service.ops import Metrics
from scoring_service.sink import Sink

NO_BROKER = "127.0.0.1:1"


def _closed(producer: Producer) -> bool:
    try:
        producer.flush(0)
    except RuntimeError as e:
        return "closed" in str(e)
    return False


def test_the_sink_reports_what_no_broker_acknowledged_and_releases_its_producer():
    sink = Sink(ScorerSettings(use_case="flight_delay", kafka_bootstrap_servers=NO_BROKER, http_port=0,
                               delivery_timeout_s=1))
    batch = sink.send([("predictions", b"k", b"v")], [], consumer=None)
    sink.close()
    assert batch.unacknowledged == 0 and len(batch.errors) == 1
    assert _closed(sink.producer)


def test_the_watcher_drops_its_undelivered_status_records_with_a_warning_and_releases_its_producer(
        monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(model_watcher, "STATUS_DELIVERY_S", 0.5)
    monkeypatch.setattr(model_watcher, "Framing", lambda _settings: SimpleNamespace(header=lambda _topic: b""))
    settings = ScorerSettings(use_case="flight_delay", kafka_bootstrap_servers=NO_BROKER, model_name="m",
                              http_port=0, model_trusted_keys_dir=tmp_path)
    w = model_watcher.ModelWatcher(settings, SimpleNamespace(name="flight_delay"), model_watcher.ModelSlot(),
                                   Metrics(), "unit")
    w._producer = w._status_producer()
    w._producer.produce(settings.status_topic, b"status")
    with caplog.at_level("WARNING", logger="scoring_service.model_watcher"):
        w._close_producer()
    assert f"1 status record(s) for {settings.status_topic} not delivered before stopping: dropped" in caplog.text
    assert _closed(w._producer)
