"""Shadow scoring without a broker: the envelope's signed stage (old champion envelopes still verify), the keys of
the models topic, the slot holding champion and shadow together, scoring a batch with both (a failing shadow costs
only its own outputs), and the model watcher's decisions on shadow envelopes, tombstones and promotions."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ml.contracts import ModelStatus
from ml.decode import ContractDecoder
from ml.errors import EnvelopeRejected
from ml.publish import (CHAMPION, SHADOW, ModelEnvelope, as_champion, build_envelope, canonical_json, parse_key,
                        record_key, shadow_key, verify_envelope)
from ml.schemas import incompatibilities, json_schema
from ml.signing import Signer, TrustStore
from ml.wire import header
from scoring_service.model_checks import ModelRefused
from scoring_service.model_loader import Admission, AdmissionPolicy, admit
from scoring_service.scoring import (SHADOW_EXCEPTION, SHADOW_NON_FINITE, InputBatch, OutputFrames, ServingModel,
                                     score_batch)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SIGNER = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
ARTIFACT = b"PK\x03\x04 pretend .keras zip bytes \x00\xff" * 10
CREATED = datetime(2026, 12, 4, 8, 30, 15, 123456, tzinfo=UTC)


def _envelope(version: int = 3, stage: str = CHAMPION, artifact: bytes = ARTIFACT, **overrides) -> ModelEnvelope:
    fields = dict(model_name="flight_delay", model_version=version, run_id="a1b2c3",
                  model_uri=f"models:/flight_delay/{version}", preprocessing={"numeric": ["distance"]},
                  metrics={"auc": 0.71}, decision_id="d-42", artifact=artifact, signer=SIGNER, created_at=CREATED,
                  stage=stage)
    return build_envelope(**(fields | overrides))


@pytest.fixture
def trusted(tmp_path):
    (tmp_path / f"{SIGNER.key_id}.pem").write_bytes(SIGNER.public_pem())
    return TrustStore(tmp_path).read()


def _tampered(envelope: ModelEnvelope, drop: str | None = None, **changes) -> bytes:
    doc = orjson.loads(envelope.to_bytes())
    doc.pop(drop, None)
    return orjson.dumps(doc | changes)


# ---------------------------------------------------------------- the envelope's stage and the keys


def test_an_envelope_signed_before_stages_existed_verifies_and_reads_as_a_champion(trusted):
    """The bytes an envelope had before the field: every field but the stage, signed over their canonical JSON."""
    doc = dict(schema_version=1, model_name="flight_delay", model_version=3, run_id="a1b2c3",
               model_uri="models:/flight_delay/3", preprocessing={"numeric": ["distance"]}, metrics={"auc": 0.71},
               decision_id="d-42", created_at="2026-12-04T08:30:15.123456Z",
               artifact_b64=base64.b64encode(ARTIFACT).decode(), artifact_sha256=hashlib.sha256(ARTIFACT).hexdigest(),
               key_id=SIGNER.key_id)
    old = orjson.dumps({**doc, "signature": SIGNER.sign(canonical_json(doc))})
    envelope = verify_envelope(old, trusted)
    assert envelope.stage == CHAMPION
    assert envelope.to_bytes() == old  # read back and published again (a rollback): the same bytes
    # A champion built now is that very record: no stage field, the same signature.
    assert _envelope().to_bytes() == old
    # Adding the stage to an old record is a change of what was signed.
    with pytest.raises(EnvelopeRejected, match="bad signature"):
        verify_envelope(_tampered(envelope, stage="champion"), trusted)


def test_a_shadow_envelope_carries_its_stage_under_the_signature(trusted):
    shadow = _envelope(stage=SHADOW)
    assert orjson.loads(shadow.to_bytes())["stage"] == "shadow"
    assert verify_envelope(shadow.to_bytes(), trusted).stage == SHADOW
    # Made a champion by dropping or changing its stage: the signature no longer holds.
    for raw in (_tampered(shadow, drop="stage"), _tampered(shadow, stage="champion")):
        with pytest.raises(EnvelopeRejected) as e:
            verify_envelope(raw, trusted)
        assert e.value.kind == "signature"
    with pytest.raises(EnvelopeRejected) as e:
        verify_envelope(_tampered(shadow, stage="canary"), trusted)
    assert e.value.kind == "schema"


def test_a_promoted_shadow_is_a_champion_envelope_of_the_same_artifact_signed_anew(trusted):
    shadow = _envelope(version=4, stage=SHADOW)
    champion = as_champion(shadow, SIGNER)
    assert (champion.stage, champion.model_version, champion.artifact_sha256) == (CHAMPION, 4, shadow.artifact_sha256)
    assert (champion.decision_id, champion.metrics, champion.run_id) == (shadow.decision_id, shadow.metrics, "a1b2c3")
    assert "stage" not in orjson.loads(champion.to_bytes())
    assert verify_envelope(champion.to_bytes(), trusted) == champion


def test_keys_of_the_models_topic_per_stage():
    assert record_key("flight_delay", CHAMPION) == "flight_delay"
    assert record_key("flight_delay", SHADOW) == shadow_key("flight_delay") == "flight_delay@shadow"
    assert parse_key(b"flight_delay@shadow") == ("flight_delay", SHADOW)
    assert parse_key("flight_delay") == ("flight_delay", CHAMPION)


def _without(schema: dict, field: str) -> dict:
    return {**schema, "properties": {k: v for k, v in schema["properties"].items() if k != field}}


def test_the_envelope_and_status_schemas_stay_backward_compatible():
    envelope = json_schema(ModelEnvelope)
    assert "stage" not in envelope.get("required", [])
    assert incompatibilities(envelope, [_without(envelope, "stage")], "BACKWARD") == []
    status = json_schema(ModelStatus)
    old = _without(status, "stage")
    old["properties"]["status"] = {**old["properties"]["status"], "enum": ["live", "rejected"]}
    assert incompatibilities(status, [old], "BACKWARD") == []


# ---------------------------------------------------------------- the slot


def _model(version: int, sha: str = "a", forward=None) -> ServingModel:
    return ServingModel("m", version, SimpleNamespace(fingerprint=f"fp{version}"), forward, sha * 64)


def test_the_slot_holds_champion_and_shadow_together_and_promotes_in_one_step():
    from scoring_service.model_watcher import ModelSlot

    slot = ModelSlot()
    v1, v2, v3 = _model(1), _model(2, "b"), _model(3, "c")
    assert slot.swap_shadow(v2) is None and not slot.loaded.is_set()  # a shadow alone serves nothing
    assert slot.swap(v1) is None and slot.loaded.is_set()
    before = slot.serving
    assert (before.current, before.shadow) == (v1, v2)
    assert slot.swap_shadow(v3) is v2 and slot.serving.shadow is v3
    assert (before.current, before.shadow) == (v1, v2)  # what a batch read stays as it read it
    assert slot.clear_shadow() is v3 and slot.shadow is None and slot.current is v1
    slot.swap_shadow(v2)
    assert slot.promote(v2) is v1
    assert (slot.current, slot.shadow) == (v2, None)


# ---------------------------------------------------------------- scoring a batch with both


@pytest.fixture(scope="module")
def flights():
    from use_cases.flight_delay import preprocessing
    from use_cases.flight_delay.replay import build_stream
    from use_cases.flight_delay.source import load_completed

    from ml.settings import LoopSettings

    rows = load_completed((1, 1), limit=1000)
    stream = build_stream(LoopSettings(), rows)
    values = [v for t, v in zip(stream.topics, stream.values, strict=True) if t == "flights.scheduled"]
    return values, preprocessing.fit(rows)


@pytest.fixture(scope="module")
def champion_and_shadow(flights):
    import keras

    from ml.numpy_forward import NumpyForward
    from use_cases.flight_delay.model import build

    _, fitted = flights
    models = []
    for version, seed in ((1, 5), (2, 6)):
        keras.utils.set_random_seed(seed)
        models.append(ServingModel("m", version, fitted, NumpyForward.from_keras(build(fitted)), str(version) * 64))
    return models


FRAMES = OutputFrames(predictions=header(7), dead_letters=header(8), shadow=header(9))


def _score(flights, champion, shadow):
    from use_cases.flight_delay.contracts import FlightScheduled
    from use_cases.flight_delay.use_case import FlightDelay

    values, _ = flights
    raw = [*values[:200], b"\x00garbage", *values[200:400]]
    batch = InputBatch.of("in", [(1, 50 + i, b"k", v) for i, v in enumerate(raw)])
    now = datetime(2026, 12, 4, 12, tzinfo=UTC)
    return score_batch(batch, champion, FlightDelay(), ContractDecoder(FlightScheduled), FRAMES, now=now,
                       shadow=shadow)


def test_the_shadow_scores_the_rows_the_champion_scored_framed_for_the_shadow_topic(flights, champion_and_shadow):
    from use_cases.flight_delay.contracts import FlightPrediction

    champion, shadow = champion_and_shadow
    alone = _score(flights, champion, None)
    both = _score(flights, champion, shadow)
    assert both.predictions == alone.predictions and both.dead_letters == alone.dead_letters  # as without it
    assert alone.shadow_predictions == [] and both.shadow_failure is None
    assert [k for k, _ in both.shadow_predictions] == [k for k, _ in both.predictions]
    assert {v[:5] for _, v in both.shadow_predictions} == {FRAMES.shadow}
    mine = [FlightPrediction.model_validate_json(v[5:]) for _, v in both.shadow_predictions]
    theirs = [FlightPrediction.model_validate_json(v[5:]) for _, v in both.predictions]
    assert [p.source_offset for p in mine] == [p.source_offset for p in theirs] and len(mine) == 400
    assert {p.model_version for p in mine} == {2} and {p.model_version for p in theirs} == {1}
    assert [p.probability for p in mine] != [p.probability for p in theirs]
    assert len(both.dead_letters) == 1  # from the champion's path only


@pytest.mark.parametrize(("forward", "reason"), [
    (lambda x: (_ for _ in ()).throw(RuntimeError("layer exploded")), SHADOW_EXCEPTION),
    (lambda x: np.full((len(next(iter(x.values()))), 1), np.nan, np.float32), SHADOW_NON_FINITE),
])
def test_a_failing_shadow_costs_only_its_own_outputs(flights, champion_and_shadow, forward, reason):
    champion, shadow = champion_and_shadow
    broken = dataclasses.replace(shadow, forward=forward)
    scored = _score(flights, champion, broken)
    assert scored.predictions == _score(flights, champion, None).predictions
    assert scored.shadow_predictions == [] and scored.shadow_failure.reason == reason
    if reason == SHADOW_EXCEPTION:
        assert "RuntimeError: layer exploded" in scored.shadow_failure.detail


# ---------------------------------------------------------------- admission of a stage in the loader


def test_the_loader_refuses_a_stage_other_than_the_key_says_and_reuses_a_loaded_version(flights, tmp_path):
    _, fitted = flights
    (tmp_path / f"{SIGNER.key_id}.pem").write_bytes(SIGNER.public_pem())
    policy = AdmissionPolicy(model_name="flight_delay", use_case="flight_delay", trust=TrustStore(tmp_path),
                             max_model_bytes=1 << 20, canary_rows=8)
    shadow = _envelope(version=2, stage=SHADOW, preprocessing=fitted.to_dict())

    def no_load(_artifact):
        raise AssertionError("loaded again")

    with pytest.raises(ModelRefused) as e:
        admit(shadow.to_bytes(), policy, None, no_load, CHAMPION)  # a shadow's record under the champion key
    assert (e.value.kind, e.value.version) == ("stage", 2)
    loaded = [(1, "1" * 64), (2, shadow.artifact_sha256)]
    admission = admit(as_champion(shadow, SIGNER).to_bytes(), policy, loaded, no_load, CHAMPION)
    assert (admission.stage, admission.model_version, admission.plan) == (CHAMPION, 2, None)


# ---------------------------------------------------------------- the model watcher's decisions


class _Msg:
    def __init__(self, key: bytes | None, value: bytes | None, offset: int, headers=None) -> None:
        self._key, self._value, self._offset, self._headers = key, value, offset, headers

    def key(self):
        return self._key

    def value(self):
        return self._value

    def topic(self):
        return "models"

    def partition(self):
        return 0

    def offset(self):
        return self._offset

    def timestamp(self):
        return 1, int(datetime.now(UTC).timestamp() * 1000)

    def headers(self):
        return self._headers

    def error(self):
        return None


class _Loader:
    """Answers each admission with the envelope's own fields (plan None for what the watcher says it holds), or
    refuses what it was told to; records each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, list, str]] = []
        self.refuse: dict[int, ModelRefused] = {}

    def admit(self, raw, _policy, loaded, stage):
        doc = orjson.loads(raw)
        version, sha = doc["model_version"], doc["artifact_sha256"]
        self.requests.append((version, sorted(loaded), stage))
        if version in self.refuse:
            raise self.refuse[version]
        if doc.get("stage", CHAMPION) != stage:
            raise ModelRefused("stage", "other stage", version)
        return Admission("m", version, sha, SimpleNamespace(fingerprint="fp"),
                         None if (version, sha) in loaded else object(), stage)


class _Producer:
    def __init__(self) -> None:
        self.status: list[dict] = []

    def produce(self, _topic, key, value, on_delivery):
        self.status.append(orjson.loads(value[5:]))

    def flush(self, _timeout):
        return 0


class _Topics:
    def __init__(self, existing: set[str]) -> None:
        self.existing = existing

    def list_topics(self, topic, timeout):
        meta = SimpleNamespace(error=None, partitions={0: None})
        return SimpleNamespace(topics={topic: meta} if topic in self.existing else {})


@pytest.fixture
def watcher(monkeypatch, tmp_path):
    from scoring_service import model_watcher
    from scoring_service.config import ScorerSettings
    from scoring_service.ops import Metrics

    class Frames:
        def __init__(self, _settings) -> None:
            pass

        def header(self, _topic):
            return header(1)

    monkeypatch.setattr(model_watcher, "Framing", Frames)
    settings = ScorerSettings(use_case="flight_delay", model_name="m", http_port=0, model_trusted_keys_dir=tmp_path)
    w = model_watcher.ModelWatcher(settings, SimpleNamespace(name="flight_delay"), model_watcher.ModelSlot(),
                                   Metrics(), "unit")
    w.loader, w._producer, w._consumer = _Loader(), _Producer(), _Topics({settings.shadow_topic})
    w._envelopes = SimpleNamespace(payload=lambda value: value[5:])
    w._model = lambda a: ServingModel("m", a.model_version, SimpleNamespace(fingerprint="fp"), None, a.artifact_sha256)
    return w


def _record(w, version: int, stage: str, artifact: bytes = ARTIFACT, offset: int = 0) -> _Msg:
    envelope = _envelope(version=version, stage=stage, artifact=artifact, model_name="m")
    return _Msg(record_key("m", stage).encode(), header(1) + envelope.to_bytes(), offset)


def _statuses(w) -> list[tuple]:
    return [(s["status"], s["model_version"], s["stage"], s["reason_kind"]) for s in w._producer.status]


def test_a_shadow_goes_beside_the_champion_and_a_tombstone_retires_it(watcher):
    w = watcher
    assert w._stage_of(_Msg(b"m", b"", 0)) == CHAMPION and w._stage_of(_Msg(None, b"", 0)) == CHAMPION
    assert w._stage_of(_Msg(b"m@shadow", None, 0)) == SHADOW and w._stage_of(_Msg(b"other", b"", 0)) is None
    assert w._admit(_record(w, 1, CHAMPION), CHAMPION)
    assert w._admit(_record(w, 2, SHADOW, b"other artifact"), SHADOW)
    assert (w.slot.current.version, w.slot.shadow.version) == (1, 2)
    assert w.metrics.shadow_model_version.labels("m")._value.get() == 2
    w._retire(_Msg(b"m@shadow", None, 5, headers=[("reason", b"worse than the champion")]))
    assert (w.slot.current.version, w.slot.shadow) == (1, None)
    assert w.metrics.shadow_model_version.labels("m")._value.get() == 0
    w._retire(_Msg(b"m@shadow", None, 6))  # nothing left to clear: no report
    assert _statuses(w) == [("live", 1, "champion", ""), ("shadow", 2, "shadow", ""),
                            ("retired", 2, "shadow", "tombstone")]
    assert w._producer.status[1]["serving_version"] == 1
    assert w._producer.status[2]["reason"] == "worse than the champion"


def test_a_refused_shadow_never_touches_the_champion(watcher):
    w = watcher
    w._admit(_record(w, 1, CHAMPION), CHAMPION)
    w.loader.refuse[2] = ModelRefused("canary", "3 non-finite output(s) on the canary batch", 2)
    assert not w._admit(_record(w, 2, SHADOW, b"nan model"), SHADOW)
    # A shadow's envelope copied under the champion key: refused for its stage.
    assert not w._admit(_Msg(b"m", _record(w, 3, SHADOW, b"x").value(), 9), CHAMPION)
    assert (w.slot.current.version, w.slot.shadow) == (1, None)
    assert _statuses(w)[1:] == [("rejected", 2, "shadow", "canary"), ("rejected", 3, "champion", "stage")]
    assert w._producer.status[1]["serving_version"] == 1


def test_a_shadow_without_a_writable_shadow_topic_is_refused(watcher):
    w = watcher
    w._consumer = _Topics(set())
    w._admit(_record(w, 1, CHAMPION), CHAMPION)
    assert not w._admit(_record(w, 2, SHADOW, b"b"), SHADOW)
    assert w.slot.shadow is None and _statuses(w)[-1] == ("rejected", 2, "shadow", "shadow_topic")


def test_the_shadows_champion_envelope_goes_live_with_the_loaded_model_and_clears_the_shadow(watcher):
    w = watcher
    w._admit(_record(w, 1, CHAMPION), CHAMPION)
    w._admit(_record(w, 2, SHADOW, b"b"), SHADOW)
    shadow = w.slot.shadow
    assert w._admit(_record(w, 2, CHAMPION, b"b"), CHAMPION)
    assert w.slot.current is shadow and w.slot.shadow is None  # the very object: not loaded again
    sha_b = hashlib.sha256(b"b").hexdigest()
    assert w.loader.requests[-1] == (2, sorted([(1, hashlib.sha256(ARTIFACT).hexdigest()), (2, sha_b)]), CHAMPION)
    assert _statuses(w)[-2:] == [("live", 2, "champion", ""), ("retired", 2, "shadow", "promoted")]
    assert w._producer.status[-2]["previous_version"] == 1
    # The shadow envelope of the champion's version, seen again (a restart before the tombstone): no shadow.
    assert not w._admit(_record(w, 2, SHADOW, b"b"), SHADOW)
    assert w.slot.shadow is None


# ---------------------------------------------------------------- the loop side: Param, env, CLI


def test_publishing_in_shadow_defaults_to_shadow_first_in_the_dag_the_run_and_the_cli(monkeypatch):
    from typer.testing import CliRunner

    from ml import pipeline
    from ml.airflow_dag import shadow_param
    from ml.airflow_tasks import RunRequest
    from ml.cli import app
    from ml.settings import LoopSettings

    assert shadow_param(LoopSettings()).value is False
    monkeypatch.setenv("SHADOW_FIRST", "true")
    assert LoopSettings().shadow_first and shadow_param(LoopSettings()).value is True
    assert RunRequest.model_validate({}).shadow is None and RunRequest.model_validate({"shadow": True}).shadow
    asked = []
    monkeypatch.setattr(pipeline, "retrain", lambda settings, run_id, **kw: asked.append(kw["shadow"]) or
                        pipeline.Outcome(loop_run_id=run_id, status="rejected", reason="test"))
    for flags in ([], ["--shadow"], ["--no-shadow"]):
        assert CliRunner().invoke(app, ["retrain", "--use-case", "flight_delay", *flags]).exit_code == 0
    assert asked == [None, True, False]  # None: the settings' SHADOW_FIRST decides
