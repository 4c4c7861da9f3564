"""Schemas on a real registry: `python -m ml schemas register|check`, a compatible v2 of the flight events
registered while a scorer and a snapshot run (old and new records both score and snapshot), and incompatible
changes refused by the registry and by `schemas check`, naming the field."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema as RegisteredSchema, SchemaRegistryError
from pydantic import create_model

from ml import decode, snapshot
from ml.contracts import Contract, DeadLetter, ModelStatus
from ml.errors import SchemaIncompatible, SchemaNotRegistered
from ml.keras_models import to_bytes
from ml.publish import ModelEnvelope, build_envelope, publish
from ml.schema_registry import SchemaRegistry
from ml.schemas import TopicSchema, canonical
from ml.settings import LoopSettings
from ml.topics import ensure_topics
from ml.wire import Framing, TopicDecoder, TopicReader, header
from scoring_service.config import ScorerSettings
from use_cases.flight_delay import preprocessing
from use_cases.flight_delay.contracts import FlightCompleted, FlightScheduled
from use_cases.flight_delay.replay import build_stream, replay_frame
from use_cases.flight_delay.source import load_completed

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


class FlightScheduledV2(FlightScheduled):
    """`flights.scheduled` v2: v1 and the departure gate, when the airline announced it."""

    gate: str | None = None


class FlightCompletedV2(FlightCompleted):
    """`flights.completed` v2: v1 and the departure gate, when the airline announced it."""

    gate: str | None = None


def _without(contract: type[Contract], field: str, **changed) -> type[Contract]:
    """``contract`` with ``field`` removed and the fields in ``changed`` given other types."""
    fields = {name: (changed.get(name, info.annotation), info if name not in changed else ...)
              for name, info in contract.model_fields.items() if name != field}
    return create_model(f"{contract.__name__}Changed", __base__=Contract, **fields)


def _cli(*args: str, prefix: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOPIC_PREFIX": prefix}
    return subprocess.run([sys.executable, "-m", "ml", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_schemas_register_then_check_every_topic(kafka_bootstrap):
    prefix = f"reg{uuid.uuid4().hex[:8]}."
    before = _cli("schemas", "check", prefix=prefix)
    assert before.returncode == 0, before.stderr
    assert f"{prefix}flights.scheduled-value: FlightScheduled new" in before.stdout
    done = _cli("schemas", "register", prefix=prefix)
    assert done.returncode == 0, done.stderr
    # Nine topics and the two use cases' shadow predictions topics.
    assert done.stdout.count("is version 1") == 11 and "compatibility BACKWARD" in done.stdout
    assert f"{prefix}flights.predictions.shadow-value: FlightPrediction is version 1" in done.stdout, done.stdout
    after = _cli("schemas", "check", prefix=prefix)
    assert after.returncode == 0 and after.stdout.count("registered (version 1)") == 11, after.stdout
    registry = SchemaRegistry(LoopSettings().schema_registry_url)
    assert registry.compatibility(f"{prefix}models-value") == "BACKWARD"


@pytest.fixture(scope="module")
def flights():
    return load_completed((1, 1), limit=4000)


@pytest.mark.slow
def test_a_compatible_v2_registered_mid_stream_scores_and_snapshots_beside_v1(kafka_bootstrap, flights, tmp_path,
                                                                               scorer_in_thread, signing_keys):
    import keras

    from use_cases.flight_delay.model import untrained

    prefix = f"evo{uuid.uuid4().hex[:8]}."
    loop = LoopSettings(kafka_bootstrap_servers=kafka_bootstrap, use_case="flight_delay", topic_prefix=prefix,
                        loop_data_dir=tmp_path, **signing_keys.loop)
    ensure_topics(loop)
    s = ScorerSettings(use_case="flight_delay", kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix,
                       model_trusted_keys_dir=signing_keys.trusted_dir, http_port=0, batch_size=500,
                       batch_max_wait_ms=50)
    fitted = preprocessing.fit(flights.head(2000))
    keras.utils.set_random_seed(1)
    publish(loop, build_envelope(model_name="flight_delay", model_version=1, run_id="r1", model_uri="models:/f/1",
                                 preprocessing=fitted.to_dict(), metrics={"auc": 0.7}, decision_id="d1",
                                 artifact=to_bytes(untrained(fitted)), signer=loop.signer()))
    with scorer_in_thread(s, "evolution") as scorer:
        old, new = flights.iloc[:2000], flights.iloc[2000:]
        replay_frame(loop, old)  # v1 records, framed with v1's schema id

        # Register v2 while the scorer runs and a snapshot reads the v1 records.
        labels = loop.topic("flights.completed")
        first = {}
        reading = threading.Thread(target=lambda: first.update(
            manifest=snapshot.take_snapshot(loop, labels, FlightCompleted)))
        reading.start()
        registry = SchemaRegistry.of(loop)
        v2 = {topic: registry.register(TopicSchema(topic, contract)) for topic, contract in (
            (s.input_topic, FlightScheduledV2), (labels, FlightCompletedV2))}
        assert {r.version for r in v2.values()} == {2}
        reading.join(120)

        # v2 records carry the new field and v2's id; the code still reads them through its v1 contract.
        stream = build_stream(loop, new)
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
        for topic, key, value, ts in zip(stream.topics, stream.keys, stream.values, stream.timestamps.tolist(),
                                         strict=True):
            doc = orjson.loads(value) | {"gate": f"C{len(key) % 9}"}
            producer.produce(topic, header(v2[topic].schema_id) + orjson.dumps(doc), key, timestamp=ts)
        assert producer.flush(30) == 0
        second = snapshot.take_snapshot(loop, labels, FlightCompleted)

        reader, predictions = TopicReader(s, s.output_topic), []
        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"check-{uuid.uuid4().hex[:8]}",
                             "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
        consumer.subscribe([s.output_topic])
        deadline = time.monotonic() + 120
        while len(predictions) < len(flights) and time.monotonic() < deadline:
            predictions += [reader.loads(m.value()) for m in consumer.consume(1000, 0.5) if m.error() is None]
        consumer.close()

    scored = Counter(p["flight_id"] for p in predictions)
    assert set(scored) == set(flights["flight_id"]) and max(scored.values()) == 1
    assert scorer.metrics.registry.get_sample_value("scorer_dead_letters_total", {"error_class": "schema"}) in (None, 0)
    assert (first["manifest"].row_count, first["manifest"].rejected_count) == (len(old), 0)
    assert (second.row_count, second.rejected_count) == (len(new), 0)
    # Each manifest records which schema versions its rows were written with.
    v1_id = registry.writer_id(TopicSchema(labels, FlightCompleted))
    assert first["manifest"].schema_ids == {v1_id: len(old)}
    assert second.schema_ids == {v2[labels].schema_id: len(new)}
    rows, _ = snapshot.load_snapshots(loop, labels, FlightCompleted, [second.snapshot_id])
    assert sorted(rows["flight_id"]) == sorted(new["flight_id"]) and "gate" not in rows.columns

    # Once v2 is registered, code that knows only v1 would refuse v2's records: `schemas check` says so.
    check = _cli("schemas", "check", "--use-case", "flight_delay", prefix=prefix)
    assert check.returncode == 1
    assert f"{s.input_topic}-value: FlightScheduled incompatible" in check.stdout
    assert "field 'gate' was removed" in check.stdout


def test_an_incompatible_change_is_refused_by_the_registry_and_by_check_naming_the_field(kafka_bootstrap):
    topic = f"inc{uuid.uuid4().hex[:8]}.flights.scheduled"
    registry = SchemaRegistry.of(LoopSettings())
    registry.register(TopicSchema(topic, FlightScheduled))
    for changed, named in ((_without(FlightScheduled, "carrier"), "field 'carrier' was removed"),
                           (_without(FlightScheduled, "", flight=str), "field 'flight' changed type from integer "
                                                                       "to string")):
        ts = TopicSchema(topic, changed)
        check = registry.check(ts)
        assert (check.state, check.ok) == ("incompatible", False)
        assert any(named in p for p in check.problems), check.problems
        with pytest.raises(SchemaIncompatible, match=named) as refused:
            registry.register(ts)
        assert isinstance(refused.value.__cause__, SchemaRegistryError)
        assert refused.value.__cause__.http_status_code == 409
    assert registry.versions(f"{topic}-value") == [TopicSchema(topic, FlightScheduled).schema]
    # A record framed with the registered schema is still read; the id names its subject.
    framed = Framing(LoopSettings(), [TopicSchema(topic, FlightScheduled)]).frame(topic, b"{}")
    assert TopicReader(LoopSettings(), topic).payload(framed) == b"{}"


def test_the_ed25519_model_envelope_registers_over_the_hmac_envelope_a_deployment_holds(kafka_bootstrap):
    """The real registry's BACKWARD rule accepts the Ed25519 envelope's schema (an optional key_id, a signature
    without its SHA-256 pattern) as the next version of a `models` subject holding the HMAC envelope's."""
    topic = f"sig{uuid.uuid4().hex[:8]}.models"
    registry = SchemaRegistry.of(LoopSettings())
    hmac_envelope = orjson.loads((REPO / "tests" / "unit" / "data" / "models-value-v1.json").read_bytes())
    registry._client.register_schema(f"{topic}-value", RegisteredSchema(canonical(hmac_envelope), "JSON"))
    registry._client.set_compatibility(f"{topic}-value", "BACKWARD")
    ts = TopicSchema(topic, ModelEnvelope)
    check = registry.check(ts)
    assert (check.state, check.ok, check.problems) == ("compatible", True, [])
    registered = registry.register(ts)
    assert (registered.version, registered.compatibility) == (2, "BACKWARD")


def test_replicas_starting_together_register_a_new_subject_once(kafka_bootstrap):
    """Scorer replicas started at once all register their output schemas: each gets the same id, none fails."""
    topic, ids, errors = f"race{uuid.uuid4().hex[:8]}.flights.dlq", [], []

    def first_use() -> None:
        try:
            ids.append(SchemaRegistry(LoopSettings().schema_registry_url).writer_id(TopicSchema(topic, DeadLetter)))
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(ids) == 4 and len(set(ids)) == 1
    assert SchemaRegistry(LoopSettings().schema_registry_url).compatibility(f"{topic}-value") == "BACKWARD"


def test_a_record_framed_with_an_avro_schema_of_the_topic_is_refused_naming_the_type(kafka_bootstrap):
    topic = f"avro{uuid.uuid4().hex[:8]}.flights.scheduled"
    registry = SchemaRegistry.of(LoopSettings())
    avro = {"type": "record", "name": "Flight", "fields": [{"name": "flight_id", "type": "string"}]}
    schema_id = registry._client.register_schema(f"{topic}-value", RegisteredSchema(orjson.dumps(avro).decode(),
                                                                                    "AVRO"))
    decoded = TopicDecoder(LoopSettings(), topic, FlightScheduled).decode([header(schema_id) + b"\x02a"])
    assert [(r.error_class, r.reason) for r in decoded.rejected] == [
        ("schema", f"schema id {schema_id} has type AVRO: the records of {topic} are JSON")]


def test_with_auto_registration_off_an_unregistered_schema_is_named_and_a_registered_one_used(kafka_bootstrap):
    topic = f"noauto{uuid.uuid4().hex[:8]}.models.status"
    url = LoopSettings().schema_registry_url
    strict = SchemaRegistry(url, auto_register=False)
    with pytest.raises(SchemaNotRegistered, match=rf"ModelStatus is not registered under {topic}-value .* "
                                                  r"`python -m ml schemas register`"):
        strict.writer_id(TopicSchema(topic, ModelStatus))
    registered = SchemaRegistry(url).register(TopicSchema(topic, ModelStatus))
    assert strict.writer_id(TopicSchema(topic, ModelStatus)) == registered.schema_id


def test_a_decoder_prepared_ahead_holds_the_subjects_latest_schema_and_prepares_nothing_without_one(kafka_bootstrap):
    topic = f"ahead{uuid.uuid4().hex[:8]}.flights.completed"
    decoder = TopicDecoder(LoopSettings(), topic, FlightCompleted)
    decoder.prepare()  # no schema registered under the subject yet
    assert decoder._groups == {}
    registry = SchemaRegistry.of(LoopSettings())
    v1 = registry.register(TopicSchema(topic, FlightCompleted)).schema_id
    decoder.prepare()
    assert set(decoder._groups) == {v1}
    v2 = registry.register(TopicSchema(topic, FlightCompletedV2)).schema_id
    decoder.prepare()
    assert set(decoder._groups) == {v1, v2} and decoder._groups[v2].decoder.ignore == {"gate"}


def test_a_large_framed_batch_decodes_as_record_by_record_and_a_frame_without_a_record_is_rejected_in_place(
        kafka_bootstrap, monkeypatch):
    topic = f"lines{uuid.uuid4().hex[:8]}.flights.completed"
    registry = SchemaRegistry.of(LoopSettings())
    v1 = registry.register(TopicSchema(topic, FlightCompleted)).schema_id
    v2 = registry.register(TopicSchema(topic, FlightCompletedV2)).schema_id
    settings = LoopSettings()
    stream = build_stream(settings, load_completed((1, 1), limit=decode.RECORD_BY_RECORD_MAX + 200))
    records = [v for t, v in zip(stream.topics, stream.values, strict=True) if t == settings.topic("flights.completed")]
    uniform = [header(v1) + r for r in records]
    flagged = list(uniform)
    flagged[5] = header(v1) + orjson.dumps({**orjson.loads(records[5]), "month": 13})
    mixed = list(uniform)
    mixed[3], mixed[7], mixed[11] = None, header(v1), header(v1) + b"{broken"
    mixed[13] = header(v2) + orjson.dumps({**orjson.loads(records[13]), "gate": "C4"})

    def both(values: list[bytes | None]) -> tuple:
        decoder = TopicDecoder(LoopSettings(), topic, FlightCompleted)
        whole = decoder.decode(values)  # more than RECORD_BY_RECORD_MAX values: parsed whole where it can be
        with monkeypatch.context() as m:
            m.setattr(decode, "RECORD_BY_RECORD_MAX", len(values))
            alone = decoder.decode(values)
        assert whole.table.equals(alone.table) and whole.rejected == alone.rejected
        assert whole.accepted.tolist() == alone.accepted.tolist() and whole.schema_ids == alone.schema_ids
        return whole

    assert both(uniform).schema_ids == {v1: len(records)}
    assert [(r.index, r.error_class) for r in both(flagged).rejected] == [(5, "range")]
    out = both(mixed)
    assert [(r.index, r.error_class) for r in out.rejected] == [(3, "undecodable"), (7, "undecodable"),
                                                                 (11, "undecodable")]
    assert out.schema_ids == {v1: len(records) - 4, v2: 1} and 13 in out.accepted.tolist()
