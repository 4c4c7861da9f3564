"""The schema registry as the loop's clients use it, through confluent-kafka's ``SchemaRegistryClient`` (the
Confluent API, which Apicurio serves at ``/apis/ccompat/v7``).

Producers ask for the id of their topic's schema (registered on first use unless ``SCHEMA_AUTO_REGISTER`` is
off); consumers ask which subjects an id belongs to and what its schema says. Answers are cached for the life
of the process (an id never changes meaning), so the registry sees a handful of requests per client, not one
per record.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError

from ml.errors import SchemaIncompatible, SchemaNotRegistered, SchemaRegistryUnavailable
from ml.schemas import BACKWARD_OR_STRICTER, SCHEMA_TYPE, TopicSchema, incompatibilities
from ml.settings import TopicNames

log = logging.getLogger(__name__)
# httpx2 logs each request at INFO; a client asks the registry a handful of times and this module logs what
# it learnt.
logging.getLogger("httpx2").setLevel(logging.WARNING)

# Confluent API error codes (Apicurio's ccompat answers the same).
SUBJECT_NOT_FOUND, VERSION_NOT_FOUND, SCHEMA_NOT_FOUND = 40401, 40402, 40403
NOT_FOUND = {SUBJECT_NOT_FOUND, VERSION_NOT_FOUND, SCHEMA_NOT_FOUND, 40408}  # 40408: subject has no config


# Seconds one request may take (``SCHEMA_REGISTRY_TIMEOUT_S``'s default).
DEFAULT_TIMEOUT_S = TopicNames.model_fields["schema_registry_timeout_s"].default

# The key ``schema`` gives a schema that is not a JSON Schema (Avro, Protobuf) under, with its type.
NOT_JSON_SCHEMA = "x-not-json-schema"


def _not_found(exc: SchemaRegistryError) -> bool:
    """True when the registry answered that the subject, version, schema or config does not exist."""
    return exc.error_code in NOT_FOUND or exc.http_status_code == 404


class UnknownSchemaId(LookupError):
    """No schema has this id in the registry."""


@dataclass(frozen=True)
class Registration:
    """What ``register`` left in the registry for one subject."""

    subject: str
    schema_id: int
    version: int
    compatibility: str


@dataclass(frozen=True)
class Check:
    """Whether the code's schema of one subject may be registered: ``registered`` (already, as ``version``),
    ``new`` (no subject yet), ``compatible`` or ``incompatible`` (with a line per field in ``problems``)."""

    subject: str
    state: str
    compatibility: str | None = None
    version: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state != "incompatible"


class SchemaRegistry:
    """One registry at ``url`` with the caches every client needs; thread-safe."""

    def __init__(self, url: str, auto_register: bool = True, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url
        self.auto_register = auto_register
        # Without a timeout, a registry that accepts a connection and never answers holds the caller forever; with
        # one, the client retries (max.retries, with backoff) and then raises, which _call names.
        self._client = SchemaRegistryClient({"url": url, "timeout": timeout_s})
        self._lock = threading.Lock()
        self._writer_ids: dict[str, int] = {}
        self._subjects: dict[int, frozenset[str]] = {}
        self._schemas: dict[int, dict[str, Any]] = {}

    @classmethod
    def of(cls, names: TopicNames) -> SchemaRegistry:
        """The process-wide client of the registry ``names`` point at."""
        return _shared(names.schema_registry_url, names.schema_auto_register, names.schema_registry_timeout_s)

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except SchemaRegistryError:
            raise
        except Exception as exc:  # httpx2's transport errors, after the client's own retries
            raise SchemaRegistryUnavailable(self.url, f"{what}: {exc}") from exc

    # ------------------------------------------------------------ producers

    def writer_id(self, ts: TopicSchema) -> int:
        """The id of the code's schema for ``ts.subject``; registered first when it is not yet and
        auto-registration is on. Raises SchemaIncompatible (the registry refuses it) or SchemaNotRegistered
        (not registered and auto-registration off)."""
        with self._lock:
            known = self._writer_ids.get(ts.subject)
        if known is not None:
            return known
        try:
            schema_id = self._call(f"looking up {ts.subject}", self._client.lookup_schema, ts.subject,
                                   Schema(ts.text, SCHEMA_TYPE)).schema_id
        except SchemaRegistryError as exc:
            if not _not_found(exc):
                raise
            if not self.auto_register:
                raise SchemaNotRegistered(ts.contract.__name__, ts.subject, self.url) from exc
            schema_id = self.register(ts).schema_id
        with self._lock:
            self._writer_ids[ts.subject] = schema_id
        return schema_id

    def register(self, ts: TopicSchema) -> Registration:
        """Register the code's schema under ``ts.subject`` (a no-op when it is there), first setting the
        subject's compatibility to ``ts.compatibility`` unless it is already BACKWARD or stricter.
        Raises SchemaIncompatible naming each field the registry's rule refuses."""
        level = self.compatibility(ts.subject)
        if level not in BACKWARD_OR_STRICTER:
            try:
                self._call(f"setting compatibility of {ts.subject}", self._client.set_compatibility, ts.subject,
                           ts.compatibility)
                level = ts.compatibility
            except SchemaRegistryError as exc:
                if exc.http_status_code != 409:  # Apicurio: another client set the subject's rule meanwhile
                    raise
                level = self.compatibility(ts.subject) or ts.compatibility
        try:
            schema_id = self._call(f"registering {ts.subject}", self._client.register_schema, ts.subject,
                                   Schema(ts.text, SCHEMA_TYPE))
        except SchemaRegistryError as exc:
            if exc.http_status_code != 409:
                raise
            problems = incompatibilities(ts.schema, self.versions(ts.subject), level) or [exc.error_message]
            raise SchemaIncompatible(ts.subject, level, problems) from exc
        version = self._call(f"looking up {ts.subject}", self._client.lookup_schema, ts.subject,
                             Schema(ts.text, SCHEMA_TYPE)).version
        log.info("schema of %s (%s) registered under %s: id %d, version %d, compatibility %s", ts.topic,
                 ts.contract.__name__, ts.subject, schema_id, version, level)
        return Registration(ts.subject, schema_id, version, level)

    # ------------------------------------------------------------ consumers

    def subjects(self, schema_id: int, refresh: bool = False) -> frozenset[str]:
        """The subjects schema ``schema_id`` is registered under (asked again with ``refresh``: an id names
        content, which another subject may register later). Raises UnknownSchemaId."""
        with self._lock:
            known = None if refresh else self._subjects.get(schema_id)
        if known is not None:
            return known
        try:
            found = frozenset(self._call(f"resolving schema id {schema_id}", self._client.get_subjects_by_schema_id,
                                         schema_id))
        except SchemaRegistryError as exc:
            if _not_found(exc):
                raise UnknownSchemaId(f"unknown schema id {schema_id}: not in the registry at {self.url}") from exc
            raise
        with self._lock:
            self._subjects[schema_id] = found
        return found

    def latest(self, subject: str) -> int | None:
        """The id of the latest schema registered under ``subject`` (None when it has none); its schema is kept, so
        ``schema`` of that id asks the registry nothing."""
        try:
            registered = self._call(f"reading the latest {subject}", self._client.get_version, subject, "latest")
        except SchemaRegistryError as exc:
            if _not_found(exc):
                return None
            raise
        with self._lock:
            self._schemas.setdefault(registered.schema_id, _parsed(registered.schema))
        return registered.schema_id

    def schema(self, schema_id: int) -> dict[str, Any]:
        """The (JSON) schema with id ``schema_id``, parsed. Raises UnknownSchemaId."""
        with self._lock:
            known = self._schemas.get(schema_id)
        if known is not None:
            return known
        try:
            registered = self._call(f"reading schema id {schema_id}", self._client.get_schema, schema_id)
        except SchemaRegistryError as exc:
            if _not_found(exc):
                raise UnknownSchemaId(f"unknown schema id {schema_id}: not in the registry at {self.url}") from exc
            raise
        parsed = _parsed(registered)
        with self._lock:
            self._schemas[schema_id] = parsed
        return parsed

    # ------------------------------------------------------------ subjects

    def compatibility(self, subject: str) -> str | None:
        """The compatibility level set on ``subject``, or None when it has none of its own."""
        try:
            return self._call(f"reading compatibility of {subject}", self._client.get_compatibility, subject)
        except SchemaRegistryError as exc:
            if _not_found(exc):
                return None
            raise

    def versions(self, subject: str) -> list[dict[str, Any]]:
        """The schemas registered under ``subject``, oldest first; [] when there is no such subject."""
        return [schema for _, schema in self._versions(subject)]

    def _versions(self, subject: str) -> list[tuple[int, dict[str, Any]]]:
        """(version, schema) of each version of ``subject``, oldest first."""
        try:
            numbers = self._call(f"listing versions of {subject}", self._client.get_versions, subject)
        except SchemaRegistryError as exc:
            if _not_found(exc):
                return []
            raise
        return [(n, json.loads(self._call(f"reading {subject} v{n}", self._client.get_version, subject, n)
                               .schema.schema_str)) for n in sorted(numbers)]

    def check(self, ts: TopicSchema) -> Check:
        """Whether the code's schema may be registered under ``ts.subject`` (the registry's own verdict, with
        the fields that break the subject's compatibility level)."""
        numbered = self._versions(ts.subject)
        if not numbered:
            return Check(ts.subject, "new", ts.compatibility)
        versions = [schema for _, schema in numbered]
        level = self.compatibility(ts.subject) or ts.compatibility
        try:
            found = self._call(f"looking up {ts.subject}", self._client.lookup_schema, ts.subject,
                               Schema(ts.text, SCHEMA_TYPE))
        except SchemaRegistryError as exc:
            if not _not_found(exc):
                raise
        else:
            # An older version than the latest: this code's readers must still read what the latest writes.
            newer = [schema for n, schema in numbered if n > found.version]
            problems = incompatibilities(ts.schema, newer, level)
            if problems:
                return Check(ts.subject, "incompatible", level, found.version,
                             [f"the code's schema is version {found.version}, older than version {numbered[-1][0]}: "
                              f"{p}" for p in problems])
            return Check(ts.subject, "registered", level, found.version)
        ok = self._call(f"testing {ts.subject}", self._client.test_compatibility, ts.subject,
                        Schema(ts.text, SCHEMA_TYPE))
        problems = incompatibilities(ts.schema, versions, level)
        if not ok and not problems:
            problems = [f"the registry's {level} rule refuses it"]
        return Check(ts.subject, "compatible" if ok else "incompatible", level, numbered[-1][0], problems)


def _parsed(registered: Schema) -> dict[str, Any]:
    """A registered JSON schema, parsed; another type as ``{NOT_JSON_SCHEMA: type}``."""
    if (registered.schema_type or "AVRO") != SCHEMA_TYPE:
        return {NOT_JSON_SCHEMA: registered.schema_type or "AVRO"}
    return json.loads(registered.schema_str)


@functools.lru_cache(maxsize=8)
def _shared(url: str, auto_register: bool, timeout_s: float) -> SchemaRegistry:
    return SchemaRegistry(url, auto_register, timeout_s)
