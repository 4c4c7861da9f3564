"""The signed model envelope and its publication on the compacted `models` topic.

An envelope carries the ``.keras`` bytes (base64) with their SHA-256, the id of the Ed25519 key that signed it
and the signature over the canonical JSON of every other field (sorted keys, no whitespace; ``ml.signing``). The
scorer accepts a model only through ``verify_envelope``, against the public keys it trusts; the topic is keyed
by model name and stage: ``<model name>`` for the champion, ``<model name>@shadow`` for a shadow (a candidate the
scorers run beside the champion, writing to the shadow predictions topic), so compaction keeps the latest
champion and the latest shadow of each model; a tombstone on the shadow key retires the shadow. On the topic the
envelope's JSON is framed with its schema id (``ml.wire``).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from ml import signing
from ml.client_ids import MODELS_READER_GROUP
from ml.errors import BrokerUnavailable, DeliveryFailed, EnvelopeRejected, LoopError, ModelTooLarge, TopicMissing
from ml.settings import LoopSettings
from ml.signing import KEY_ID_PATTERN, Signer, TrustedKeys

log = logging.getLogger(__name__)

# Room for the record batch and record headers around key and value: the broker's limit applies to the batch.
BATCH_OVERHEAD_BYTES = 512
TOPIC_METADATA_WAIT_S = 5.0
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Stage = Literal["champion", "shadow"]
CHAMPION: Stage = "champion"
SHADOW: Stage = "shadow"
SHADOW_KEY_SUFFIX = "@shadow"
# The tombstone that retires a shadow may say why in this record header (the scorers report it).
REASON_HEADER = "reason"


def shadow_key(model_name: str) -> str:
    """The record key of ``model_name``'s shadow envelopes, and of the tombstone that retires its shadow."""
    return model_name + SHADOW_KEY_SUFFIX


def record_key(model_name: str, stage: Stage) -> str:
    """The key of ``model_name``'s envelopes of ``stage``: compaction keeps the latest record of each key."""
    return shadow_key(model_name) if stage == SHADOW else model_name


def parse_key(key: bytes | str) -> tuple[str, Stage]:
    """(model name, stage) a record key stands for."""
    text = key.decode() if isinstance(key, bytes) else key
    if text.endswith(SHADOW_KEY_SUFFIX):
        return text.removesuffix(SHADOW_KEY_SUFFIX), SHADOW
    return text, CHAMPION


class ModelEnvelope(BaseModel):
    """`models` v1: one model version, signed with the Ed25519 key ``key_id``; key = ``record_key(model_name,
    stage)``."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    schema_version: Literal[1] = 1
    model_name: str = Field(min_length=1)
    model_version: int = Field(ge=1)
    run_id: str = Field(min_length=1)
    model_uri: str = Field(min_length=1)
    preprocessing: dict[str, Any]
    metrics: dict[str, Annotated[float, Field(allow_inf_nan=False)]]
    decision_id: str = Field(min_length=1)
    created_at: AwareDatetime
    # Signed like every field when present. A champion's envelope leaves it out (``build_envelope``), so it is
    # the same JSON as before the field existed: old envelopes read as champions and their signatures still
    # verify. Optional with a default, so the subject's schema stays BACKWARD compatible.
    stage: Stage = CHAMPION
    artifact_b64: str = Field(min_length=1)
    artifact_sha256: Sha256Hex
    # Optional in the schema, so it stays BACKWARD compatible with the HMAC envelopes before it; verify_envelope
    # refuses an envelope without it. The signature's form (128 hex characters) is checked there too.
    key_id: str | None = Field(None, pattern=KEY_ID_PATTERN)
    signature: str

    def artifact(self) -> bytes:
        """The ``.keras`` bytes."""
        return base64.b64decode(self.artifact_b64, validate=True)

    def to_bytes(self) -> bytes:
        """The record value: the envelope as compact JSON, with the fields it was signed with (the stage only
        when it was given: a champion's record read back or built here has none)."""
        exclude = None if "stage" in self.model_fields_set else {"stage"}
        return orjson.dumps(self.model_dump(mode="json", exclude=exclude))


class PublishResult(BaseModel):
    """Where an envelope landed, or that the topic already had this version (``published=False``)."""

    model_config = ConfigDict(protected_namespaces=())

    topic: str
    model_name: str
    model_version: int
    published: bool
    partition: int | None = None
    offset: int | None = None
    size_bytes: int
    stage: Stage = CHAMPION


class RetireResult(BaseModel):
    """Where the tombstone retiring a model's shadow landed, and which shadow version the topic held then."""

    model_config = ConfigDict(protected_namespaces=())

    topic: str
    model_name: str
    retired_version: int | None  # None: the topic held no (valid) shadow envelope
    partition: int
    offset: int


@dataclass(frozen=True)
class EnvelopeRecord:
    """One record of the models topic as read back: the model and stage its key stands for, the verified envelope
    (None for a tombstone), the record's value exactly as framed on the topic, and where it sits."""

    model_name: str
    stage: Stage
    envelope: ModelEnvelope | None
    value: bytes | None
    partition: int
    offset: int


def canonical_json(fields: dict[str, Any]) -> bytes:
    """Sorted keys, no whitespace: the exact bytes that are signed."""
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def build_envelope(*, model_name: str, model_version: int, run_id: str, model_uri: str,
                   preprocessing: dict[str, Any], metrics: dict[str, float], decision_id: str,
                   artifact: bytes, signer: Signer, created_at: datetime | None = None,
                   stage: Stage = CHAMPION) -> ModelEnvelope:
    """Build the envelope of one registered model version for ``stage``, signed by ``signer`` (its key id
    included).

    Raises ``pydantic.ValidationError`` when a field breaks the schema (e.g. a NaN metric).
    """
    fields = dict(
        schema_version=1, model_name=model_name, model_version=model_version, run_id=run_id, model_uri=model_uri,
        preprocessing=preprocessing, metrics=metrics, decision_id=decision_id,
        created_at=created_at or datetime.now(UTC),
        artifact_b64=base64.b64encode(artifact).decode("ascii"),
        artifact_sha256=hashlib.sha256(artifact).hexdigest(), key_id=signer.key_id,
    )
    if stage != CHAMPION:  # a champion's envelope has no stage field: the same JSON as before it existed
        fields["stage"] = stage
    # Validate first, then sign the JSON form: verification checks the signature over the decoded JSON,
    # so both sides must sign the same representation (ISO datetimes, JSON numbers).
    unsigned = ModelEnvelope.model_validate({**fields, "signature": ""}).model_dump(
        mode="json", exclude={"signature"} if "stage" in fields else {"signature", "stage"})
    return ModelEnvelope.model_validate({**unsigned, "signature": signer.sign(canonical_json(unsigned))})


def as_champion(shadow: ModelEnvelope, signer: Signer) -> ModelEnvelope:
    """The champion envelope of a shadow's version, signed anew by ``signer``: the same artifact bytes (so the
    scorers that run the shadow take it live without loading it again), metadata and decision."""
    return build_envelope(model_name=shadow.model_name, model_version=shadow.model_version, run_id=shadow.run_id,
                          model_uri=shadow.model_uri, preprocessing=shadow.preprocessing, metrics=shadow.metrics,
                          decision_id=shadow.decision_id, artifact=shadow.artifact(), signer=signer)


def verify_envelope(raw: bytes, trusted: TrustedKeys) -> ModelEnvelope:
    """Decode and check one record value against the trust store as read now; the only way a model enters the
    scorer.

    Raises ``EnvelopeRejected`` for undecodable JSON, a schema violation (``schema``), no key id or a bad signature
    (``signature``), a key that is not trusted (``untrusted_key``), a revoked key or model version (``revoked``),
    or an artifact whose SHA-256 differs from ``artifact_sha256`` (``sha256``). Reasons name the model version and
    the key id, never a key.
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise EnvelopeRejected("undecodable", f"undecodable: {e}") from e
    try:
        envelope = ModelEnvelope.model_validate(doc)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_input=False)[:3]
        raise EnvelopeRejected("schema", f"schema: {e.error_count()} error(s): {errors}") from e
    what, key_id = f"{envelope.model_name} v{envelope.model_version}", envelope.key_id
    if key_id is None:
        raise EnvelopeRejected("signature", f"{what} has no key_id: unsigned and HMAC-signed envelopes are no longer "
                                            "accepted (publish it again, signed with an Ed25519 key)")
    # A revoked key is refused whatever it signed: its private key may be in other hands.
    if key_id in trusted.revoked_keys:
        raise EnvelopeRejected("revoked", f"{what} is signed with the revoked key {key_id}")
    public_key = trusted.keys.get(key_id)
    if public_key is None:
        raise EnvelopeRejected("untrusted_key", f"{what} is signed with key {key_id}, which is not trusted "
                                                f"({trusted.describe()})")
    if not signing.is_signature_hex(envelope.signature):
        raise EnvelopeRejected("signature", f"{what} (key {key_id}): the signature is not an Ed25519 signature in "
                                            f"hex ({signing.SIGNATURE_HEX_CHARS} characters)")
    # The signature covers the fields as received, so re-serialisation cannot change what was signed.
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    if not signing.verify(public_key, envelope.signature, canonical_json(unsigned)):
        raise EnvelopeRejected("signature", f"bad signature for {what} (key {key_id})")
    try:
        artifact = envelope.artifact()
    except ValueError as e:
        raise EnvelopeRejected("sha256", f"artifact of {what} is not valid base64: {e}") from e
    digest = hashlib.sha256(artifact).hexdigest()
    if digest != envelope.artifact_sha256:  # both public: no constant-time comparison needed
        raise EnvelopeRejected("sha256", f"artifact sha256 mismatch for {what} (key {key_id}): "
                               f"expected {envelope.artifact_sha256}, got {digest}")
    if trusted.revokes_version(envelope.model_name, envelope.model_version):
        raise EnvelopeRejected("revoked", f"{what} is a revoked version (signed with key {key_id})")
    return envelope


def _topic_max_message_bytes(settings: LoopSettings) -> int:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    admin = AdminClient(settings.kafka_config())
    resource = ConfigResource(ResourceType.TOPIC, settings.models_topic)
    # A topic created a moment ago can be unknown to the broker answering for a few hundred ms: retry briefly.
    deadline = time.monotonic() + TOPIC_METADATA_WAIT_S
    while True:
        try:
            configs = admin.describe_configs([resource], request_timeout=30)[resource].result(timeout=30)
            return int(configs["max.message.bytes"].value)
        except KafkaException as e:
            unknown = bool(e.args) and e.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
            if unknown and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            if unknown:
                raise TopicMissing(settings.models_topic, settings.kafka_bootstrap_servers) from e
            raise BrokerUnavailable(settings.kafka_bootstrap_servers, e) from e


def read_envelopes(settings: LoopSettings, timeout_s: float = 30.0) -> list[ModelEnvelope]:
    """Every valid envelope on the `models` topic (champions and shadows: see each one's ``stage``), in offset
    order per partition. As ``read_records``, without the tombstones."""
    return [r.envelope for r in read_records(settings, timeout_s) if r.envelope is not None]


def latest_envelopes(settings: LoopSettings, timeout_s: float = 30.0) -> dict[tuple[str, Stage], EnvelopeRecord]:
    """(model name, stage) -> the newest valid envelope record of that key, as compaction will keep it; a key
    whose newest record is a tombstone (a retired shadow) has none."""
    latest: dict[tuple[str, Stage], EnvelopeRecord] = {}
    for record in read_records(settings, timeout_s):
        if record.envelope is None:
            latest.pop((record.model_name, record.stage), None)
        else:
            latest[(record.model_name, record.stage)] = record
    return latest


def _record(msg, envelope: ModelEnvelope | None) -> EnvelopeRecord:
    """The record of ``msg`` (a verified ``envelope``, or None for a tombstone); raises EnvelopeRejected when
    its key names another model or stage than the envelope (a scorer refuses it too)."""
    key = msg.key()
    if key is None:  # the records before keys had a stage: a champion's
        name, stage = (envelope.model_name, CHAMPION) if envelope is not None else ("", CHAMPION)
    else:
        name, stage = parse_key(key)
    if envelope is not None and (name, stage) != (envelope.model_name, envelope.stage):
        raise EnvelopeRejected("stage", f"{envelope.stage} envelope of {envelope.model_name} "
                                        f"v{envelope.model_version} under the key {key!r}")
    return EnvelopeRecord(name, stage, envelope, msg.value(), msg.partition(), msg.offset())


def read_records(settings: LoopSettings, timeout_s: float = 30.0) -> list[EnvelopeRecord]:
    """Every valid envelope and every tombstone on the `models` topic, in offset order per partition, each with
    its raw value.

    Reads from the beginning up to the end offsets taken at the start (envelopes published meanwhile belong
    to the next reader); records that fail verification (against ``settings.trust_store()``: the trust folder's
    public keys and the loop's own) or whose key disagrees with their envelope are logged and skipped.
    """
    from confluent_kafka import Consumer, KafkaException

    from ml.topic_history import TopicHistory
    from ml.wire import TopicReader, WireError

    topic = settings.models_topic
    reader = TopicReader(settings, topic)
    consumer = Consumer(settings.kafka_config({
        # Assigned partitions only, nothing committed: the group id is required by the client, not used.
        "group.id": f"{MODELS_READER_GROUP}{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    }))
    # One reading of the trust store for the whole topic: its records are checked as of one moment.
    trusted = settings.trust_store().read()
    out: list[EnvelopeRecord] = []
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
            if metadata.error is not None:
                raise TopicMissing(topic, settings.kafka_bootstrap_servers)
            history = TopicHistory.open(consumer, topic, sorted(metadata.partitions), timeout_s)
        except KafkaException as e:
            raise BrokerUnavailable(settings.kafka_bootstrap_servers, f"reading offsets of {topic}: {e}") from e
        deadline = time.monotonic() + timeout_s
        for msg in history.records(stop=lambda: time.monotonic() > deadline):
            if msg.error() is not None:
                raise BrokerUnavailable(settings.kafka_bootstrap_servers, f"reading {topic}: {msg.error()}")
            try:
                if msg.value() is None:
                    if msg.key() is not None:  # a tombstone: the key's record is deleted
                        out.append(_record(msg, None))
                    continue
                out.append(_record(msg, verify_envelope(reader.payload(msg.value()), trusted)))
            except (EnvelopeRejected, WireError) as e:
                log.warning("skipping envelope at %s[%d]@%d: %s", topic, msg.partition(), msg.offset(), e)
        if history.pending:
            raise BrokerUnavailable(settings.kafka_bootstrap_servers,
                                    f"{topic} partitions {sorted(history.pending)} not read up to {history.ends}")
    finally:
        consumer.close()
    log.info("read %d valid envelope(s) and tombstone(s) from %s up to end offsets %s", len(out), topic,
             history.ends)
    return out


def publish(settings: LoopSettings, envelope: ModelEnvelope) -> PublishResult:
    """Produce ``envelope`` to the `models` topic under the key of its stage (``record_key``), unless it is
    already the latest of that stage there.

    Idempotent per stage: when the latest valid envelope of ``model_name`` and ``stage`` on the topic carries the
    same version, nothing is produced (a retried task, or a second publish of the same version). Re-publishing an
    older version after a newer one does produce, which makes it the current model again (a rollback).
    Raises ``ModelTooLarge`` before producing when the record exceeds the topic's ``max.message.bytes``, and
    ``DeliveryFailed`` when the broker does not acknowledge it.
    """
    from ml.wire import Framing

    topic, stage = settings.models_topic, envelope.stage
    what = f"{envelope.model_name} v{envelope.model_version} ({stage})"
    key, value = record_key(envelope.model_name, stage).encode(), Framing(settings).frame(topic, envelope.to_bytes())
    size = len(key) + len(value)
    limit = _topic_max_message_bytes(settings)
    if size + BATCH_OVERHEAD_BYTES > limit:
        raise ModelTooLarge(f"envelope of {what} is {size} bytes; topic {topic} accepts {limit} (max.message.bytes) "
                            f"minus {BATCH_OVERHEAD_BYTES} bytes of batch overhead")
    result = dict(topic=topic, model_name=envelope.model_name, model_version=envelope.model_version,
                  size_bytes=size, stage=stage)

    latest = latest_envelopes(settings).get((envelope.model_name, stage))
    if latest is not None and latest.envelope.model_version == envelope.model_version:
        log.info("%s is already the latest %s envelope on %s: nothing published", what, stage, topic)
        return PublishResult(**result, published=False)

    msg = _produce(settings, key, value, what, limit)
    log.info("published %s (run %s, decision %s) to %s[%d]@%d, %d bytes", what, envelope.run_id,
             envelope.decision_id, topic, msg.partition(), msg.offset(), size)
    return PublishResult(**result, published=True, partition=msg.partition(), offset=msg.offset())


def _produce(settings: LoopSettings, key: bytes, value: bytes | None, what: str, limit: int = 1_000_000,
             headers: list[tuple[str, bytes]] | None = None):
    """Produce one record to the `models` topic and wait for its acknowledgement; the delivered message. Raises
    ``DeliveryFailed`` when the broker does not acknowledge it within 30 s or refuses it."""
    from confluent_kafka import Producer

    topic = settings.models_topic
    producer = Producer(settings.kafka_config({
        # Every in-sync replica has the envelope; idempotence: a retried send after a lost ack cannot write it twice.
        "acks": "all",
        "enable.idempotence": True,
        # The client's own limit (default 1 MB) must not be below the topic's, which was checked above.
        "message.max.bytes": max(limit, 1_000_000) + BATCH_OVERHEAD_BYTES,
    }))
    delivered: list = []
    producer.produce(topic, key=key, value=value, headers=headers,
                     on_delivery=lambda err, msg: delivered.append((err, msg)))
    remaining = producer.flush(30)
    if remaining or not delivered:
        raise DeliveryFailed(f"{what} not acknowledged by {topic} within 30 s ({remaining} message(s) in flight)")
    err, msg = delivered[0]
    if err is not None:
        raise DeliveryFailed(f"{what} rejected by {topic}: {err}")
    return msg


def retire_shadow(settings: LoopSettings, model_name: str | None = None, reason: str = "") -> RetireResult:
    """Retire the shadow of ``model_name`` (default: the settings'): a tombstone on its shadow key, which the
    scorers take as "clear the shadow" and compaction as "delete the shadow's envelopes". ``reason`` travels in
    the tombstone's ``reason`` header; the scorers put it in their "retired" status records.

    Always produced (a second tombstone is harmless), so a retired shadow that the loop cannot verify (a key it
    does not trust) is retired too. Raises ``DeliveryFailed`` when the broker does not acknowledge it.
    """
    name = model_name or settings.model_name
    if not name:
        raise LoopError("no model name: set MODEL_NAME or USE_CASE")
    current = latest_envelopes(settings).get((name, SHADOW))
    version = current.envelope.model_version if current is not None else None
    msg = _produce(settings, shadow_key(name).encode(), None, f"the tombstone of {shadow_key(name)}",
                   headers=[(REASON_HEADER, reason.encode())] if reason else None)
    log.info("retired the shadow of %s (%s) with a tombstone at %s[%d]@%d%s", name,
             f"v{version}" if version is not None else "no shadow envelope on the topic", settings.models_topic,
             msg.partition(), msg.offset(), f": {reason}" if reason else "")
    return RetireResult(topic=settings.models_topic, model_name=name, retired_version=version,
                        partition=msg.partition(), offset=msg.offset())


def promote_shadow(settings: LoopSettings, version: int, model_name: str | None = None,
                   signer: Signer | None = None) -> PublishResult:
    """Make the shadow ``version`` of ``model_name`` (default: the settings') the champion: its envelope is signed
    anew as a champion by ``signer`` (default: the settings' signing key) with the same artifact bytes, published
    under the champion key, then the shadow key is retired. Scorers running that shadow take it live without
    loading it again.

    Safe to retry: a version that is already the latest champion is not published again (``published=False``);
    its shadow key is retired if it is still there. Raises LoopError when the topic holds no shadow of that version
    and the champion is another one.
    """
    name = model_name or settings.model_name
    latest = latest_envelopes(settings)
    shadow, champion = latest.get((name, SHADOW)), latest.get((name, CHAMPION))
    if shadow is None or shadow.envelope.model_version != version:
        if champion is not None and champion.envelope.model_version == version:  # promoted and retired already
            return PublishResult(topic=settings.models_topic, model_name=name, model_version=version,
                                 published=False, size_bytes=len(champion.value or b""))
        found = f"v{shadow.envelope.model_version}" if shadow is not None else "none"
        raise LoopError(f"{name} v{version} is not the shadow on {settings.models_topic} (shadow: {found}): "
                        "nothing to promote")
    result = publish(settings, as_champion(shadow.envelope, signer or settings.signer()))
    retire_shadow(settings, name, reason=f"promoted: v{version} is the champion")
    return result
