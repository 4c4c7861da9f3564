"""The model watcher thread: follows the compacted `models` topic and swaps the serving model.

At start it reads the topic from the beginning up to the end offsets of that moment; the newest envelope
(by offset) of our model name that passes every check goes live, so a rollback (an older version published
again) wins like any other publication. It then follows the topic: each new record's frame is checked (a schema
id of the topic's subject, ``ml.wire``), its envelope verified (the Ed25519 signature of a trusted key, neither key
nor version revoked, SHA-256), its fitted preprocessing checked against the input topic, the ``.keras`` bytes
loaded with ``safe_mode=True`` and a numpy pass derived from it, warmed up on a canary batch against Keras's own
output (all of it in the model loader's child process, so none of that work holds this process's GIL), and only
then swapped in, as one reference the scoring loop reads once per batch.

A shadow (an envelope signed with the stage "shadow", keyed ``<model name>@shadow``) goes through the very same
checks and into the slot's shadow place, beside the champion: the scoring loop scores every batch with both. A
tombstone on the shadow key clears it; a champion envelope of the shadow's version and SHA-256 goes live with the
model already loaded, and clears the shadow. At start, the newest record of each key decides (the champion's with
the fallback above; the shadow's alone: a tombstone or a refusal there means no shadow).

A refused envelope leaves the serving models in place (a refused shadow never touches the champion); it is
logged, counted and reported on the status topic, as is each version that goes live ("live", "shadow") and each
shadow cleared ("retired"); a DAG waits for those records. The watcher is in no consumer group: every replica
assigns the partitions itself and keeps no offsets, so each one sees every version.
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
from ml.publish import CHAMPION, REASON_HEADER, SHADOW, Stage, shadow_key
from ml.topic_history import TopicHistory
from ml.use_cases import UseCase
from ml.wire import Framing, TopicReader, WireError
from scoring_service.config import ScorerSettings
from scoring_service.model_checks import ModelRefused
from scoring_service.model_loader import Admission, AdmissionPolicy, ModelLoader
from scoring_service.ops import Metrics
from scoring_service.scoring import ServingModel

log = logging.getLogger(__name__)

STATUS_LIVE = "live"
STATUS_REJECTED = "rejected"
STATUS_SHADOW = "shadow"
STATUS_RETIRED = "retired"
TOPIC_WAIT_LOG_S = 30.0
REGISTRY_RETRY_S = 2.0
STATUS_DELIVERY_S = 10.0  # how long a status record may take to be acknowledged before it is reported lost


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


@dataclass(frozen=True)
class Serving:
    """The models of a batch: the champion (None before the first one) and the shadow (None: no shadow)."""

    current: ServingModel | None = None
    shadow: ServingModel | None = None


class ModelSlot:
    """The single reference to the serving models, champion and shadow together. The scoring loop reads
    ``serving`` once per batch, so a batch is scored by exactly one champion version (and at most one shadow);
    assigning a Python attribute is atomic, and the model watcher is the only writer."""

    def __init__(self) -> None:
        self._serving = Serving()
        self.loaded = threading.Event()

    @property
    def serving(self) -> Serving:
        return self._serving

    @property
    def current(self) -> ServingModel | None:
        return self._serving.current

    @property
    def shadow(self) -> ServingModel | None:
        return self._serving.shadow

    def swap(self, model: ServingModel) -> ServingModel | None:
        """Make ``model`` the champion; the previous champion."""
        previous, self._serving = self._serving.current, Serving(model, self._serving.shadow)
        self.loaded.set()
        return previous

    def promote(self, model: ServingModel) -> ServingModel | None:
        """Make ``model`` (the shadow's version) the champion and clear the shadow, in one step: no batch is scored
        by it as champion and shadow at once. The previous champion."""
        previous, self._serving = self._serving.current, Serving(model, None)
        self.loaded.set()
        return previous

    def swap_shadow(self, model: ServingModel) -> ServingModel | None:
        """Make ``model`` the shadow; the previous shadow."""
        previous, self._serving = self._serving.shadow, Serving(self._serving.current, model)
        return previous

    def clear_shadow(self) -> ServingModel | None:
        """No shadow any more; the one cleared."""
        previous, self._serving = self._serving.shadow, Serving(self._serving.current, None)
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
        # Set once the topic's history has chosen the champion and the shadow: consuming waits for both, so that
        # after a restart the first events are shadowed too.
        self.started = threading.Event()
        self._stopping = threading.Event()
        self._policy = AdmissionPolicy(model_name=settings.model_name, use_case=use_case.name,
                                       trust=settings.trust_store(), max_model_bytes=settings.max_model_bytes,
                                       canary_rows=settings.canary_rows)
        self._producer: Producer | None = None
        self.loader = ModelLoader(settings.model_load_timeout_s)
        self._envelopes = TopicReader(settings, settings.models_topic)
        self._status_frame = Framing(settings).header(settings.status_topic)
        self._keys = {CHAMPION: settings.model_name.encode(), SHADOW: shadow_key(settings.model_name).encode()}
        self._consumer: Consumer | None = None

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
        self._producer = self._status_producer()
        self._consumer = consumer
        try:
            partitions = self._wait_for_topic(consumer)
            if partitions is None:
                return
            # End offsets fixed now: everything before them is the history to choose the current models from.
            history = TopicHistory.open(consumer, topic, partitions, timeout_s=30)
            records: dict[Stage, list[Message]] = {CHAMPION: [], SHADOW: []}
            for msg in history.records(stop=self._stopping.is_set):
                stage = None if self._is_event(msg) else self._stage_of(msg)
                if stage is not None:
                    records[stage].append(msg)
            if history.pending:  # stopped
                return
            champions = [msg for msg in records[CHAMPION] if msg.value() is not None]  # compaction's deletes aside
            log.info("read %d record(s) that may be %s's champion and %d of its shadow key from %s up to end offsets "
                     "%s at start", len(champions), self.settings.model_name, len(records[SHADOW]), topic,
                     history.ends)
            # Newest first: an older version serves only when every newer one is refused.
            for msg in reversed(champions):
                if self._admit(msg, CHAMPION):
                    break
            # The shadow key's newest record alone decides: a tombstone (retired) or a refused envelope, no shadow.
            if records[SHADOW] and records[SHADOW][-1].value() is not None:
                self._admit(records[SHADOW][-1], SHADOW)
            self.started.set()
            history.follow_from_ends()
            while not self._stopping.is_set():
                msg = consumer.poll(0.5)
                stage = None if msg is None or self._is_event(msg) else self._stage_of(msg)
                if stage is None:
                    continue
                if msg.value() is not None:
                    self._admit(msg, stage)
                elif stage == SHADOW:
                    self._retire(msg)
        finally:
            consumer.close()
            self._close_producer()

    def _status_producer(self) -> Producer:
        """The producer of the status records: acknowledged by every in-sync replica, without duplicates."""
        return Producer(self.settings.kafka_config({"acks": "all", "enable.idempotence": True}))

    def _close_producer(self) -> None:
        """Deliver the status records still queued (up to ``STATUS_DELIVERY_S``), drop the rest, and release the
        producer, so a stopped watcher leaves no client retrying a broker."""
        left = self._producer.flush(STATUS_DELIVERY_S)
        if left:
            log.warning("%d status record(s) for %s not delivered before stopping: dropped", left,
                        self.settings.status_topic)
            self._producer.purge()
        self._producer.close()

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

    def _stage_of(self, msg: Message) -> Stage | None:
        """The stage a record of our model is keyed as (no key: a champion's, as before stages); None for a record
        keyed with another model name."""
        key = msg.key()
        if key is None or key == self._keys[CHAMPION]:
            return CHAMPION
        if key == self._keys[SHADOW]:
            return SHADOW
        log.debug("skipping %s[%d]@%d: key %r is another model", msg.topic(), msg.partition(), msg.offset(), key)
        return None

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

    def _admit(self, msg: Message, stage: Stage) -> bool:
        """Check the record's frame, then its envelope in the loader child, and take it live as ``stage``; False
        when it is not a model of ours that serves (refusals are reported)."""
        at, serving = EnvelopeAt.of(msg), self.slot.serving
        started = time.perf_counter()
        try:
            raw = self._payload(msg)
        except WireError as e:
            self._reject(at, stage, e.kind, e.reason, None)
            return False
        if raw is None:
            return False
        loaded = [(m.version, m.artifact_sha256) for m in (serving.current, serving.shadow) if m is not None]
        try:
            admission = self.loader.admit(raw, self._policy, loaded, stage=stage)
        except ModelRefused as e:
            self._reject(at, stage, e.kind, e.reason, e.version if e.version is not None else _claimed_version(raw))
            return False
        if admission is None:  # a keyless record of another model
            return False
        if stage == SHADOW:
            return self._go_shadow(admission, at, serving, started)
        return self._go_live(admission, at, serving, started)

    def _model(self, admission: Admission) -> ServingModel:
        return ServingModel(name=admission.model_name, version=admission.model_version,
                            preprocessing=admission.preprocessing, forward=NumpyForward.from_plan(admission.plan),
                            artifact_sha256=admission.artifact_sha256)

    def _go_live(self, admission: Admission, at: EnvelopeAt, serving: Serving, started: float) -> bool:
        """Make an admitted champion envelope the serving model. The shadow's version goes live with the shadow's
        loaded model when the SHA-256 is the same, and leaves the shadow place either way."""
        ident, shadow = (admission.model_version, admission.artifact_sha256), serving.shadow
        if admission.plan is None and _ident(serving.current) == ident:
            log.info("%s v%d at %s[%d]@%d is already serving", admission.model_name, admission.model_version,
                     at.topic, at.partition, at.offset)
            return True
        if admission.plan is None and _ident(shadow) != ident:  # the loader skips only what the slot holds
            log.warning("%s v%d at %s[%d]@%d: not loaded, yet neither serving nor in shadow", admission.model_name,
                        admission.model_version, at.topic, at.partition, at.offset)
            return False
        model = shadow if admission.plan is None else self._model(admission)
        promoted = shadow is not None and shadow.version == model.version
        previous = self.slot.promote(model) if promoted else self.slot.swap(model)
        load_ms = (time.perf_counter() - started) * 1000
        # Publication to live: what a DAG waiting for the status record sees.
        swap_ms = max(0.0, time.time() * 1000 - at.timestamp_ms)
        self.metrics.swaps.inc()
        self.metrics.model_version.labels(model.name).set(model.version)
        log.info("model %s v%d live (was %s) from %s[%d]@%d: %s in %.0f ms, %.0f ms after publication, "
                 "preprocessing %s", model.name, model.version, f"v{previous.version}" if previous else "none",
                 at.topic, at.partition, at.offset, "the shadow's model, not loaded again" if model is shadow else
                 "loaded and warmed up", load_ms, swap_ms, model.preprocessing.fingerprint)
        self._report(STATUS_LIVE, at, model.version, CHAMPION, reason="", kind="", extra={
            "previous_version": previous.version if previous else None, "load_ms": round(load_ms, 1),
            "swap_ms": round(swap_ms, 1)})
        if promoted:
            self.metrics.shadow_model_version.labels(model.name).set(0)
            reason = f"v{model.version} went live as the champion" + (
                "" if model is shadow else " (other artifact bytes: loaded again)")
            log.info("shadow %s v%d cleared: %s", model.name, shadow.version, reason)
            self._report(STATUS_RETIRED, at, shadow.version, SHADOW, reason=reason, kind="promoted",
                         extra={"serving_version": model.version})
        return True

    def _go_shadow(self, admission: Admission, at: EnvelopeAt, serving: Serving, started: float) -> bool:
        """Make an admitted shadow envelope the shadow model, unless its version is the champion's already."""
        current, version = serving.current, admission.model_version
        if current is not None and current.version == version:
            log.info("shadow envelope of %s v%d at %s[%d]@%d: that version is the champion already, not shadowed",
                     admission.model_name, version, at.topic, at.partition, at.offset)
            return False
        if _ident(serving.shadow) == (version, admission.artifact_sha256):
            log.info("%s v%d at %s[%d]@%d is already the shadow", admission.model_name, version, at.topic,
                     at.partition, at.offset)
            return True
        if admission.plan is None:  # the loader skips only what the slot holds
            return False
        problem = self._shadow_topic_problem()
        if problem is not None:
            self._reject(at, SHADOW, "shadow_topic", problem, version)
            return False
        model = self._model(admission)
        previous = self.slot.swap_shadow(model)
        load_ms = (time.perf_counter() - started) * 1000
        swap_ms = max(0.0, time.time() * 1000 - at.timestamp_ms)
        self.metrics.shadow_model_version.labels(model.name).set(model.version)
        log.info("shadow model %s v%d live beside %s (shadow before: %s) from %s[%d]@%d: loaded and warmed up in "
                 "%.0f ms, %.0f ms after publication, its predictions to %s", model.name, model.version,
                 f"v{current.version}" if current else "no champion yet", f"v{previous.version}" if previous else
                 "none", at.topic, at.partition, at.offset, load_ms, swap_ms, self.settings.shadow_topic)
        self._report(STATUS_SHADOW, at, model.version, SHADOW, reason="", kind="", extra={
            "previous_version": previous.version if previous else None, "load_ms": round(load_ms, 1),
            "swap_ms": round(swap_ms, 1), "serving_version": current.version if current else None})
        return True

    def _shadow_topic_problem(self) -> str | None:
        """Why the shadow's predictions could not be written (its topic missing or hidden from this scorer), or
        None. Such a shadow is refused: a record to a missing topic would fail the champion's batch with it."""
        topic = self.settings.shadow_topic
        try:
            found = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
        except KafkaException as e:
            return f"cannot check the shadow predictions topic {topic}: {e}"
        if found is None or found.error is not None or not found.partitions:
            why = found.error.str() if found is not None and found.error is not None else "no partitions"
            return (f"the shadow predictions topic {topic} cannot be written ({why}): create it with "
                    "`python -m ml topics`, grant the scorer role write on it (`python -m ml acls apply`)")
        return None

    def _retire(self, msg: Message) -> None:
        """A tombstone on the shadow key: clear the shadow, if there is one."""
        at, previous = EnvelopeAt.of(msg), self.slot.clear_shadow()
        if previous is None:
            log.info("tombstone on %s at %s[%d]@%d: no shadow to clear", self._keys[SHADOW].decode(), at.topic,
                     at.partition, at.offset)
            return
        given = dict(msg.headers() or []).get(REASON_HEADER)
        reason = given.decode(errors="replace") if given else f"tombstone on {self._keys[SHADOW].decode()}"
        current = self.slot.current
        self.metrics.shadow_model_version.labels(previous.name).set(0)
        log.info("shadow %s v%d retired at %s[%d]@%d (%s); %s serving", previous.name, previous.version, at.topic,
                 at.partition, at.offset, reason, f"v{current.version}" if current else "no model")
        self._report(STATUS_RETIRED, at, previous.version, SHADOW, reason=reason, kind="tombstone",
                     extra={"serving_version": current.version if current else None})

    def _reject(self, at: EnvelopeAt, stage: Stage, kind: str, reason: str, version: int | None) -> None:
        self.metrics.rejected.labels(kind).inc()
        current, shadow = self.slot.current, self.slot.shadow
        log.warning("refused %s envelope v%s at %s[%d]@%d (%s): %s; still serving %s (shadow: %s)", stage, version,
                    at.topic, at.partition, at.offset, kind, reason, f"v{current.version}" if current else "no model",
                    f"v{shadow.version}" if shadow else "none")
        self._report(STATUS_REJECTED, at, version, stage, reason=reason, kind=kind,
                     extra={"serving_version": current.version if current else None})

    def _report(self, status: str, at: EnvelopeAt, version: int | None, stage: Stage, *, reason: str, kind: str,
                extra: dict) -> None:
        """One record on the status topic (key = model name); a failure to report is logged, not fatal."""
        record = ModelStatus(
            status=status, model_name=self.settings.model_name, model_version=version, reason_kind=kind,
            reason=reason, scorer_id=self.scorer_id, envelope_topic=at.topic, envelope_partition=at.partition,
            envelope_offset=at.offset, at=datetime.now(UTC), stage=stage, **extra)
        value = self._status_frame + record.model_dump_json().encode()
        errors: list[KafkaError] = []
        self._producer.produce(self.settings.status_topic, key=self.settings.model_name.encode(),
                               value=value, on_delivery=lambda err, _msg: err and errors.append(err))
        if self._producer.flush(STATUS_DELIVERY_S) or errors:
            log.error("status record %s v%s not delivered to %s: %s", status, version,
                      self.settings.status_topic, errors or "flush timed out")


def _ident(model: ServingModel | None) -> tuple[int, str] | None:
    return (model.version, model.artifact_sha256) if model is not None else None


def _claimed_version(raw: bytes) -> int | None:
    """The version a refused envelope claims to be, for the report; None when unreadable."""
    try:
        version = orjson.loads(raw).get("model_version")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return version if isinstance(version, int) else None
