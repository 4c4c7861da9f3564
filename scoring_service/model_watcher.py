"""The model watcher thread: follows the compacted `models` topic and swaps the serving model.

At start it reads the topic from the beginning up to the end offsets of that moment; the newest envelope
(by offset) of our model name that passes every check goes live, so a rollback (an older version published
again) wins like any other publication. It then follows the topic: each new record's frame is checked (a schema
id of the topic's subject, ``ml.wire``), its envelope verified (the Ed25519 signature of a trusted key, neither key
nor version revoked, SHA-256), its fitted preprocessing checked against the input topic, the ``.keras`` bytes
loaded with ``safe_mode=True`` and a numpy pass derived from it, warmed up on a canary batch against Keras's own
output (all of it in the model loader's child process, so none of that work holds this process's GIL), and only
then swapped in, as one reference the scoring loop reads once per batch.

A refused envelope leaves the serving model in place; it is logged, counted and reported on the status
topic, as is each version that goes live (a DAG waits for that record). The watcher is in no consumer
group: every replica assigns the partitions itself and keeps no offsets, so each one sees every version.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from ml.client_ids import MODEL_WATCHER_GROUP
from ml.contracts import ModelStatus
from ml.errors import SchemaRegistryUnavailable, SigningKeyError
from ml.numpy_forward import NumpyForward
from ml.topic_history import TopicHistory
from ml.use_cases import UseCase
from ml.wire import Framing, TopicReader, WireError
from scoring_service.config import ScorerSettings
from scoring_service.model_checks import ModelRefused
from scoring_service.model_loader import AdmissionPolicy, ModelLoader
from scoring_service.ops import Metrics
from scoring_service.scoring import ServingModel

log = logging.getLogger(__name__)

STATUS_LIVE = "live"
STATUS_REJECTED = "rejected"
TOPIC_WAIT_LOG_S = 30.0
REGISTRY_RETRY_S = 2.0

@dataclass(frozen=True)
class EnvelopeAt:
    """Where an envelope record sits on the models topic, and when it was produced (ms since the epoch)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    @classmethod
    def of(cls, msg: Message) -> EnvelopeAt:
        return cls(msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1])


class ModelSlot:
    """The single reference to the serving model. The scoring loop reads ``current`` once per batch, so a
    batch is scored by exactly one version; assigning a Python attribute is atomic."""

    def __init__(self) -> None:
        self._current: ServingModel | None = None
        self.loaded = threading.Event()

    @property
    def current(self) -> ServingModel | None:
        return self._current

    def swap(self, model: ServingModel) -> ServingModel | None:
        previous, self._current = self._current, model
        self.loaded.set()
        return previous


class ModelWatcher(threading.Thread):
    """Follows the models topic and swaps ``slot``; ``error`` holds what stopped it, if anything did."""

    def __init__(self, settings: ScorerSettings, use_case: UseCase, slot: ModelSlot, metrics: Metrics,
                 scorer_id: str) -> None:
        super().__init__(name="model-watcher", daemon=True)
        self.settings = settings
        self.use_case = use_case
        self.slot = slot
        self.metrics = metrics
        self.scorer_id = scorer_id
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._policy = AdmissionPolicy(model_name=settings.model_name, use_case=use_case.name,
                                       trust=settings.trust_store(), max_model_bytes=settings.max_model_bytes,
                                       canary_rows=settings.canary_rows)
        self._producer: Producer | None = None
        self.loader = ModelLoader(settings.model_load_timeout_s)
        self._envelopes = TopicReader(settings, settings.models_topic)
        self._status_frame = Framing(settings).header(settings.status_topic)

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # reported through /healthz and the scoring loop, which stops the process
            self.error = e
            log.exception("model watcher stopped")

    def _run(self) -> None:
        self._log_trust()
        self.loader.start()
        try:
            self._follow()
        finally:
            self.loader.close()

    def _log_trust(self) -> None:
        """One line at start naming the trusted key ids and the revocations (never a key); a warning when no key
        is trusted, since every model is then refused."""
        try:
            trusted = self._policy.trust.read()
        except SigningKeyError as e:
            log.warning("model trust store: %s: every model is refused until it is fixed", e)
            return
        if not trusted.keys:
            log.warning("no trusted model signing key in %s: every model is refused until a public key "
                        "<key id>.pem is put there", trusted.source)
            return
        log.info("model envelopes are checked against %s; revoked keys %s, revoked versions %s", trusted.describe(),
                 sorted(trusted.revoked_keys), sorted(trusted.revoked_versions))

    def _follow(self) -> None:
        topic = self.settings.models_topic
        consumer = Consumer(self.settings.kafka_config({
            # Partitions are assigned, nothing is committed: the client requires a group id, no group is joined.
            "group.id": f"{MODEL_WATCHER_GROUP}{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # The topic is idle almost always: a short long-poll bounds how late a new version is seen.
            "fetch.wait.max.ms": 100,
        }))
        self._producer = Producer(self.settings.kafka_config({"acks": "all", "enable.idempotence": True}))
        try:
            partitions = self._wait_for_topic(consumer)
            if partitions is None:
                return
            # End offsets fixed now: everything before them is the history to choose the current model from.
            history = TopicHistory.open(consumer, topic, partitions, timeout_s=30)
            candidates = [msg for msg in history.records(stop=self._stopping.is_set)
                          if not self._is_event(msg) and self._may_be_ours(msg)]
            if history.pending:  # stopped
                return
            log.info("read %d record(s) that may be %s from %s up to end offsets %s at start", len(candidates),
                     self.settings.model_name, topic, history.ends)
            # Newest first: an older version serves only when every newer one is refused.
            for msg in reversed(candidates):
                if self._admit(msg):
                    break
            history.follow_from_ends()
            while not self._stopping.is_set():
                msg = consumer.poll(0.5)
                if msg is not None and not self._is_event(msg) and self._may_be_ours(msg):
                    self._admit(msg)
        finally:
            consumer.close()
            self._producer.flush(10)

    def _wait_for_topic(self, consumer: Consumer) -> list[int] | None:
        """The partitions of the models topic, waiting for it to be created; None if stopped first."""
        topic, logged = self.settings.models_topic, 0.0
        while not self._stopping.is_set():
            metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if metadata is not None and metadata.error is None and metadata.partitions:
                return sorted(metadata.partitions)
            if time.monotonic() - logged > TOPIC_WAIT_LOG_S:
                log.warning("model topic %s does not exist yet: waiting for it (no model can serve)", topic)
                logged = time.monotonic()
            self._stopping.wait(1.0)
        return None

    def _is_event(self, msg: Message) -> bool:
        """True for an event rather than a record: a partition's end, or an error (fatal ones raise)."""
        err = msg.error()
        if err is None:
            return False
        if err.code() == KafkaError._PARTITION_EOF:
            return True
        if err.fatal():
            raise KafkaException(err)
        log.warning("reading %s: %s", self.settings.models_topic, err)
        return True  # not an envelope; librdkafka retries transient errors itself

    def _may_be_ours(self, msg: Message) -> bool:
        """False for a tombstone (compaction's delete marker) and for a record keyed with another model name."""
        if msg.value() is None:
            return False
        if msg.key() is not None and msg.key() != self.settings.model_name.encode():
            log.debug("skipping %s[%d]@%d: key %r is another model", msg.topic(), msg.partition(), msg.offset(),
                      msg.key())
            return False
        return True

    def _payload(self, msg: Message) -> bytes | None:
        """The envelope in the record's frame, None when stopped; raises WireError for a bad frame. Waits out a
        registry that does not answer: a valid model must not be refused for that."""
        while not self._stopping.is_set():
            try:
                return self._envelopes.payload(msg.value())
            except SchemaRegistryUnavailable as e:
                log.warning("cannot check the frame of %s[%d]@%d yet: %s", msg.topic(), msg.partition(),
                            msg.offset(), e)
                self._stopping.wait(REGISTRY_RETRY_S)
        return None

    def _admit(self, msg: Message) -> bool:
        """Check the record's frame, then its envelope in the loader child, and swap it in; False when it is
        not a model of ours that serves (refusals are reported)."""
        at, current = EnvelopeAt.of(msg), self.slot.current
        started = time.perf_counter()
        try:
            raw = self._payload(msg)
        except WireError as e:
            self._reject(at, e.kind, e.reason, None)
            return False
        if raw is None:
            return False
        try:
            admission = self.loader.admit(raw, self._policy, current and (current.version, current.artifact_sha256))
        except ModelRefused as e:
            self._reject(at, e.kind, e.reason, e.version if e.version is not None else _claimed_version(raw))
            return False
        if admission is None:  # a keyless record of another model
            return False
        if admission.plan is None:
            log.info("%s v%d at %s[%d]@%d is already serving", admission.model_name, admission.model_version,
                     at.topic, at.partition, at.offset)
            return True
        model = ServingModel(name=admission.model_name, version=admission.model_version,
                             preprocessing=admission.preprocessing, forward=NumpyForward.from_plan(admission.plan),
                             artifact_sha256=admission.artifact_sha256)
        previous = self.slot.swap(model)
        load_ms = (time.perf_counter() - started) * 1000
        # Publication to live: what a DAG waiting for the status record sees.
        swap_ms = max(0.0, time.time() * 1000 - at.timestamp_ms)
        self.metrics.swaps.inc()
        self.metrics.model_version.labels(model.name).set(model.version)
        log.info("model %s v%d live (was %s) from %s[%d]@%d: loaded and warmed up in %.0f ms, %.0f ms after "
                 "publication, preprocessing %s", model.name, model.version,
                 f"v{previous.version}" if previous else "none", at.topic, at.partition, at.offset, load_ms,
                 swap_ms, model.preprocessing.fingerprint)
        self._report(STATUS_LIVE, at, model.version, reason="", kind="", extra={
            "previous_version": previous.version if previous else None, "load_ms": round(load_ms, 1),
            "swap_ms": round(swap_ms, 1)})
        return True

    def _reject(self, at: EnvelopeAt, kind: str, reason: str, version: int | None) -> None:
        self.metrics.rejected.labels(kind).inc()
        current = self.slot.current
        log.warning("refused model envelope v%s at %s[%d]@%d (%s): %s; still serving %s", version, at.topic,
                    at.partition, at.offset, kind, reason, f"v{current.version}" if current else "no model")
        self._report(STATUS_REJECTED, at, version, reason=reason, kind=kind,
                     extra={"serving_version": current.version if current else None})

    def _report(self, status: str, at: EnvelopeAt, version: int | None, *, reason: str, kind: str,
                extra: dict) -> None:
        """One record on the status topic (key = model name); a failure to report is logged, not fatal."""
        record = ModelStatus(
            status=status, model_name=self.settings.model_name, model_version=version, reason_kind=kind,
            reason=reason, scorer_id=self.scorer_id, envelope_topic=at.topic, envelope_partition=at.partition,
            envelope_offset=at.offset, at=datetime.now(UTC), **extra)
        value = self._status_frame + record.model_dump_json().encode()
        errors: list[KafkaError] = []
        self._producer.produce(self.settings.status_topic, key=self.settings.model_name.encode(),
                               value=value, on_delivery=lambda err, _msg: err and errors.append(err))
        if self._producer.flush(10) or errors:
            log.error("status record %s v%s not delivered to %s: %s", status, version,
                      self.settings.status_topic, errors or "flush timed out")


def _claimed_version(raw: bytes) -> int | None:
    """The version a refused envelope claims to be, for the report; None when unreadable."""
    try:
        version = orjson.loads(raw).get("model_version")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return version if isinstance(version, int) else None
