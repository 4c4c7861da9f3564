"""The model watcher thread: follows the compacted `models` topic and swaps the serving model.

At start it reads the topic from the beginning up to the end offsets of that moment; the newest envelope
(by offset) of our model name that passes every check goes live, so a rollback (an older version published
again) wins like any other publication. It then follows the topic: each new envelope is verified (HMAC,
SHA-256), its feature contract checked against the input topic, the ``.keras`` bytes loaded with
``safe_mode=True`` and a numpy pass derived from it (both in the model loader's child process, so Keras never
holds this process's GIL), warmed up on a canary batch against Keras's own output, and only then swapped
in, as one reference the scoring loop reads once per batch. None of this runs on the scoring thread.

A refused envelope leaves the serving model in place; it is logged, counted and reported on the status
topic, as is each version that goes live (a DAG waits for that record). The watcher is in no consumer
group: every replica assigns the partitions itself and keeps no offsets, so each one sees every version.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from ml.errors import EnvelopeRejected
from ml.publish import ModelEnvelope, verify_envelope
from scoring_service import model_checks
from scoring_service.config import ScorerSettings
from scoring_service.inference import NumpyForward, UnsupportedModel
from scoring_service.model_loader import LoaderFailed, ModelLoader
from scoring_service.model_checks import ModelRefused
from scoring_service.ops import Metrics
from scoring_service.scoring import ServingModel
from scoring_service.use_cases import ScoringUseCase

log = logging.getLogger(__name__)

STATUS_LIVE = "live"
STATUS_REJECTED = "rejected"
TOPIC_WAIT_LOG_S = 30.0

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

    def __init__(self, settings: ScorerSettings, use_case: ScoringUseCase, slot: ModelSlot, metrics: Metrics,
                 scorer_id: str) -> None:
        super().__init__(name="model-watcher", daemon=True)
        self.settings = settings
        self.use_case = use_case
        self.slot = slot
        self.metrics = metrics
        self.scorer_id = scorer_id
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._key = settings.signing_key()
        self._producer: Producer | None = None
        self.loader = ModelLoader(settings.model_load_timeout_s)

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # reported through /healthz and the scoring loop, which stops the process
            self.error = e
            log.exception("model watcher stopped")

    def _run(self) -> None:
        self.loader.start()
        try:
            self._follow()
        finally:
            self.loader.close()

    def _follow(self) -> None:
        topic = self.settings.topic_models
        consumer = Consumer({
            "bootstrap.servers": self.settings.kafka_bootstrap_servers,
            # Partitions are assigned, nothing is committed: the client requires a group id, no group is joined.
            "group.id": f"model-watcher-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # The topic is idle almost always: a short long-poll bounds how late a new version is seen.
            "fetch.wait.max.ms": 100,
        })
        self._producer = Producer({"bootstrap.servers": self.settings.kafka_bootstrap_servers,
                                   "enable.idempotence": True})
        try:
            partitions = self._wait_for_topic(consumer)
            if partitions is None:
                return
            # End offsets fixed now: everything before them is the history to choose the current model from.
            pending = set()
            for p in partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                if high > low:
                    pending.add(p)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            history: list[tuple[ModelEnvelope, EnvelopeAt]] = []
            while pending and not self._stopping.is_set():
                for msg in consumer.consume(100, 0.5):
                    if self._is_eof(msg):
                        pending.discard(msg.partition())
                    elif (envelope := self._verify(msg)) is not None:
                        history.append((envelope, EnvelopeAt.of(msg)))
            log.info("read %d valid envelope(s) of %s from %s at start", len(history), self.settings.model_name,
                     topic)
            # Newest first: an older version serves only when every newer one is refused.
            for envelope, at in reversed(history):
                if self._admit(envelope, at):
                    break
            while not self._stopping.is_set():
                # poll, not consume(n): it returns on the first record instead of waiting for n of them.
                msg = consumer.poll(0.5)
                if msg is not None and not self._is_eof(msg) and (envelope := self._verify(msg)) is not None:
                    self._admit(envelope, EnvelopeAt.of(msg))
        finally:
            consumer.close()
            self._producer.flush(10)

    def _wait_for_topic(self, consumer: Consumer) -> list[int] | None:
        """The partitions of the models topic, waiting for it to be created; None if stopped first."""
        topic, logged = self.settings.topic_models, 0.0
        while not self._stopping.is_set():
            metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if metadata is not None and metadata.error is None and metadata.partitions:
                return sorted(metadata.partitions)
            if time.monotonic() - logged > TOPIC_WAIT_LOG_S:
                log.warning("model topic %s does not exist yet: waiting for it (no model can serve)", topic)
                logged = time.monotonic()
            self._stopping.wait(1.0)
        return None

    def _is_eof(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() == KafkaError._PARTITION_EOF:
            return True
        if err.fatal():
            raise KafkaException(err)
        log.warning("reading %s: %s", self.settings.topic_models, err)
        return True  # not an envelope; librdkafka retries transient errors itself

    def _verify(self, msg: Message) -> ModelEnvelope | None:
        """The envelope of a record, if it is a valid one for our model name; refusals are reported."""
        at = EnvelopeAt.of(msg)
        if msg.value() is None:  # a tombstone: compaction's delete marker, not a model
            return None
        if msg.key() is not None and msg.key() != self.settings.model_name.encode():
            log.debug("skipping %s[%d]@%d: key %r is another model", at.topic, at.partition, at.offset, msg.key())
            return None
        try:
            envelope = verify_envelope(msg.value(), self._key)
        except EnvelopeRejected as e:
            self._reject(at, e.kind, e.reason, _claimed_version(msg.value()))
            return None
        if envelope.model_name != self.settings.model_name:
            return None
        return envelope

    def _admit(self, envelope: ModelEnvelope, at: EnvelopeAt) -> bool:
        """Load, check and swap in ``envelope``; False (and reported) when it is refused."""
        current = self.slot.current
        if current is not None and (current.version, current.artifact_sha256) == (
                envelope.model_version, envelope.artifact_sha256):
            log.info("%s v%d at %s[%d]@%d is already serving", envelope.model_name, envelope.model_version,
                     at.topic, at.partition, at.offset)
            return True
        started = time.perf_counter()
        try:
            model = self._load(envelope)
        except ModelRefused as e:
            self._reject(at, e.kind, e.reason, envelope.model_version)
            return False
        previous = self.slot.swap(model)
        load_ms = (time.perf_counter() - started) * 1000
        # Publication to live: what a DAG waiting for the status record sees.
        swap_ms = max(0.0, time.time() * 1000 - at.timestamp_ms)
        self.metrics.swaps.inc()
        self.metrics.model_version.labels(model.name).set(model.version)
        log.info("model %s v%d live (was %s) from %s[%d]@%d: loaded and warmed up in %.0f ms, %.0f ms after "
                 "publication, contract %s", model.name, model.version,
                 f"v{previous.version}" if previous else "none", at.topic, at.partition, at.offset, load_ms,
                 swap_ms, model.contract.fingerprint)
        self._report(STATUS_LIVE, at, model.version, reason="", kind="", extra={
            "previous_version": previous.version if previous else None, "load_ms": round(load_ms, 1),
            "swap_ms": round(swap_ms, 1)})
        return True

    def _load(self, envelope: ModelEnvelope) -> ServingModel:
        """The envelope's model ready to serve; raises ModelRefused naming the check that failed."""
        contract = self.use_case.parse_contract(envelope.feature_contract)
        artifact = envelope.artifact()
        limit = self.settings.max_model_bytes
        try:
            with zipfile.ZipFile(io.BytesIO(artifact)) as archive:
                unpacked = sum(info.file_size for info in archive.infolist())
        except zipfile.BadZipFile as e:
            raise ModelRefused("load", f"artifact is not a .keras archive: {e}") from e
        if max(len(artifact), unpacked) > limit:
            raise ModelRefused("oversized", f"artifact unpacks to {unpacked} bytes, limit {limit} "
                                            "(MAX_MODEL_BYTES)")
        try:
            forward = NumpyForward.from_plan(self.loader.load(artifact))
            model_checks.warm_up(self.use_case, contract, forward, self.loader.keras_output,
                                 self.settings.canary_rows)
        except LoaderFailed as e:
            raise ModelRefused(e.kind, e.reason) from e
        except UnsupportedModel as e:
            raise ModelRefused("architecture", str(e)) from e
        return ServingModel(name=envelope.model_name, version=envelope.model_version, contract=contract,
                            forward=forward, artifact_sha256=envelope.artifact_sha256)

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
        value = orjson.dumps({
            "schema_version": 1, "status": status, "model_name": self.settings.model_name,
            "model_version": version, "reason_kind": kind, "reason": reason, "scorer_id": self.scorer_id,
            "envelope_topic": at.topic, "envelope_partition": at.partition, "envelope_offset": at.offset,
            "at": datetime.now(UTC).isoformat(), **extra})
        errors: list[KafkaError] = []
        self._producer.produce(self.settings.topic_models_status, key=self.settings.model_name.encode(),
                               value=value, on_delivery=lambda err, _msg: err and errors.append(err))
        if self._producer.flush(10) or errors:
            log.error("status record %s v%s not delivered to %s: %s", status, version,
                      self.settings.topic_models_status, errors or "flush timed out")


def _claimed_version(raw: bytes) -> int | None:
    """The version a refused envelope claims to be, for the report; None when unreadable."""
    try:
        version = orjson.loads(raw).get("model_version")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return version if isinstance(version, int) else None
