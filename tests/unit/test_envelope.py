"""Model envelopes: signed with Ed25519 over canonical JSON, verified against a trust folder of public keys read
per envelope; every tampering, unknown or revoked key, revoked version or malformation is rejected with its reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import stat
from datetime import UTC, datetime

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from pydantic import SecretStr
from typer.testing import CliRunner

from ml.cli import app
from ml.errors import EnvelopeRejected, SigningKeyError
from ml.publish import ModelEnvelope, build_envelope, canonical_json, verify_envelope
from ml.settings import DEFAULT_SIGNING_KEY_FILE, DEFAULT_TRUSTED_KEYS_DIR, LoopSettings
from ml.signing import Signer, TrustStore, derive_key_id, public_pem
from scoring_service.config import ScorerSettings

SIGNER = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
ARTIFACT = b"PK\x03\x04 pretend .keras zip bytes \x00\xff" * 10
CREATED = datetime(2026, 11, 24, 8, 30, 15, 123456, tzinfo=UTC)


def _envelope(signer: Signer = SIGNER, **overrides) -> ModelEnvelope:
    fields = dict(model_name="flight_delay", model_version=3, run_id="a1b2c3", model_uri="models:/flight_delay/3",
                  preprocessing={"numeric": ["distance", "temp"], "categorical": {"carrier": ["AA", "UA"]}},
                  metrics={"auc": 0.71, "logloss": 0.52}, decision_id="d-42", artifact=ARTIFACT, signer=signer,
                  created_at=CREATED)
    return build_envelope(**(fields | overrides))


def _tampered(envelope: ModelEnvelope, **changes) -> bytes:
    doc = orjson.loads(envelope.to_bytes())
    doc.update(changes)
    return orjson.dumps(doc)


def _trust(folder, *signers: Signer, **revoked) -> TrustStore:
    """A trust folder holding the public keys of ``signers``."""
    folder.mkdir(exist_ok=True)
    for signer in signers:
        (folder / f"{signer.key_id}.pem").write_bytes(signer.public_pem())
    return TrustStore(folder, **revoked)


@pytest.fixture
def trust(tmp_path) -> TrustStore:
    return _trust(tmp_path / "trusted", SIGNER)


def _refused(raw: bytes, trust: TrustStore) -> EnvelopeRejected:
    with pytest.raises(EnvelopeRejected) as e:
        verify_envelope(raw, trust.read())
    return e.value


# ---------------------------------------------------------------- signing and the round trip


def test_signature_is_ed25519_over_sorted_compact_json_of_all_other_fields_key_id_included():
    env = _envelope()
    doc = orjson.loads(env.to_bytes())
    del doc["signature"]
    assert doc["key_id"] == SIGNER.key_id == derive_key_id(SIGNER.public_key)
    assert len(SIGNER.key_id) == 16 and int(SIGNER.key_id, 16) >= 0
    assert len(env.signature) == 128
    SIGNER.public_key.verify(bytes.fromhex(env.signature), canonical_json(doc))  # raises if not
    assert canonical_json(doc).startswith(b'{"artifact_b64":"')
    assert b" " not in canonical_json(doc)
    assert env.artifact_sha256 == hashlib.sha256(ARTIFACT).hexdigest()
    assert base64.b64decode(env.artifact_b64) == ARTIFACT


def test_canonical_json_ignores_insertion_order_and_is_stable():
    a = canonical_json({"b": 1, "a": {"y": [1, 2], "x": 0.5}})
    b = canonical_json({"a": {"x": 0.5, "y": [1, 2]}, "b": 1})
    assert a == b == b'{"a":{"x":0.5,"y":[1,2]},"b":1}'
    assert _envelope().signature == _envelope().signature  # Ed25519 signatures are deterministic


def test_verify_returns_the_envelope_and_its_artifact(trust):
    env = _envelope()
    got = verify_envelope(env.to_bytes(), trust.read())
    assert got == env
    assert got.artifact() == ARTIFACT
    assert got.created_at == CREATED


def test_the_signer_and_the_settings_never_show_the_private_key(tmp_path):
    pem = SIGNER.private_pem().decode()
    settings = LoopSettings(model_signing_key=pem, model_trusted_keys_dir=tmp_path)
    body = pem.splitlines()[1]
    for text in (repr(SIGNER), repr(settings), str(settings), settings.model_dump_json()):
        assert body not in text and "PRIVATE KEY" not in text
    assert repr(SIGNER) == f"Signer(key_id={SIGNER.key_id!r})"


# ---------------------------------------------------------------- malformed envelopes


def test_undecodable_bytes_are_rejected(trust):
    e = _refused(b"\x00not json{", trust)
    assert e.kind == "undecodable" and e.reason.startswith("undecodable:")


@pytest.mark.parametrize("changes", [{"model_version": 0}, {"schema_version": 2}, {"unexpected": 1},
                                     {"artifact_sha256": "xyz"}, {"key_id": "../../etc/passwd"}])
def test_schema_violations_are_rejected(trust, changes):
    e = _refused(_tampered(_envelope(), **changes), trust)
    assert e.kind == "schema" and e.reason.startswith("schema: 1 error(s)")


def test_missing_field_is_a_schema_violation(trust):
    doc = orjson.loads(_envelope().to_bytes())
    del doc["decision_id"]
    with pytest.raises(EnvelopeRejected, match=r"^schema: 1 error\(s\).*decision_id"):
        verify_envelope(orjson.dumps(doc), trust.read())


def test_non_finite_metric_cannot_be_signed():
    with pytest.raises(ValueError, match="finite"):
        _envelope(metrics={"auc": float("nan")})


# ---------------------------------------------------------------- signatures, tampering


@pytest.mark.parametrize("changes", [{"model_version": 4}, {"metrics": {"auc": 0.99, "logloss": 0.52}},
                                     {"preprocessing": {}}, {"created_at": "2026-11-24T08:30:16Z"},
                                     {"run_id": "another-run"}])
def test_any_changed_field_breaks_the_signature(trust, changes):
    e = _refused(_tampered(_envelope(), **changes), trust)
    assert e.kind == "signature"
    assert e.reason == f"bad signature for flight_delay v{changes.get('model_version', 3)} (key {SIGNER.key_id})"


def test_tampered_metrics_with_a_well_formed_signature_of_other_content_are_refused(trust):
    # A forger copies a valid signature (of another version's content) next to better metrics.
    other = _envelope(model_version=2)
    raw = _tampered(_envelope(), metrics={"auc": 0.99, "logloss": 0.1}, signature=other.signature)
    e = _refused(raw, trust)
    assert (e.kind, e.reason) == ("signature", f"bad signature for flight_delay v3 (key {SIGNER.key_id})")


def test_tampered_artifact_bytes_break_the_signature(trust):
    env = _envelope()
    flipped = bytearray(ARTIFACT)
    flipped[40] ^= 0x01
    e = _refused(_tampered(env, artifact_b64=base64.b64encode(bytes(flipped)).decode()), trust)
    assert e.kind == "signature"


def test_artifact_not_matching_its_digest_is_rejected_even_when_signed(trust):
    # A signer that computed the digest of other bytes: signature valid, digest wrong.
    doc = orjson.loads(_envelope().to_bytes())
    doc["artifact_b64"] = base64.b64encode(ARTIFACT + b"!").decode()
    del doc["signature"]
    doc["signature"] = SIGNER.sign(canonical_json(doc))
    e = _refused(orjson.dumps(doc), trust)
    assert e.kind == "sha256"
    assert e.reason.startswith(f"artifact sha256 mismatch for flight_delay v3 (key {SIGNER.key_id}): expected ")


def test_another_private_key_claiming_a_trusted_key_id_is_a_bad_signature(trust):
    impostor = Signer(Ed25519PrivateKey.generate(), key_id=SIGNER.key_id)
    e = _refused(_envelope(signer=impostor).to_bytes(), trust)
    assert (e.kind, e.reason) == ("signature", f"bad signature for flight_delay v3 (key {SIGNER.key_id})")


@pytest.mark.parametrize("signature", ["ab" * 32, "AB" * 64, "zz" * 64, ""])
def test_a_signature_that_is_no_ed25519_signature_in_hex_is_refused(trust, signature):
    e = _refused(_tampered(_envelope(), signature=signature), trust)
    assert e.kind == "signature" and "not an Ed25519 signature in hex (128 characters)" in e.reason


def test_a_v1_hmac_envelope_without_key_id_is_refused(trust):
    # What the removed HMAC-SHA256 publisher wrote: no key_id, a 64-hex HMAC over the other fields.
    doc = orjson.loads(_envelope().to_bytes())
    del doc["key_id"], doc["signature"]
    doc["signature"] = hmac.new(b"old-shared-key", canonical_json(doc), hashlib.sha256).hexdigest()
    assert ModelEnvelope.model_validate(doc).key_id is None  # still valid under the registered schema
    e = _refused(orjson.dumps(doc), trust)
    assert e.kind == "signature"
    assert e.reason == ("flight_delay v3 has no key_id: unsigned and HMAC-signed envelopes are no longer accepted "
                        "(publish it again, signed with an Ed25519 key)")


# ---------------------------------------------------------------- trust: unknown, revoked, rotated keys


def test_a_key_that_is_not_in_the_trust_folder_is_refused_naming_key_and_version(trust):
    stranger = Signer.generate()
    e = _refused(_envelope(signer=stranger).to_bytes(), trust)
    assert e.kind == "untrusted_key"
    assert e.reason.startswith(f"flight_delay v3 is signed with key {stranger.key_id}, which is not trusted "
                               f"(trusted keys ['{SIGNER.key_id}'] in {trust.keys_dir})")
    assert "PUBLIC KEY" not in e.reason and "PRIVATE KEY" not in e.reason


def test_an_empty_or_missing_trust_folder_trusts_nothing(tmp_path):
    e = _refused(_envelope().to_bytes(), TrustStore(tmp_path / "absent"))
    assert e.kind == "untrusted_key" and "trusted keys none in" in e.reason


def test_a_file_that_is_no_public_key_is_named_and_not_trusted(tmp_path):
    folder = tmp_path / "trusted"
    folder.mkdir()
    (folder / f"{SIGNER.key_id}.pem").write_bytes(SIGNER.private_pem())  # a private key dropped in by mistake
    e = _refused(_envelope().to_bytes(), TrustStore(folder))
    assert e.kind == "untrusted_key"
    assert f"unreadable: {SIGNER.key_id}.pem is not a PEM public key" in e.reason


def test_a_revoked_key_is_refused_from_the_settings_or_from_revoked_json(tmp_path):
    by_setting = _trust(tmp_path / "a", SIGNER, revoked_keys=frozenset({SIGNER.key_id}))
    e = _refused(_envelope().to_bytes(), by_setting)
    assert (e.kind, e.reason) == ("revoked", f"flight_delay v3 is signed with the revoked key {SIGNER.key_id}")
    by_file = _trust(tmp_path / "b", SIGNER)
    verify_envelope(_envelope().to_bytes(), by_file.read())
    (by_file.keys_dir / "revoked.json").write_text(f'{{"keys": ["{SIGNER.key_id}"]}}')
    assert _refused(_envelope().to_bytes(), by_file).kind == "revoked"  # read again: no restart


def test_a_revoked_version_of_the_served_model_is_refused_and_others_are_not(tmp_path):
    trust = _trust(tmp_path / "a", SIGNER, revoked_versions=frozenset({3}), model_name="flight_delay")
    e = _refused(_envelope().to_bytes(), trust)
    assert (e.kind, e.reason) == ("revoked", f"flight_delay v3 is a revoked version (signed with key {SIGNER.key_id})")
    verify_envelope(_envelope(model_version=4).to_bytes(), trust.read())
    verify_envelope(_envelope(model_name="other_model").to_bytes(), trust.read())  # v3 of another model
    by_file = _trust(tmp_path / "b", SIGNER, model_name="flight_delay")
    (by_file.keys_dir / "revoked.json").write_text('{"keys": [], "versions": [4]}')
    assert _refused(_envelope(model_version=4).to_bytes(), by_file).kind == "revoked"


@pytest.mark.parametrize("content", ['{"keys": "abc"}', '{"versions": ["3"]}', "not json", '{"key": []}'])
def test_a_malformed_revocation_list_is_an_error_not_ignored(tmp_path, content):
    trust = _trust(tmp_path / "t", SIGNER)
    (trust.keys_dir / "revoked.json").write_text(content)
    with pytest.raises(SigningKeyError, match=r"revocation list .*revoked.json is not"):
        trust.read()


def test_rotation_two_trusted_keys_both_accepted_then_the_old_one_removed(tmp_path):
    old, new = SIGNER, Signer.generate()
    trust = _trust(tmp_path / "trusted", old, new)
    for signer in (old, new):
        assert verify_envelope(_envelope(signer=signer).to_bytes(), trust.read()).key_id == signer.key_id
    (trust.keys_dir / f"{old.key_id}.pem").unlink()
    assert _refused(_envelope(signer=old).to_bytes(), trust).kind == "untrusted_key"
    assert verify_envelope(_envelope(signer=new, model_version=4).to_bytes(), trust.read()).model_version == 4


# ---------------------------------------------------------------- where the keys come from


def test_the_dev_key_is_created_on_first_use_with_private_modes_and_its_public_key_trusted(tmp_path, monkeypatch,
                                                                                          caplog):
    monkeypatch.chdir(tmp_path)  # the defaults are relative to the working directory, as on the local path
    settings = LoopSettings()
    assert (settings.model_signing_key_file, settings.model_trusted_keys_dir) == (
        DEFAULT_SIGNING_KEY_FILE, DEFAULT_TRUSTED_KEYS_DIR)
    with caplog.at_level(logging.WARNING, logger="ml.signing"):
        signer = settings.signer()
    private, public = tmp_path / DEFAULT_SIGNING_KEY_FILE, tmp_path / DEFAULT_TRUSTED_KEYS_DIR / f"{signer.key_id}.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    assert public.read_bytes() == signer.public_pem()
    assert sorted(p.name for p in private.parent.iterdir()) == ["model-signing.pem", "trusted"]  # nothing staged left
    (warning,) = [r.getMessage() for r in caplog.records]
    assert str(DEFAULT_SIGNING_KEY_FILE) in warning and str(public.relative_to(tmp_path)) in warning
    assert "BEGIN" not in warning
    # Used again, not replaced; the loop and a scorer with the default folder both trust what it signs.
    assert LoopSettings().signer().key_id == signer.key_id
    raw = _envelope(signer=signer).to_bytes()
    verify_envelope(raw, settings.trust_store().read())
    verify_envelope(raw, ScorerSettings(use_case="flight_delay").trust_store().read())


def test_a_configured_key_file_that_does_not_exist_is_an_error_not_a_new_key(tmp_path):
    missing = tmp_path / "prod.key"
    with pytest.raises(SigningKeyError, match=f"model signing key file {missing} does not exist"):
        LoopSettings(model_signing_key_file=missing).signer()
    assert not missing.exists()


def test_the_key_text_wins_over_the_file_and_the_key_id_setting_over_the_derived_id(tmp_path):
    other = Signer.generate()
    (tmp_path / "file.key").write_bytes(other.private_pem())
    from_file = LoopSettings(model_signing_key_file=tmp_path / "file.key")
    assert from_file.signer().key_id == other.key_id
    from_text = LoopSettings(model_signing_key_file=tmp_path / "file.key",
                             model_signing_key=SecretStr(SIGNER.private_pem().decode()), model_signing_key_id="k-2026")
    assert from_text.signer().key_id == "k-2026"
    assert from_text.signer().public_pem() == public_pem(SIGNER.public_key)
    # Reading the topic back, the loop trusts its own key even without a trust folder.
    trusted = from_text.model_copy(update={"model_trusted_keys_dir": tmp_path / "none"}).trust_store().read()
    assert set(trusted.keys) == {"k-2026"}


@pytest.mark.parametrize("text, error", [
    ("not a key", "is not an unencrypted PEM"),
    (SIGNER.public_pem().decode(), "is not an unencrypted PEM"),  # a public key where the private one belongs
    (Ed448PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode(),
     "holds a Ed448PrivateKey key, not an Ed25519 one"),
])
def test_a_private_key_that_cannot_be_read_is_named_without_its_content(text, error):
    with pytest.raises(SigningKeyError) as e:
        LoopSettings(model_signing_key=SecretStr(text)).signer()
    assert str(e.value).startswith("MODEL_SIGNING_KEY (or the password of the Airflow connection model_signing)")
    assert error in str(e.value) and "MCowBQ" not in str(e.value)


def test_an_invalid_key_id_setting_is_refused():
    with pytest.raises(ValueError, match="model_signing_key_id"):
        LoopSettings(model_signing_key_id="../evil")


def test_keys_generate_writes_a_private_and_a_public_key_and_names_the_variables(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "keys"), "--key-id", "prod-1"])
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "keys" / "prod-1.key", tmp_path / "keys" / "prod-1.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    signer = Signer.from_pem(private.read_bytes(), "prod-1", source="test")
    assert public.read_bytes() == signer.public_pem()
    for line in ("key id: prod-1", f"MODEL_SIGNING_KEY_FILE={private}", "MODEL_SIGNING_KEY_ID=prod-1",
                 "MODEL_TRUSTED_KEYS_DIR="):
        assert line in result.output
    assert "BEGIN" not in result.output
    again = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "keys"), "--key-id", "prod-1"])
    assert again.exit_code == 1 and "exists already" in again.output  # never overwritten
    derived = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "keys")])
    key_id = derived.output.splitlines()[0].removeprefix("key id: ")
    assert len(key_id) == 16 and (tmp_path / "keys" / f"{key_id}.key").exists()
