"""Records on the wire in the Confluent framing: magic byte 0, the 4-byte big-endian schema id, then the JSON
payload (README "Schemas" says why JSON Schema rather than Avro).

Writers put the id of their topic's schema in front of each value (``Framing``). Readers check each record's
frame before its payload: no framing, an id the registry does not know, or an id registered under another
topic's subject is refused with a reason that names it. A record written with a newer, compatible schema (a
field the code does not know yet) is read through the code's contract, its extra fields left out.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from pydantic import BaseModel

from ml.contracts import arrow_schema
from ml.decode import ERROR_SCHEMA, ERROR_UNDECODABLE, ContractDecoder, Decoded, JsonLines, Rejection
from ml.schema_registry import NOT_JSON_SCHEMA, SchemaRegistry, UnknownSchemaId
from ml.schemas import TopicSchema, subject, topic_schemas
from ml.settings import TopicNames

MAGIC = 0
HEADER = struct.Struct(">bI")
HEADER_SIZE = HEADER.size  # 5


class WireError(ValueError):
    """A record that cannot be read on its topic; ``kind`` is ``framing`` (no frame), ``schema_id`` (unknown
    id), ``subject`` (another topic's schema), ``schema_type`` (an Avro or Protobuf schema) or ``payload`` (the
    payload is not JSON)."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(reason)

    @property
    def error_class(self) -> str:
        """The dead-letter class: a value without a frame is undecodable, a wrong id breaks the schema."""
        return ERROR_UNDECODABLE if self.kind in ("framing", "payload") else ERROR_SCHEMA


def header(schema_id: int) -> bytes:
    """The 5 bytes in front of every value written with schema ``schema_id``."""
    return HEADER.pack(MAGIC, schema_id)


def split(value: bytes | None) -> tuple[int, bytes]:
    """(schema id, payload) of a framed value. Raises WireError(framing) for a value without the framing."""
    if not value:
        raise WireError("framing", "empty value (null or zero bytes)")
    if len(value) < HEADER_SIZE or value[0] != MAGIC:
        raise WireError("framing", f"no Confluent framing (magic byte 0, 4-byte schema id): the value starts "
                                   f"with {bytes(value[:HEADER_SIZE])!r}")
    return int.from_bytes(value[1:HEADER_SIZE], "big"), value[HEADER_SIZE:]


class Framing:
    """The frame writers of a set of topics put in front of their values, resolved once per topic."""

    def __init__(self, names: TopicNames, schemas: list[TopicSchema] | None = None) -> None:
        self.registry = SchemaRegistry.of(names)
        self._schemas = {s.topic: s for s in (schemas if schemas is not None else topic_schemas(names))}
        self._headers: dict[str, bytes] = {}

    def header(self, topic: str) -> bytes:
        """The frame of ``topic``'s values (its schema registered first if needed). KeyError: no contract."""
        found = self._headers.get(topic)
        if found is None:
            found = self._headers[topic] = header(self.registry.writer_id(self._schemas[topic]))
        return found

    def frame(self, topic: str, payload: bytes) -> bytes:
        return self.header(topic) + payload


class TopicReader:
    """Checks the frames of one topic's records: the id must be a schema of the topic's subject."""

    def __init__(self, names: TopicNames, topic: str) -> None:
        self.registry = SchemaRegistry.of(names)
        self.topic = topic
        self.subject = subject(topic)
        self._ok: set[int] = set()

    def check_id(self, schema_id: int) -> None:
        """Raises WireError(schema_id) for an id the registry does not know, WireError(subject) for an id of
        another subject."""
        if schema_id in self._ok:
            return
        try:
            subjects = self.registry.subjects(schema_id)
            if self.subject not in subjects:  # the same content may have been registered here since
                subjects = self.registry.subjects(schema_id, refresh=True)
        except UnknownSchemaId as exc:
            raise WireError("schema_id", str(exc)) from exc
        if self.subject not in subjects:
            raise WireError("subject", f"schema id {schema_id} belongs to subject(s) {', '.join(sorted(subjects))}, "
                                       f"not {self.subject}")
        self._ok.add(schema_id)

    def latest_id(self) -> int | None:
        """The id of the latest schema registered under the topic's subject (None when it has none), known from now
        on to be one of the subject's."""
        schema_id = self.registry.latest(self.subject)
        if schema_id is not None:
            self._ok.add(schema_id)
        return schema_id

    def payload(self, value: bytes | None) -> bytes:
        """The JSON payload of a value of this topic. Raises WireError."""
        schema_id, payload = split(value)
        self.check_id(schema_id)
        return payload

    def loads(self, value: bytes | None) -> Any:
        """The decoded JSON payload of a value of this topic. Raises WireError (also for undecodable JSON)."""
        payload = self.payload(value)
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise WireError("payload", f"undecodable JSON payload: {exc}") from exc


@dataclass(frozen=True)
class _Group:
    decoder: ContractDecoder | None
    refusal: WireError | None


class TopicDecoder:
    """``ContractDecoder`` for framed values of one topic: each schema id's records are decoded with the code's
    contract, leaving out the fields a newer registered schema added; a bad frame becomes a rejection. Threads
    may decode batches at the same time (a snapshot decodes several at once)."""

    def __init__(self, names: TopicNames, topic: str, contract: type[BaseModel], *, batches_at_once: bool = False
                 ) -> None:
        self.contract = contract
        self.batches_at_once = batches_at_once  # as ContractDecoder's
        self.reader = TopicReader(names, topic)
        self.schema = arrow_schema(contract)
        self._fields = frozenset(contract.model_fields)
        self._groups: dict[int, _Group] = {}
        self._lock = threading.Lock()  # threads that decode at once look a new schema id up once

    def _group(self, schema_id: int) -> _Group:
        with self._lock:
            found = self._groups.get(schema_id)
            if found is None:
                try:
                    self.reader.check_id(schema_id)
                except WireError as exc:
                    return _Group(None, exc)  # not cached: the id may be registered under this subject later
                writer = self.reader.registry.schema(schema_id)
                if NOT_JSON_SCHEMA in writer:
                    return _Group(None, WireError("schema_type", f"schema id {schema_id} has type "
                                                                 f"{writer[NOT_JSON_SCHEMA]}: the records of "
                                                                 f"{self.reader.topic} are JSON"))
                extra = frozenset(writer.get("properties", {})) - self._fields
                decoder = ContractDecoder(self.contract, ignore=extra, batches_at_once=self.batches_at_once)
                found = self._groups[schema_id] = _Group(decoder, None)
            return found

    def prepare(self) -> None:
        """Look the subject's latest schema up and build its decoder now (while a reader starts), so that a first
        batch written with it waits for no registry call. Raises what the registry lookups raise."""
        latest = self.reader.latest_id()
        if latest is not None:
            self._group(latest)

    def decode(self, values: list[bytes | None]) -> Decoded:
        """Decode one batch of framed values; never raises for bad records, it rejects them."""
        lines = JsonLines.of(values, HEADER_SIZE)
        if lines is not None and (lines.heads == lines.heads[0]).all():  # the usual batch: one schema id throughout
            groups = [(lines.heads[0].tobytes(), range(len(values)), lines)]
        else:
            heads: dict[bytes, list[int]] = {}
            for i, v in enumerate(values):
                heads.setdefault(v[:HEADER_SIZE] if v else b"", []).append(i)
            groups = [(head, idx, None) for head, idx in heads.items()]
        tables, accepted, rejected, schema_ids = [], [], [], {}
        for head, idx, same in groups:
            schema_id = None
            try:
                schema_id, _ = split(head)
                group = self._group(schema_id)
            except WireError as exc:
                group = _Group(None, exc)
            if group.refusal is not None:
                rejected += [Rejection(i, group.refusal.error_class, group.refusal.reason) for i in idx]
                continue
            part = group.decoder.decode_lines(same) if same is not None else \
                group.decoder.decode([values[i][HEADER_SIZE:] for i in idx])
            where = np.asarray(idx, dtype=np.int64)
            schema_ids[schema_id] = schema_ids.get(schema_id, 0) + len(part.accepted)
            tables.append(part.table)
            accepted.append(where[part.accepted])
            rejected += [Rejection(int(where[r.index]), r.error_class, r.reason) for r in part.rejected]
        rejected.sort(key=lambda r: r.index)
        if len(tables) == 1:
            return Decoded(tables[0], accepted[0], rejected, schema_ids)
        if not tables:
            return Decoded(self.schema.empty_table(), np.empty(0, dtype=np.int64), rejected, schema_ids)
        table, positions = pa.concat_tables(tables), np.concatenate(accepted)
        order = np.argsort(positions, kind="stable")
        return Decoded(table.take(pa.array(order)), positions[order], rejected, schema_ids)

