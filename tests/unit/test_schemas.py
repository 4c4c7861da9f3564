"""Topic schemas from the contracts, and the field-by-field compatibility check that names what breaks."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from ml import use_cases
from ml.contracts import DeadLetter, ModelStatus
from ml.publish import ModelEnvelope
from ml.schemas import BACKWARD_OR_STRICTER, incompatibilities, json_schema, subject, topic_schemas
from ml.settings import LoopSettings
from use_cases.flight_delay.contracts import FlightCompleted, FlightPrediction, FlightScheduled
from use_cases.sensor_anomaly.contracts import SensorReading, SensorScore


def test_every_topic_of_both_use_cases_and_the_loop_has_one_schema_under_its_subject():
    schemas = {s.topic: s for s in topic_schemas(LoopSettings(topic_prefix="team."))}
    assert {t: s.contract for t, s in schemas.items()} == {
        "team.flights.scheduled": FlightScheduled, "team.flights.completed": FlightCompleted,
        "team.flights.predictions": FlightPrediction, "team.flights.predictions.shadow": FlightPrediction,
        "team.flights.dlq": DeadLetter, "team.sensors.readings": SensorReading, "team.sensors.scores": SensorScore,
        "team.sensors.scores.shadow": SensorScore, "team.sensors.dlq": DeadLetter,
        "team.models": ModelEnvelope, "team.models.status": ModelStatus}
    assert {s.subject for s in schemas.values()} == {f"{t}-value" for t in schemas}
    assert all(s.compatibility in BACKWARD_OR_STRICTER for s in schemas.values())
    assert subject("flights.scheduled") == "flights.scheduled-value"


def test_two_contracts_on_one_topic_are_refused():
    names = LoopSettings(topic_names={"flights.completed": "flights.scheduled"})
    with pytest.raises(ValueError, match="flights.scheduled has two contracts: FlightScheduled and FlightCompleted"):
        topic_schemas(names, [use_cases.get("flight_delay")])


def test_the_json_schema_is_closed_and_validates_what_the_contract_validates():
    schema = json_schema(FlightScheduled)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    good = {"flight_id": "a", "sched_dep_utc": "2013-01-01T10:00:00+00:00", "sched_arr_utc": "2013-01-01T12:00:00Z",
            "year": 2013, "month": 1, "day": 1, "sched_dep_time": 500, "sched_arr_time": 800, "carrier": "UA",
            "flight": 1, "origin": "EWR", "dest": "IAH", "distance": 1400.0}
    FlightScheduled.model_validate_json(orjson.dumps(good))
    jsonschema.validate(good, schema)
    for bad in ({**good, "distance": -1.0}, {**good, "gate": "C7"}, {k: v for k, v in good.items() if k != "dest"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def _with(schema: dict, **properties) -> dict:
    return {**schema, "properties": {**schema["properties"], **properties}}


def test_an_added_optional_field_is_backward_compatible():
    v1 = json_schema(FlightScheduled)
    v2 = _with(v1, gate={"anyOf": [{"type": "string"}, {"type": "null"}], "default": None})
    assert incompatibilities(v2, [v1], "BACKWARD") == []
    # ... but a consumer still on v1 refuses the new field: not FORWARD.
    assert incompatibilities(v2, [v1], "FORWARD") == [
        "field 'gate' was removed: records that carry it would be refused (for consumers of the registered version)"]


def test_a_removed_required_field_and_a_changed_type_are_named():
    v1 = json_schema(FlightScheduled)
    removed = {**v1, "properties": {k: v for k, v in v1["properties"].items() if k != "carrier"},
               "required": [r for r in v1["required"] if r != "carrier"]}
    assert incompatibilities(removed, [v1], "BACKWARD") == [
        "field 'carrier' was removed: records that carry it would be refused"]
    retyped = _with(v1, flight={"type": "string"})
    assert incompatibilities(retyped, [v1], "BACKWARD") == ["field 'flight' changed type from integer to string"]
    required = {**_with(v1, gate={"type": "string"}), "required": [*v1["required"], "gate"]}
    assert incompatibilities(required, [v1], "BACKWARD") == [
        "field 'gate' was added as required: older records lack it"]
    # Widening int to number, or making a field optional, keeps old records readable.
    widened = {**_with(v1, flight={"type": "number"}), "required": [r for r in v1["required"] if r != "flight"]}
    assert incompatibilities(widened, [v1], "BACKWARD") == []
    assert incompatibilities(retyped, [v1], "NONE") == []


def test_the_ed25519_envelope_is_backward_compatible_with_the_registered_hmac_envelope():
    """`models` gained an optional key_id and a signature without the SHA-256 pattern: the subject's BACKWARD check
    passes, and the registered HMAC envelopes stay readable (verify_envelope refuses them, not the schema)."""
    v1 = json.loads((Path(__file__).parent / "data" / "models-value-v1.json").read_text())
    v2 = json_schema(ModelEnvelope)
    assert incompatibilities(v2, [v1], "BACKWARD") == []
    assert set(v2["required"]) == set(v1["required"]) and "key_id" not in v2["required"]
    assert "pattern" in v1["properties"]["signature"] and "pattern" not in v2["properties"]["signature"]
    old_record = {"schema_version": 1, "model_name": "m", "model_version": 1, "run_id": "r", "model_uri": "u",
                  "preprocessing": {}, "metrics": {}, "decision_id": "d", "created_at": "2026-12-01T00:00:00Z",
                  "artifact_b64": "UEs=", "artifact_sha256": "0" * 64, "signature": "a" * 64}
    jsonschema.validate(old_record, v1)
    jsonschema.validate(old_record, v2)
    jsonschema.validate({**old_record, "key_id": "k1", "signature": "b" * 128}, v2)


def test_transitive_levels_check_every_registered_version():
    v1 = json_schema(FlightScheduled)
    v2 = _with(v1, gate={"anyOf": [{"type": "string"}, {"type": "null"}], "default": None})
    v3 = {**v1, "properties": {**v1["properties"], "gate": {"type": "string"}}}  # gate non-null only
    assert incompatibilities(v3, [v1, v2], "BACKWARD_TRANSITIVE") == [
        "field 'gate' changed type from null|string to string"]
    assert incompatibilities(v3, [v1], "BACKWARD") == []
