"""Model envelopes: signed over canonical JSON, every tampering or malformation rejected with its reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import orjson
import pytest

from ml.errors import EnvelopeRejected
from ml.publish import ModelEnvelope, build_envelope, canonical_json, verify_envelope

KEY = b"test-signing-key"
ARTIFACT = b"PK\x03\x04 pretend .keras zip bytes \x00\xff" * 10
CREATED = datetime(2026, 11, 24, 8, 30, 15, 123456, tzinfo=UTC)


def _envelope(**overrides) -> ModelEnvelope:
    fields = dict(model_name="flight_delay", model_version=3, run_id="a1b2c3", model_uri="models:/flight_delay/3",
                  preprocessing={"numeric": ["distance", "temp"], "categorical": {"carrier": ["AA", "UA"]}},
                  metrics={"auc": 0.71, "logloss": 0.52}, decision_id="d-42", artifact=ARTIFACT, key=KEY,
                  created_at=CREATED)
    return build_envelope(**(fields | overrides))


def _tampered(envelope: ModelEnvelope, **changes) -> bytes:
    doc = orjson.loads(envelope.to_bytes())
    doc.update(changes)
    return orjson.dumps(doc)


def test_signature_is_hmac_sha256_over_sorted_compact_json_of_all_other_fields():
    env = _envelope()
    doc = orjson.loads(env.to_bytes())
    del doc["signature"]
    expected = hmac.new(KEY, canonical_json(doc), hashlib.sha256).hexdigest()
    assert env.signature == expected
    assert canonical_json(doc).startswith(b'{"artifact_b64":"')
    assert b" " not in canonical_json(doc)
    assert env.artifact_sha256 == hashlib.sha256(ARTIFACT).hexdigest()
    assert base64.b64decode(env.artifact_b64) == ARTIFACT


def test_canonical_json_ignores_insertion_order_and_is_stable():
    a = canonical_json({"b": 1, "a": {"y": [1, 2], "x": 0.5}})
    b = canonical_json({"a": {"x": 0.5, "y": [1, 2]}, "b": 1})
    assert a == b == b'{"a":{"x":0.5,"y":[1,2]},"b":1}'
    assert _envelope().signature == _envelope().signature


def test_verify_returns_the_envelope_and_its_artifact():
    env = _envelope()
    got = verify_envelope(env.to_bytes(), KEY)
    assert got == env
    assert got.artifact() == ARTIFACT
    assert got.created_at == CREATED


def test_undecodable_bytes_are_rejected():
    with pytest.raises(EnvelopeRejected) as e:
        verify_envelope(b"\x00not json{", KEY)
    assert e.value.reason.startswith("undecodable:")


@pytest.mark.parametrize("changes", [{"model_version": 0}, {"schema_version": 2}, {"unexpected": 1},
                                     {"artifact_sha256": "xyz"}])
def test_schema_violations_are_rejected(changes):
    with pytest.raises(EnvelopeRejected) as e:
        verify_envelope(_tampered(_envelope(), **changes), KEY)
    assert e.value.reason.startswith("schema: 1 error(s)")


def test_missing_field_is_a_schema_violation():
    doc = orjson.loads(_envelope().to_bytes())
    del doc["decision_id"]
    with pytest.raises(EnvelopeRejected, match=r"^schema: 1 error\(s\).*decision_id"):
        verify_envelope(orjson.dumps(doc), KEY)


@pytest.mark.parametrize("changes", [{"model_version": 4}, {"metrics": {"auc": 0.99, "logloss": 0.52}},
                                     {"preprocessing": {}}, {"created_at": "2026-11-24T08:30:16Z"}])
def test_any_changed_field_breaks_the_signature(changes):
    with pytest.raises(EnvelopeRejected, match=r"^bad signature for flight_delay v"):
        verify_envelope(_tampered(_envelope(), **changes), KEY)


def test_another_key_is_a_bad_signature():
    with pytest.raises(EnvelopeRejected, match="^bad signature for flight_delay v3$"):
        verify_envelope(_envelope().to_bytes(), b"another-key")


def test_artifact_not_matching_its_digest_is_rejected_even_when_signed():
    # A signer that computed the digest of other bytes: signature valid, digest wrong.
    env = _envelope()
    doc = orjson.loads(env.to_bytes())
    doc["artifact_b64"] = base64.b64encode(ARTIFACT + b"!").decode()
    del doc["signature"]
    doc["signature"] = hmac.new(KEY, canonical_json(doc), hashlib.sha256).hexdigest()
    with pytest.raises(EnvelopeRejected, match="^artifact sha256 mismatch for flight_delay v3: expected "):
        verify_envelope(orjson.dumps(doc), KEY)


def test_non_finite_metric_cannot_be_signed():
    with pytest.raises(ValueError, match="finite"):
        _envelope(metrics={"auc": float("nan")})
