"""Topic contracts: the base every event schema derives from, and the loop's own record schemas.

A contract is a pydantic model, one per topic and version, enforced when producing, snapshotting and scoring;
``arrow_schema`` derives the Parquet schema of a snapshot from it, so each field is defined once. Each use case
defines the contracts of its topics (``Contract`` for events, ``ScoredEvent`` for its predictions); the loop
defines the dead-letter record shared by every use case and the scorers' status reports. ``ml.schemas`` registers
each as a JSON Schema in the schema registry. ``docs/contracts.md`` documents them for people.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, ClassVar, Literal

import annotated_types as at
import pyarrow as pa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class Contract(BaseModel):
    """Base of every topic contract: immutable, no unknown fields.

    ``EVENT_TIME`` names the field that is the record's Kafka timestamp (snapshots record its range), ``KEY``
    the field that keys the record (a scorer keys each prediction with its input's key).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    EVENT_TIME: ClassVar[str]
    KEY: ClassVar[str | None] = None


class ScoredEvent(Contract):
    """Base of every prediction contract: which model scored which input, and when. A use case adds the fields
    of its own output (its key field, scores, decisions); the scorer fills these."""

    EVENT_TIME: ClassVar[str] = "scored_at"

    schema_version: Literal[1] = 1
    model_name: str
    model_version: int = Field(ge=1)
    source_topic: str
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    scored_at: AwareDatetime


class DeadLetter(Contract):
    """A use case's DLQ record v1: an input that could not be scored, with its original bytes (base64)."""

    EVENT_TIME: ClassVar[str] = "failed_at"

    schema_version: Literal[1] = 1
    source_topic: str
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    reason: str
    error_class: Literal["undecodable", "schema", "range"]
    original_b64: str
    failed_at: AwareDatetime


class ModelStatus(Contract):
    """`models.status` v1: a scorer took a model version live (``live``: the champion, ``shadow``: scored beside
    it to the shadow topic), cleared its shadow (``retired``) or refused an envelope; key = model name. The DAG's
    rollout check waits for "live" (or "shadow"), the loop's page shows them."""

    EVENT_TIME: ClassVar[str] = "at"

    schema_version: Literal[1] = 1
    status: Literal["live", "rejected", "shadow", "retired"]
    model_name: str
    model_version: int | None  # None when a refused envelope does not say which version it claims to be
    reason_kind: str
    reason: str
    scorer_id: str
    envelope_topic: str
    envelope_partition: int = Field(ge=0)
    envelope_offset: int = Field(ge=0)
    at: AwareDatetime
    previous_version: int | None = None  # live: the version it replaced
    load_ms: float | None = None  # live: load and warm-up time
    swap_ms: float | None = None  # live: publication to live
    serving_version: int | None = None  # rejected, shadow, retired: the champion's version then
    stage: Literal["champion", "shadow"] | None = None  # the envelope's (rejected: its key's); None before stages


_ARROW_TYPES: dict[type, pa.DataType] = {
    int: pa.int64(),
    float: pa.float64(),
    str: pa.string(),
    bool: pa.bool_(),
    datetime: pa.timestamp("ms", tz="UTC"),
}


@dataclass(frozen=True)
class FieldSpec:
    """One contract field as the Parquet schema, the snapshot decoder and the validation suite read it."""

    name: str
    base: type  # int, float, str, bool or datetime
    nullable: bool
    literals: tuple | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_len: int | None = None
    max_len: int | None = None


def _constraints(annotation: object) -> list[object]:
    """Constraints nested in ``Annotated`` (also inside a union such as ``Minutes | None``), which pydantic
    does not lift into ``FieldInfo.metadata``."""
    found: list[object] = []
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *extra = typing.get_args(annotation)
        for item in extra:  # Field(...) inside Annotated arrives as a FieldInfo carrying its own metadata
            found.extend(getattr(item, "metadata", [item]))
        found.extend(_constraints(inner))
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found.extend(_constraints(arg))
    return found


_LIMITS = ((at.Ge, "ge", "ge"), (at.Gt, "gt", "gt"), (at.Le, "le", "le"), (at.Lt, "lt", "lt"),
           (at.MinLen, "min_length", "min_len"), (at.MaxLen, "max_length", "max_len"))


def field_specs(contract: type[BaseModel]) -> list[FieldSpec]:
    """Every field of ``contract`` with its base type, nullability, literal values and bounds."""
    specs = []
    for name, info in contract.model_fields.items():
        annotation, nullable = info.annotation, False
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            nullable = len(args) < len(typing.get_args(annotation))
            (annotation,) = args
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
        literals = typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None
        base = type(literals[0]) if literals else datetime if annotation is AwareDatetime else annotation
        limits = {key: getattr(c, attr) for c in [*info.metadata, *_constraints(info.annotation)]
                  for kind, attr, key in _LIMITS if isinstance(c, kind)}
        specs.append(FieldSpec(name, base, nullable, literals, **limits))
    return specs


def arrow_schema(contract: type[BaseModel]) -> pa.Schema:
    """The Parquet/Arrow schema of a contract: one column per field, nullable where the field is optional."""
    fields = [pa.field(f.name, _ARROW_TYPES[f.base], nullable=f.nullable) for f in field_specs(contract)]
    return pa.schema(fields, metadata={"contract": contract.__name__, "schema_version": "1"})


def field_types(contract: type[BaseModel]) -> dict[str, str]:
    """Name -> Arrow type of every field of ``contract``, "?" marking an optional one: what a fitted
    preprocessing records of the fields it reads, and what the scorer checks it against."""
    return {f.name: f"{f.type}{'?' if f.nullable else ''}" for f in arrow_schema(contract)}
