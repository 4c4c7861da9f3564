"""The scorer against a real broker: first model, steady-load hot swap, refused models (a bad model, an untrusted
or revoked signing key, tampered bytes), key rotation, dead letters, no model yet, exactly-once delivery across a
SIGKILL, two replicas, a broker restart under the scorer, and a frozen broker under the sink."""

from __future__ import annotations

import base64
import gc
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from infra.kafka import broker, distribution
from ml.contracts import DeadLetter
from ml.keras_models import to_bytes
from ml.publish import build_envelope, canonical_json, publish
from ml.settings import LoopSettings
from ml.signing import Signer
from ml.wire import Framing, TopicReader, header
from scoring_service.app import FatalErrors, Scorer, consumer_config, leave_group
from scoring_service.config import ScorerSettings
from scoring_service.sink import Sink
from use_cases.flight_delay import preprocessing
from use_cases.flight_delay.contracts import FlightPrediction
from use_cases.flight_delay.replay import build_stream
from use_cases.flight_delay.source import load_completed

pytestmark = pytest.mark.integration

SIGNER = Signer.generate()  # the loop's key in these tests; the scorers trust its public key (trusted_dir)
MODEL = "flight_delay_it"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------- data and models


@pytest.fixture(scope="module")
def flights():
    return load_completed((1, 1), limit=6000)


@pytest.fixture(scope="module")
def events(flights) -> list[tuple[bytes, bytes]]:
    """(key, value) of each flight's `flights.scheduled` record, as the replay writes them."""
    stream = build_stream(LoopSettings(), flights)
    return [(k.encode(), v) for t, k, v in zip(stream.topics, stream.keys, stream.values, strict=True)
            if t == "flights.scheduled"]


@pytest.fixture(scope="module")
def contract(flights):
    return preprocessing.fit(flights.head(3000))


@pytest.fixture(scope="module")
def artifacts(contract) -> dict[str, bytes]:
    """Real .keras bytes of the flight model: two good versions and one whose output layer is NaN."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from use_cases.flight_delay.model import build

    out = {}
    for name, seed in (("a", 1), ("b", 2), ("nan", 3)):
        keras.utils.set_random_seed(seed)
        m = build(contract)
        if name == "nan":
            layer = m.get_layer("p_delayed")
            layer.set_weights([np.full_like(w, np.nan) for w in layer.get_weights()])
        out[name] = to_bytes(m)
    return out


def envelope(version: int, artifact: bytes, contract_dict: dict, signer: Signer = SIGNER):
    return build_envelope(model_name=MODEL, model_version=version, run_id=f"run-{version}",
                          model_uri=f"models:/{MODEL}/{version}", preprocessing=contract_dict,
                          metrics={"auc": 0.7}, decision_id=f"d-{version}", artifact=artifact, signer=signer)


def trust(folder: Path, *signers: Signer) -> Path:
    """``folder`` as a scorer's trust folder holding the public keys of ``signers``."""
    folder.mkdir(parents=True, exist_ok=True)
    for signer in signers:
        (folder / f"{signer.key_id}.pem").write_bytes(signer.public_pem())
    return folder


@pytest.fixture(scope="module")
def trusted_dir(tmp_path_factory) -> Path:
    """The scorers' trust folder: SIGNER's public key only."""
    return trust(tmp_path_factory.mktemp("trusted"), SIGNER)


# ---------------------------------------------------------------- topics, scorer, reading back


@pytest.fixture
def settings(kafka_bootstrap, new_topic, trusted_dir) -> ScorerSettings:
    return ScorerSettings(
        use_case="flight_delay", kafka_bootstrap_servers=kafka_bootstrap, topic_names={
            "flights.scheduled": new_topic("sched", 3), "flights.predictions": new_topic("pred", 3),
            "flights.dlq": new_topic("dlq", 1), "models.status": new_topic("status", 1),
            "models": new_topic("models", 1, {"cleanup.policy": "compact", "max.message.bytes": str(4 << 20)})},
        group_id=f"scorer-{uuid.uuid4().hex[:8]}",
        model_name=MODEL, batch_size=500, batch_max_wait_ms=50, http_port=0, model_trusted_keys_dir=trusted_dir,
        session_timeout_ms=6000)  # transactional id <group id>-<replica name>: the group is the test's own


def loop_settings(s: ScorerSettings) -> LoopSettings:
    return LoopSettings(kafka_bootstrap_servers=s.kafka_bootstrap_servers, topic_names={"models": s.models_topic},
                        model_signing_key=SecretStr(SIGNER.private_pem().decode()),
                        model_trusted_keys_dir=s.model_trusted_keys_dir, model_name=MODEL)


class Running:
    """A scorer on a thread of this process (TensorFlow is imported once for the whole session)."""

    def __init__(self, settings: ScorerSettings, scorer_id: str = "it") -> None:
        self.scorer = Scorer(settings, scorer_id=scorer_id)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="scorer-under-test")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.scorer.run()
        except BaseException as e:
            self.error = e

    def http(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.scorer.ops.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name: str, labels: dict | None = None) -> float:
        return self.scorer.metrics.registry.get_sample_value(name, labels or {}) or 0.0

    def stop(self) -> None:
        self.scorer.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()
        assert self.error is None, self.error


@pytest.fixture
def scorers():
    started: list[Running] = []

    def start(settings: ScorerSettings) -> Running:
        started.append(Running(settings))
        return started[-1]

    yield start
    for r in started:
        if r.thread.is_alive():
            r.stop()


def produce(s: ScorerSettings, topic: str, records, rate: float | None = None, raw: bool = False) -> None:
    """Produce (key, value) pairs to ``s``'s cluster, each value framed with the topic's schema id unless ``raw``,
    at ``rate`` per second if given; flushed and checked."""
    framing = Framing(s)
    p = Producer({"bootstrap.servers": s.kafka_bootstrap_servers, "enable.idempotence": True, "linger.ms": 5})
    errors = []
    started = time.monotonic()
    for i, (key, value) in enumerate(records):
        if rate is not None and i % 50 == 0:
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
        value = value if raw else framing.frame(topic, value)
        p.produce(topic, key=key, value=value, on_delivery=lambda err, _m: err and errors.append(err))
        p.poll(0)
    assert p.flush(30) == 0 and not errors


def read(s: ScorerSettings, topic: str, count: int, timeout: float = 60.0, settle: float = 1.0) -> list[dict]:
    """Committed records of ``topic`` from the beginning, unframed: waits for ``count``, then ``settle`` s for
    extras."""
    reader = TopicReader(s, topic)
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    c.subscribe([topic])
    out, deadline, extra_until = [], time.monotonic() + timeout, None
    try:
        while time.monotonic() < deadline:
            for m in c.consume(1000, 0.2):
                assert m.error() is None, m.error()
                out.append(reader.loads(m.value()) | {"_partition": m.partition(), "_offset": m.offset()})
            if len(out) >= count:
                extra_until = extra_until or time.monotonic() + settle
                if time.monotonic() >= extra_until:
                    break
    finally:
        c.close()
    return out


def committed(s: ScorerSettings, partitions: int = 3) -> dict[int, int]:
    """The group's committed offsets; {} while they are unstable (an open transaction of a killed replica:
    the broker answers only once that transaction is fenced or times out)."""
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers, "group.id": s.group_id})
    try:
        tps = c.committed([TopicPartition(s.input_topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    except KafkaException as e:
        if e.args[0].code() != KafkaError._TIMED_OUT:
            raise
        return {}
    finally:
        c.close()


def high_watermarks(s: ScorerSettings, partitions: int = 3) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers, "group.id": "watermarks"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(s.input_topic, p), timeout=10)[1]
                for p in range(partitions)}
    finally:
        c.close()


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()):
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def status_records(s: ScorerSettings, count: int) -> list[dict]:
    return read(s, s.status_topic, count, timeout=90, settle=0.5)


def assert_exactly_once(predictions: list[dict], s: ScorerSettings, n_inputs: int) -> None:
    positions = Counter((p["source_partition"], p["source_offset"]) for p in predictions)
    assert len(positions) == n_inputs, f"{n_inputs - len(positions)} input(s) without a prediction"
    assert max(positions.values()) == 1, f"duplicated: {[k for k, v in positions.items() if v > 1][:5]}"
    assert all(p["source_topic"] == s.input_topic for p in predictions)


# ---------------------------------------------------------------- tests


def test_no_model_consumes_nothing_then_first_model_scores_every_input_once(
        settings, scorers, events, contract, artifacts):
    s = settings
    batch = events[:3000]
    produce(s, s.input_topic, batch)
    running = scorers(s)
    time.sleep(3)
    assert running.http("/healthz")[0] == 200
    assert running.http("/readyz") == (503, "no model loaded\n")
    assert read(s, s.output_topic, 1, timeout=2) == []
    assert set(committed(s).values()) == {-1001}  # OFFSET_INVALID: nothing committed
    assert running.metric("scorer_events_in_total") == 0

    publish(loop_settings(s), envelope(1, artifacts["a"], contract.to_dict()))
    predictions = read(s, s.output_topic, len(batch))
    assert_exactly_once(predictions, s, len(batch))
    assert {(p["model_name"], p["model_version"]) for p in predictions} == {(MODEL, 1)}
    for p in predictions[:50]:
        FlightPrediction.model_validate({k: v for k, v in p.items() if not k.startswith("_")})
        assert p["threshold"] == 0.5  # FLIGHT_DELAY_DECISION_THRESHOLD's default
        assert p["delayed"] == (p["probability"] >= 0.5)
    by_position = {(p["source_partition"], p["source_offset"]): p["flight_id"] for p in predictions}
    assert set(by_position.values()) == {k.decode() for k, _ in batch}
    wait_for(lambda: committed(s) == high_watermarks(s), 30, "input offsets committed up to the end")
    status, body = running.http("/readyz")
    assert status == 200 and f"{MODEL} v1 serving" in body
    metrics = running.http("/metrics")[1]
    assert "scorer_events_in_total 3000.0" in metrics and f'scorer_model_version{{model_name="{MODEL}"}} 1.0' in metrics
    live = status_records(s, 1)
    assert [(r["status"], r["model_version"], r["scorer_id"]) for r in live] == [("live", 1, "it")]
    running.stop()


def _kafka_client_threads() -> int:
    """librdkafka's threads in this process: every client runs a few, each named ``rdk:...``."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            count += Path(f"/proc/self/task/{task}/comm").read_text().startswith("rdk:")
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return count


@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
def test_a_stopped_scorer_leaves_no_kafka_client_running(settings, events, contract, artifacts, mode):
    """Stopping releases every Kafka client of a scorer at once (its consumers, the sink's producer, the model
    watcher's), while the scorer object is still referenced: none is left retrying a broker that may go away. An
    exactly_once scorer that stops cleanly has no transaction open, so its producer is released too."""
    s = settings.model_copy(update={"delivery_mode": mode})
    publish(loop_settings(s), envelope(1, artifacts["a"], contract.to_dict()))
    produce(s, s.input_topic, events[:500])
    gc.collect()
    before = _kafka_client_threads()
    running = Running(s)
    wait_for(lambda: running.scorer.ready()[0], 120, "scorer ready")
    wait_for(lambda: running.metric("scorer_predictions_out_total") == 500, 60, "every event scored")
    assert _kafka_client_threads() > before
    running.stop()
    gc.collect()
    assert _kafka_client_threads() == before


@pytest.mark.slow
def test_hot_swap_under_steady_load_loses_and_duplicates_nothing(settings, scorers, events, contract, artifacts):
    s = settings
    publish(loop_settings(s), envelope(1, artifacts["a"], contract.to_dict()))
    running = scorers(s)
    wait_for(lambda: running.http("/readyz")[0] == 200, 60, "ready")
    stream = events[:6000]

    def produce_around_the_swap() -> None:
        # Steady load before, during and after the swap, however long loading v2 takes on a busy machine.
        produce(s, s.input_topic, stream[:2000], 2000.0)
        wait_for(lambda: running.metric("scorer_model_swaps_total") == 2, 120, "v2 live")
        produce(s, s.input_topic, stream[2000:], 2000.0)

    producer = threading.Thread(target=produce_around_the_swap)
    producer.start()
    time.sleep(0.5)
    publish(loop_settings(s), envelope(2, artifacts["b"], contract.to_dict()))
    producer.join()
    predictions = read(s, s.output_topic, len(stream))
    assert_exactly_once(predictions, s, len(stream))
    for partition in range(3):
        versions = [p["model_version"] for p in sorted(predictions, key=lambda p: p["source_offset"])
                    if p["source_partition"] == partition]
        switches = sum(a != b for a, b in itertools.pairwise(versions))
        assert versions[0] == 1 and versions[-1] == 2 and switches == 1, (partition, Counter(versions))
    # One version per batch: predictions of one batch share scored_at; no batch mixes versions.
    versions_per_batch = {}
    for p in predictions:
        versions_per_batch.setdefault(p["scored_at"], set()).add(p["model_version"])
    assert all(len(v) == 1 for v in versions_per_batch.values())
    assert running.metric("scorer_model_swaps_total") == 2
    running.stop()


def _tampered_sha(artifact: bytes, contract_dict: dict, other: bytes, version: int = 4) -> bytes:
    """Signed correctly by a trusted key, but the artifact is not the one whose SHA-256 the envelope states."""
    doc = orjson.loads(envelope(version, artifact, contract_dict).to_bytes())
    doc["artifact_b64"] = base64.b64encode(other).decode()
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    doc["signature"] = SIGNER.sign(canonical_json(unsigned))
    return orjson.dumps(doc)


def _tampered_bytes(artifact: bytes, contract_dict: dict, version: int) -> bytes:
    """Signed by a trusted key, then one byte of the artifact flipped on the way: the signature no longer holds."""
    doc = orjson.loads(envelope(version, artifact, contract_dict).to_bytes())
    flipped = bytearray(artifact)
    flipped[len(flipped) // 2] ^= 0x01
    doc["artifact_b64"] = base64.b64encode(bytes(flipped)).decode()
    return orjson.dumps(doc)


def _zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.weights.h5", b"\0" * (80 << 20))  # 80 MB unpacked, ~80 KB packed
    return buf.getvalue()


@pytest.mark.slow
def test_each_class_of_bad_model_is_refused_while_the_old_one_serves_and_rollback_swaps_back(
        settings, scorers, events, contract, artifacts):
    s = settings
    good = contract.to_dict()
    misfit = {**good, "input_schema": {**good["input_schema"], "distance": "string"}}
    bad = {
        # Another private key under the trusted key's id: its signature does not verify.
        "signature": envelope(3, artifacts["b"], good, Signer(Ed25519PrivateKey.generate(), SIGNER.key_id)).to_bytes(),
        "sha256": _tampered_sha(artifacts["b"], good, artifacts["a"]),
        "load": envelope(5, b"PK\x03\x04 this is not a keras archive", good).to_bytes(),
        "preprocessing": envelope(6, artifacts["b"], misfit).to_bytes(),
        "canary": envelope(7, artifacts["nan"], good).to_bytes(),
        "oversized": envelope(8, _zip_bomb(), good).to_bytes(),
        "undecodable": b"{not json",
    }
    framing, good_v9 = Framing(s), envelope(9, artifacts["b"], good).to_bytes()
    bad = {kind: framing.frame(s.models_topic, value) for kind, value in bad.items()}
    # Bad frames around a good envelope: none, an id the registry does not know, another topic's schema id.
    bad |= {"framing": good_v9, "schema_id": header(2**31 - 1) + good_v9,
            "subject": framing.frame(s.status_topic, good_v9)}
    publish(loop_settings(s), envelope(1, artifacts["a"], good))
    running = scorers(s)
    wait_for(lambda: running.http("/readyz")[0] == 200, 60, "ready")
    produce(s, s.models_topic, [(MODEL.encode(), v) for v in bad.values()], raw=True)
    records = status_records(s, 1 + len(bad))
    rejected = {r["reason_kind"]: r for r in records if r["status"] == "rejected"}
    assert set(rejected) == set(bad), records
    assert all(r["serving_version"] == 1 for r in rejected.values())
    for kind in bad:
        assert running.metric("scorer_models_rejected_total", {"reason": kind}) == 1
    assert running.scorer.slot.current.version == 1

    produce(s, s.input_topic, events[:500])
    predictions = read(s, s.output_topic, 500)
    assert_exactly_once(predictions, s, 500)
    assert {p["model_version"] for p in predictions} == {1}

    # Rollback = publishing the older version again after a newer one.
    publish(loop_settings(s), envelope(2, artifacts["b"], good))
    wait_for(lambda: running.scorer.slot.current.version == 2, 60, "v2 live")
    publish(loop_settings(s), envelope(1, artifacts["a"], good))
    wait_for(lambda: running.scorer.slot.current.version == 1, 60, "v1 live again")
    lives = [(r["model_version"], r["previous_version"]) for r in status_records(s, 3 + len(bad))
             if r["status"] == "live"]
    assert lives == [(1, None), (2, 1), (1, 2)]
    running.stop()


@pytest.mark.slow
def test_untrusted_revoked_and_tampered_models_are_refused_while_the_old_one_serves_and_a_rotated_key_is_trusted(
        settings, scorers, events, contract, artifacts, tmp_path):
    """The trust folder and its revoked.json are read per envelope: a key revoked and a key added while the scorer
    runs count at once. Each refusal is counted, reported with its kind and reason (key id and version named), and
    the old model goes on scoring."""
    leaked, stranger, rotated = Signer.generate(), Signer.generate(), Signer.generate()
    s = settings.model_copy(update={"model_trusted_keys_dir": trust(tmp_path / "trusted", SIGNER, leaked),
                                    "model_revoked_versions": [7]})
    good = contract.to_dict()
    publish(loop_settings(s), envelope(1, artifacts["a"], good))
    running = scorers(s)
    wait_for(lambda: running.http("/readyz")[0] == 200, 60, "ready")
    # Revoked while the scorer runs: no restart.
    (s.model_trusted_keys_dir / "revoked.json").write_text(json.dumps({"keys": [leaked.key_id]}))
    bad = [  # (version, kind, what the reason says, envelope)
        (3, "untrusted_key", f"{MODEL} v3 is signed with key {stranger.key_id}, which is not trusted",
         envelope(3, artifacts["b"], good, stranger).to_bytes()),
        (4, "revoked", f"{MODEL} v4 is signed with the revoked key {leaked.key_id}",
         envelope(4, artifacts["b"], good, leaked).to_bytes()),
        (5, "signature", f"bad signature for {MODEL} v5 (key {SIGNER.key_id})",
         _tampered_bytes(artifacts["b"], good, 5)),
        (6, "sha256", f"artifact sha256 mismatch for {MODEL} v6 (key {SIGNER.key_id})",
         _tampered_sha(artifacts["b"], good, artifacts["a"], 6)),
        (7, "revoked", f"{MODEL} v7 is a revoked version (signed with key {SIGNER.key_id})",
         envelope(7, artifacts["b"], good).to_bytes()),
    ]
    framing = Framing(s)
    produce(s, s.models_topic, [(MODEL.encode(), framing.frame(s.models_topic, raw)) for *_, raw in bad], raw=True)
    records = status_records(s, 1 + len(bad))
    rejected = [r for r in records if r["status"] == "rejected"]
    assert [(r["model_version"], r["reason_kind"]) for r in rejected] == [(v, kind) for v, kind, *_ in bad]
    for record, (_, _, reason, _) in zip(rejected, bad, strict=True):
        assert record["reason"].startswith(reason), record
        assert record["serving_version"] == 1 and "KEY-----" not in record["reason"]
    assert {kind: running.metric("scorer_models_rejected_total", {"reason": kind})
            for kind in ("untrusted_key", "revoked", "signature", "sha256")} == {
        "untrusted_key": 1, "revoked": 2, "signature": 1, "sha256": 1}
    assert running.scorer.slot.current.version == 1
    produce(s, s.input_topic, events[:500])
    predictions = read(s, s.output_topic, 500)
    assert_exactly_once(predictions, s, 500)
    assert {p["model_version"] for p in predictions} == {1}

    # Rotation: the new public key dropped in, the next version signed with it goes live; the old key still works.
    trust(s.model_trusted_keys_dir, rotated)
    publish(loop_settings(s), envelope(8, artifacts["b"], good, rotated))
    wait_for(lambda: running.scorer.slot.current.version == 8, 60, "v8 (rotated key) live")
    publish(loop_settings(s), envelope(9, artifacts["a"], good))
    wait_for(lambda: running.scorer.slot.current.version == 9, 60, "v9 (old key) live")
    running.stop()


def test_each_class_of_bad_event_goes_to_the_dlq_with_its_original_bytes(
        settings, scorers, events, contract, artifacts):
    s = settings
    framing = Framing(s)

    def frame(payload: bytes) -> bytes:
        return framing.frame(s.input_topic, payload)

    good_doc = orjson.loads(events[0][1])
    bad = {
        "undecodable": frame(b"\xff\xfe not json at all"),
        "schema": frame(orjson.dumps({**good_doc, "year": "2013"})),
        "range": frame(orjson.dumps({**good_doc, "distance": -5.0})),
    }
    missing = frame(orjson.dumps({k: v for k, v in good_doc.items() if k != "origin"}))
    # Bad frames: none at all, an id the registry does not know, the id of another topic's schema.
    unframed, unknown_id = events[0][1], header(2**31 - 1) + events[0][1]
    other_subject = framing.frame(s.output_topic, events[0][1])
    wire = {unframed: ("undecodable", "no Confluent framing"), unknown_id: ("schema", "unknown schema id"),
            other_subject: ("schema", f"not {s.input_topic}-value")}
    records = [*[(k, frame(v)) for k, v in events[:200]], *[(b"bad-" + k.encode(), v) for k, v in bad.items()],
               (b"bad-missing", missing), (b"bad-empty", b""), *[(b"bad-wire", v) for v in wire],
               *[(k, frame(v)) for k, v in events[200:400]]]
    publish(loop_settings(s), envelope(1, artifacts["a"], contract.to_dict()))
    running = scorers(s)
    produce(s, s.input_topic, records, raw=True)
    predictions = read(s, s.output_topic, 400)
    assert len(predictions) == 400
    dlq = read(s, s.dlq_topic, 8)
    assert len(dlq) == 8
    for d in dlq:
        DeadLetter.model_validate({k: v for k, v in d.items() if not k.startswith("_")})
    by_bytes = {base64.b64decode(d["original_b64"]): d for d in dlq}
    assert set(by_bytes) == {*bad.values(), missing, b"", *wire}
    for cls, value in bad.items():
        assert by_bytes[value]["error_class"] == cls, by_bytes[value]
    assert by_bytes[missing]["error_class"] == "schema" and "origin" in by_bytes[missing]["reason"]
    assert by_bytes[b""]["error_class"] == "undecodable"
    for value, (cls, reason) in wire.items():
        assert by_bytes[value]["error_class"] == cls and reason in by_bytes[value]["reason"], by_bytes[value]
    # Source positions point at the original record; scored and dead positions cover the input exactly.
    dead_positions = {(d["source_partition"], d["source_offset"]) for d in dlq}
    scored_positions = {(p["source_partition"], p["source_offset"]) for p in predictions}
    assert not dead_positions & scored_positions
    assert sum(high_watermarks(s).values()) == len(dead_positions | scored_positions) == len(records)
    wait_for(lambda: committed(s) == high_watermarks(s), 30, "offsets committed past the dead letters")
    assert running.metric("scorer_dead_letters_total", {"error_class": "range"}) == 1
    running.stop()


class Replica(subprocess.Popen):
    """A scorer process, and the file its output goes to (quoted when it fails)."""

    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def spawn(s: ScorerSettings, log_path) -> Replica:
    """The scorer as deployed, ``python -m scoring_service`` in a process of its own, configured by ``s``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           **{name.upper(): json.dumps(value) if isinstance(value, dict | list) else str(value)
              for name, value in s.model_dump().items() if value is not None}}
    with open(log_path, "ab") as out:
        proc = Replica([sys.executable, "-m", "scoring_service"], cwd=REPO, env=env, stdout=out,
                       stderr=subprocess.STDOUT)
    proc.log_path = Path(log_path)
    return proc


def terminate(proc: Replica) -> None:
    """SIGTERM: the replica finishes its batch, commits, leaves the group and exits 0."""
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    assert code == 0, f"exit code {code} after SIGTERM; the end of its log:\n{proc.log_tail()}"


def end(*procs: subprocess.Popen | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)


# Far longer than any wait below: partitions that reach another replica within a wait got there by a
# hand-over (a static member's return, a leave), not by a dead member's session running out.
LONG_SESSION_MS = 300_000


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exactly_once", "at_least_once"])
def test_sigkill_then_restart_under_the_same_name_resumes_at_once_and_loses_nothing(
        settings, events, contract, artifacts, tmp_path, mode):
    """exactly_once: one committed prediction per input. at_least_once: at least one per input, and the
    duplicates are only of inputs after the last commit before the kill. The replacement is the same static
    member: it gets the dead replica's partitions back without waiting for its session to time out."""
    s = settings.model_copy(update={"delivery_mode": mode, "batch_size": 200, "replica_name": "crashing",
                                    "session_timeout_ms": LONG_SESSION_MS})
    publish(loop_settings(s), envelope(1, artifacts["a"], contract.to_dict()))
    stream = events[:6000]
    produce(s, s.input_topic, stream[:1000])
    first = spawn(s, tmp_path / "scorer-1.log")
    second = None
    # The rest arrives as a live stream once the scorer is up, so the kill lands in the middle of it.
    rest = threading.Thread(target=produce, args=(s, s.input_topic,
                                                  stream[1000:], 1000.0))
    try:
        wait_for(lambda: sum(max(o, 0) for o in committed(s).values()) >= 600, 120, "first commits")
        rest.start()
        time.sleep(1.5)
        before_kill = committed(s)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert sum(max(o, 0) for o in before_kill.values()) < len(stream), "killed too late to test anything"
        second = spawn(s, tmp_path / "scorer-2.log")
        rest.join(60)
        wait_for(lambda: committed(s) == high_watermarks(s), 120, "the replacement to finish the stream")
        terminate(second)
    finally:
        end(first, second)
        if rest.is_alive():
            rest.join(60)
    assert _assignments(tmp_path / "scorer-2.log") == [{0, 1, 2}], "the replacement's partitions moved"
    predictions = read(s, s.output_topic, len(stream), settle=2.0)
    if mode == "exactly_once":
        assert_exactly_once(predictions, s, len(stream))
        return
    positions = Counter((p["source_partition"], p["source_offset"]) for p in predictions)
    assert len(positions) == len(stream), f"{len(stream) - len(positions)} input(s) without a prediction"
    duplicated = [(p, o) for (p, o), n in positions.items() if n > 1]
    assert all(o >= before_kill[p] for p, o in duplicated), "an input committed before the kill was scored again"


@pytest.mark.slow
def test_a_frozen_replica_replaced_under_its_name_is_fenced_and_writes_nothing(
        settings, events, contract, artifacts, tmp_path):
    """exactly_once: a replica frozen mid-stream (SIGSTOP) is replaced under the same name, which takes its
    partitions and its transactional id. Thawed, the zombie must not commit a record or an offset: it stops."""
    s = settings.model_copy(update={"delivery_mode": "exactly_once", "batch_size": 200, "replica_name": "zombie",
                                    "session_timeout_ms": LONG_SESSION_MS})
    publish(loop_settings(s), envelope(1, artifacts["a"], contract.to_dict()))
    stream = events[:6000]
    zombie = spawn(s, tmp_path / "zombie.log")
    replacement = None
    try:
        wait_for(lambda: _owned(tmp_path / "zombie.log") == {0, 1, 2}, 120, "the first replica to consume")
        produce(s, s.input_topic, stream[:3000], 1000.0)
        zombie.send_signal(signal.SIGSTOP)  # frozen with fetched, scored, maybe uncommitted batches
        produce(s, s.input_topic, stream[3000:4500])
        replacement = spawn(s, tmp_path / "replacement.log")
        wait_for(lambda: committed(s) == high_watermarks(s), 120, "the replacement to catch up")
        zombie.send_signal(signal.SIGCONT)
        produce(s, s.input_topic, stream[4500:], 1000.0)  # while the zombie wakes up
        assert zombie.wait(60) != 0, "the zombie went on serving"
        wait_for(lambda: committed(s) == high_watermarks(s), 60, "the replacement to finish the stream")
        assert replacement.poll() is None, "the replacement stopped"
        terminate(replacement)
    finally:
        end(zombie, replacement)
    assert "fenced" in (tmp_path / "zombie.log").read_text().lower()
    assert_exactly_once(read(s, s.output_topic, len(stream), settle=2.0), s, len(stream))


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "how"), [("exactly_once", "sigterm"), ("at_least_once", "sigterm"),
                                           ("exactly_once", "sigkill")])
def test_one_of_two_replicas_stopping_under_load_hands_its_partitions_to_the_other(
        settings, events, contract, artifacts, tmp_path, mode, how):
    """SIGTERM: the stopped replica commits, leaves the group and exits 0; the other takes every partition at once
    (the session timeout is far longer than the wait). SIGKILL, never restarted: the other takes them once the
    dead one's session (6 s here) has timed out. Either way every input has exactly one prediction."""
    s = settings.model_copy(update={"delivery_mode": mode, "batch_size": 200,
                                    "session_timeout_ms": LONG_SESSION_MS if how == "sigterm" else 6000})
    publish(loop_settings(s), envelope(1, artifacts["a"], contract.to_dict()))
    stream = events[:9000]
    a = spawn(s.model_copy(update={"replica_name": "a"}), tmp_path / "a.log")
    b = spawn(s.model_copy(update={"replica_name": "b"}), tmp_path / "b.log")
    load = threading.Thread(target=produce, args=(s, s.input_topic, stream, 1000.0))
    try:
        wait_for(lambda: _shared(tmp_path / "a.log", tmp_path / "b.log"), 120, "both replicas to consume")
        load.start()
        time.sleep(3)
        if how == "sigterm":
            terminate(a)
        else:
            a.send_signal(signal.SIGKILL)
            a.wait(10)
        load.join(60)
        wait_for(lambda: committed(s) == high_watermarks(s), 90, "the other replica to finish the stream")
        assert _owned(tmp_path / "b.log") == {0, 1, 2}
        terminate(b)
    finally:
        end(a, b)
        if load.is_alive():
            load.join(60)
    assert ("left group" in (tmp_path / "a.log").read_text()) == (how == "sigterm")
    # After a SIGKILL, the outputs past the dead replica's open transaction are readable once the broker has
    # aborted it: after the transaction timeout (DELIVERY_TIMEOUT_S, 30 s) and its next check (10 s at most).
    predictions = read(s, s.output_topic, len(stream), timeout=120, settle=2.0)
    assert_exactly_once(predictions, s, len(stream))


def _assignments(log_path) -> list[set[int]]:
    """The input partitions a subprocess replica logged as assigned to it, assignment after assignment."""
    return [{int(p) for p in re.findall(r", (\d+)\)", line)}
            for line in log_path.read_text().splitlines() if " assigned [" in line]


def _owned(log_path) -> set[int]:
    return (_assignments(log_path) or [set()])[-1]


def _shared(*logs) -> bool:
    """Each replica owns partitions of its own and together all three."""
    owned = [_owned(log) for log in logs]
    return all(owned) and sum(map(len, owned)) == 3 and set().union(*owned) == {0, 1, 2}


def test_at_least_once_commits_delivered_batches_on_the_interval_and_all_at_stop(
        settings, scorers, events, contract, artifacts):
    s = settings.model_copy(update={"commit_interval_ms": 60_000})
    publish(loop_settings(s), envelope(1, artifacts["a"], contract.to_dict()))
    running = scorers(s)
    batch = events[:2000]
    produce(s, s.input_topic, batch)
    assert_exactly_once(read(s, s.output_topic, len(batch)), s, len(batch))
    # Every prediction is delivered, yet no commit is due for a minute...
    assert set(committed(s).values()) == {-1001}
    assert running.metric("scorer_predictions_out_total") == len(batch)
    # ...and stopping commits everything delivered before the consumer leaves.
    running.stop()
    assert committed(s) == high_watermarks(s)


def test_an_at_least_once_commit_the_coordinator_refuses_is_sent_again_until_confirmed(settings, caplog,
                                                                                        monkeypatch):
    """A commit whose outcome is a failure (here a partition the broker does not have; after a coordinator's
    death, a request without an answer) stays due: the sink sends it again after RECOMMIT_S, while a confirmed
    commit is not sent again. Without it, the last offsets of a stream that has stopped might never land."""
    from scoring_service import sink as sink_module

    monkeypatch.setattr(sink_module, "RECOMMIT_S", 0.5)
    s = settings.model_copy(update={"commit_interval_ms": 0})
    sink = Sink(s)
    consumer = Consumer(consumer_config(s, "commits", on_commit=sink.on_commit))
    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"

    def settled(done) -> bool:  # commit outcomes come with the consumer's poll
        consumer.poll(0.1)
        sink.settle(consumer)
        return done()

    def resent() -> list[str]:
        return [r.getMessage() for r in caplog.records if "committing them again" in r.getMessage()]

    try:
        with caplog.at_level("WARNING", logger="scoring_service.sink"):
            sink.send([(s.output_topic, b"k", b"v")], [TopicPartition(s.input_topic, 0, 7)], consumer)
            wait_for(lambda: settled(lambda: committed(s).get(0) == 7), 30, "the offset committed")
            deadline = time.monotonic() + 2.0  # four resend intervals: a confirmed commit is not sent again
            while time.monotonic() < deadline:
                settled(lambda: None)
            assert resent() == []
            sink.send([(s.output_topic, b"k", b"v")], [TopicPartition(missing, 0, 3)], consumer)
            wait_for(lambda: settled(lambda: resent()), 30, "the refused offset sent again")
        assert missing in resent()[0]
        assert any("offset commit of" in r.getMessage() and missing in r.getMessage() for r in caplog.records)
        assert committed(s).get(0) == 7
    finally:
        consumer.close()
        sink.close()


@pytest.mark.slow
def test_two_replicas_share_the_input_and_each_follows_the_models_topic(
        settings, scorers, events, contract, artifacts):
    s = settings
    publish(loop_settings(s), envelope(1, artifacts["a"], contract.to_dict()))
    first = scorers(s)
    wait_for(lambda: first.scorer.ready()[0], 60, "first replica ready")
    stream = events[:6000]
    second: Running | None = None

    def produce_around_the_join() -> None:
        # The second replica joins mid-stream (its model loader starts TensorFlow first, which takes
        # seconds): half the stream before it is ready, half after, so both replicas get records.
        produce(s, s.input_topic, stream[:3000], 1000.0)
        wait_for(lambda: second is not None and second.scorer.ready()[0], 120, "second replica ready")
        produce(s, s.input_topic, stream[3000:], 1000.0)

    producer = threading.Thread(target=produce_around_the_join)
    producer.start()
    time.sleep(0.5)
    # The group rebalances while the first replica scores; a replica of another name is another member.
    second = Running(s.model_copy(update={"replica_name": "it-2"}), scorer_id="it-2")
    try:
        producer.join()
        predictions = read(s, s.output_topic, len(stream))
        assert_exactly_once(predictions, s, len(stream))
        assert first.metric("scorer_events_in_total") > 0 and second.metric("scorer_events_in_total") > 0
        lives = [(r["scorer_id"], r["model_version"]) for r in status_records(s, 2) if r["status"] == "live"]
        assert sorted(lives) == [("it", 1), ("it-2", 1)]
        wait_for(lambda: committed(s) == high_watermarks(s), 30, "all input committed")
    finally:
        second.stop()
        first.stop()


@pytest.fixture
def private_broker(tmp_path) -> broker.BrokerConfig:
    """A broker of this test alone, which it may stop and start again (same ports, same data)."""
    cfg = broker.BrokerConfig(data_dir=tmp_path / "kafka", port=broker.free_port(),
                              controller_port=broker.free_port(), heap="512m")
    broker.Broker(cfg, distribution.fetch()).start()
    yield cfg
    gc.collect()
    broker.Broker(cfg).stop()


@pytest.mark.slow
def test_broker_stopped_and_restarted_under_the_scorer_loses_nothing(private_broker, events, contract, artifacts,
                                                                      trusted_dir):
    bootstrap = private_broker.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bootstrap})
    u = uuid.uuid4().hex[:8]
    topics = {"sched": 3, "pred": 3, "dlq": 1, "status": 1}
    futures = admin.create_topics([NewTopic(f"{t}-{u}", n, 1) for t, n in topics.items()] + [
        NewTopic(f"models-{u}", 1, 1, config={"cleanup.policy": "compact", "max.message.bytes": str(4 << 20)})])
    for fut in futures.values():
        fut.result(30)
    s = ScorerSettings(
        use_case="flight_delay", kafka_bootstrap_servers=bootstrap, topic_names={
            "flights.scheduled": f"sched-{u}", "flights.predictions": f"pred-{u}", "flights.dlq": f"dlq-{u}",
            "models": f"models-{u}", "models.status": f"status-{u}"},
        group_id=f"scorer-{u}", model_name=MODEL, batch_size=500, batch_max_wait_ms=50, http_port=0,
        model_trusted_keys_dir=trusted_dir, session_timeout_ms=6000,
        # A dynamic member: a static one may be fenced by its own earlier join when the coordinator comes back,
        # and then stops for its orchestrator to restart it (test_a_fenced_static_member_stops_instead_of_idling).
        static_membership=False)
    wait_for(lambda: _served(s), 30, "new topics served")
    publish(loop_settings(s), envelope(1, artifacts["a"], contract.to_dict()))
    running = Running(s)
    wait_for(lambda: running.scorer.ready()[0], 120, "scorer ready")
    stream = events[:5000]
    # The producer keeps going through the outage: librdkafka buffers and retries (idempotent, no duplicates).
    producer = threading.Thread(target=produce, args=(s, s.input_topic, stream, 500.0))
    producer.start()
    try:
        time.sleep(3)
        assert broker.Broker(private_broker).stop()
        time.sleep(2)
        broker.Broker(private_broker, distribution.fetch()).start()
        producer.join()
        predictions = read(s, s.output_topic, len(stream), timeout=180)
        positions = Counter((p["source_partition"], p["source_offset"]) for p in predictions)
        inputs = high_watermarks(s)
        assert sum(inputs.values()) == len(stream)
        expected = {(p, o) for p, end in inputs.items() for o in range(end)}
        assert expected - set(positions) == set(), "inputs without a prediction"
        assert set(positions) <= expected
        wait_for(lambda: committed(s) == inputs, 60, "input offsets committed up to the end")
        assert running.thread.is_alive() and running.error is None
        assert running.http("/healthz")[0] == 200
    finally:
        running.stop()


def test_a_fenced_static_member_stops_instead_of_idling(settings, events, contract, artifacts):
    """A scorer whose static membership is taken by another consumer of the same group.instance.id is fenced: it
    reads nothing more, so it stops with the fatal error (its orchestrator restarts it) rather than stay up idle."""
    s = settings.model_copy(update={"replica_name": "taken"})
    publish(loop_settings(s), envelope(1, artifacts["a"], contract.to_dict()))
    running = Running(s)
    other = Consumer(consumer_config(s, "other"))
    try:
        wait_for(lambda: running.scorer.ready()[0], 120, "scorer ready")
        produce(s, s.input_topic, events[:200])
        other.subscribe([s.input_topic])
        wait_for(lambda: other.poll(0.1) is None and len(other.assignment()) == 3, 60, "the other member in")
        produce(s, s.input_topic, events[200:400])  # a fetch brings the fence to the scorer
        running.thread.join(60)
        assert not running.thread.is_alive(), "the fenced scorer stayed up"
        assert isinstance(running.error, KafkaException) and running.error.args[0].code() == KafkaError._FATAL
    finally:
        running.scorer.stop()
        running.thread.join(30)
        try:
            other.close()
        except KafkaException:
            pass


def _fenced(consumer: Consumer, errors: FatalErrors) -> bool:
    """Whether the consumer reported a fatal error, by its error callback or on a polled message."""
    m = consumer.poll(0.1)
    return errors.fatal is not None or (m is not None and m.error() is not None
                                        and (m.error().fatal() or m.error().code() == KafkaError._FATAL))


def test_a_static_member_fenced_before_it_stops_leaves_without_an_error(settings, caplog):
    """A coordinator's restart can fence a static member by its own earlier join; if that lands while the scorer
    stops, leaving the group finds the consumer fatal. The member is out of the group already: the stop ends
    cleanly, naming the fence, instead of failing on the unsubscribe."""
    s = settings.model_copy(update={"replica_name": "fenced"})
    first_errors, second_errors = FatalErrors(), FatalErrors()
    first = Consumer(consumer_config(s, "first", first_errors))
    second = Consumer(consumer_config(s, "second", second_errors))
    try:
        first.subscribe([s.input_topic])
        wait_for(lambda: first.poll(0.1) is None and len(first.assignment()) == 3, 60, "the first member assigned")
        second.subscribe([s.input_topic])  # the same group.instance.id: the first member is fenced
        wait_for(lambda: second.poll(0.1) is None and len(second.assignment()) == 3, 60, "the second member in")
        wait_for(lambda: _fenced(first, first_errors), 60, "the first fenced")
        with caplog.at_level("WARNING", logger="scoring_service.app"):
            leave_group(first, s)
        assert "fenced while stopping" in caplog.text
        leave_group(second, s)  # a member in good standing leaves as before
        assert not second.memberid() and second_errors.fatal is None
    finally:
        for c in (first, second):
            try:
                c.close()
            except KafkaException as e:  # a fenced consumer's close may report the fence again
                assert e.args[0].code() == KafkaError._FATAL


@pytest.mark.slow
@pytest.mark.parametrize("idempotent", [False, True], ids=["sink", "idempotent-producer"])
def test_a_frozen_broker_costs_the_at_least_once_sink_no_spinning_and_no_record(private_broker, monkeypatch,
                                                                                 idempotent):
    """While the broker does not answer (SIGSTOP), batches keep coming every 20 ms as the loop sends them: no
    librdkafka broker thread spins on records queued behind an unanswered request (an idempotent producer's does,
    taking the CPU a slow broker needs), and every batch is delivered once the broker answers again.

    Spinning is read from librdkafka's statistics, not from the clock: a broker thread's poll loop wakes for each
    request, answer and timer (tens of times here), and without sleeping when it spins (hundreds of thousands).
    The same test with idempotence turned on shows the spinning the sink's configuration avoids."""
    from scoring_service import sink as sink_module

    statistics: list[dict] = []

    def producer(config: dict) -> Producer:
        extra = {"statistics.interval.ms": 100, "stats_cb": lambda raw: statistics.append(json.loads(raw))}
        return Producer(config | extra | ({"enable.idempotence": True} if idempotent else {}))

    monkeypatch.setattr(sink_module, "Producer", producer)
    bootstrap = private_broker.bootstrap_servers
    topic = f"pred-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, 3, 1)]).values():
        fut.result(30)
    sink = Sink(ScorerSettings(use_case="flight_delay", kafka_bootstrap_servers=bootstrap, http_port=0))
    records = [(topic, str(i).encode(), b"x" * 200) for i in range(30)]  # keys spread them over 3 partitions
    sent = [sink.send(records, [], consumer=None)]
    sink.producer.flush(30)  # connected, partitions known
    pid = broker.Broker(private_broker).running_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        sink.producer.poll(0.2)  # statistics of the moment the broker froze
        before = _wakeups(statistics[-1])
        for _ in range(50):  # one batch every 20 ms for 1 s, as the loop does: each is a request of its own
            sent.append(sink.send(records, [], consumer=None))
            sink.producer.poll(0.02)
        sink.producer.poll(1.0)
        wakeups = _wakeups(statistics[-1]) - before
        assert sum(b.unacknowledged for b in sent) == 50 * len(records), "acknowledged by a frozen broker?"
    finally:
        os.kill(pid, signal.SIGCONT)
    if idempotent:
        assert wakeups > 20_000, f"{wakeups} broker-thread wakeups: the idempotent producer no longer spins here"
    else:
        assert wakeups < 2_000, f"{wakeups} broker-thread wakeups in 1.5 s while sending to a frozen broker: spinning"
    sink.producer.flush(30)
    assert all(b.unacknowledged == 0 and not b.errors for b in sent)
    sink.close()


def _wakeups(statistics: dict) -> int:
    """Poll loop wakeups of a producer's broker threads, from one of its statistics."""
    return sum(b["wakeups"] for b in statistics["brokers"].values())


def test_an_exactly_once_sink_closes_between_transactions_and_leaves_an_open_one_to_the_broker(private_broker):
    """Against a frozen broker (SIGSTOP), closing an exactly_once sink whose last transaction committed releases its
    producer at once; closing one with a transaction open returns at once too, leaving that producer (its close
    would wait for the broker to abort the transaction) and the transaction to the broker."""
    bootstrap = private_broker.bootstrap_servers
    topic = f"pred-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, 3, 1)]).values():
        fut.result(30)
    records = [(topic, str(i).encode(), b"x" * 200) for i in range(30)]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}"})
    consumer.subscribe([topic])
    consumer.poll(1)
    gc.collect()
    before = _kafka_client_threads()
    settled, still_open = (Sink(ScorerSettings(use_case="flight_delay", kafka_bootstrap_servers=bootstrap, http_port=0,
                                               delivery_mode="exactly_once", group_id=f"g-{topic}", replica_name=name))
                           for name in ("settled", "open"))
    settled.send(records, [TopicPartition(topic, 0, 30)], consumer)
    assert len(settled.settle(consumer)) == 1
    still_open.send(records, [TopicPartition(topic, 0, 60)], consumer)
    sinks = [settled, still_open]
    one_producer = (_kafka_client_threads() - before) // 2
    pid = broker.Broker(private_broker).running_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        closing = [threading.Thread(target=sink.close) for sink in sinks]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join(30)
        assert not any(thread.is_alive() for thread in closing), "close waited for a frozen broker"
        assert _kafka_client_threads() - before == one_producer, "only the open transaction's producer is left"
    finally:
        os.kill(pid, signal.SIGCONT)
    still_open.producer.abort_transaction(30)
    still_open.producer.close()
    consumer.close()


def _served(s: ScorerSettings) -> bool:
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers, "group.id": "probe"})
    try:
        return all(c.list_topics(t, timeout=5).topics[t].error is None
                   for t in (s.models_topic, s.input_topic))
    finally:
        c.close()
