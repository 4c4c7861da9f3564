"""Topic contracts: one versioned schema per topic, enforced when producing, snapshotting and scoring.

Every event is a JSON object whose ``schema_version`` names the version of its topic's contract. The
pydantic models below are the contract; ``arrow_schema`` derives the Parquet schema of a snapshot from them,
so there is one definition of each field. ``docs/contracts.md`` documents them for people.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

import annotated_types as at
import pyarrow as pa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# Topic names (overridable through ml.settings.LoopSettings; these are the defaults and the doc names).
FLIGHTS_SCHEDULED = "flights.scheduled"
FLIGHTS_COMPLETED = "flights.completed"
FLIGHTS_PREDICTIONS = "flights.predictions"
FLIGHTS_DLQ = "flights.dlq"
SENSORS_READINGS = "sensors.readings"
SENSORS_SCORES = "sensors.scores"
SENSORS_DLQ = "sensors.dlq"  # same DeadLetter contract as flights.dlq
MODELS = "models"
MODELS_STATUS = "models.status"

DELAY_THRESHOLD_MINUTES = 15.0

Airport = Annotated[str, Field(min_length=3, max_length=4)]
Minutes = Annotated[float, Field(ge=-1440, le=2880)]
HhMm = Annotated[int, Field(ge=0, le=2400)]


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FlightScheduled(_Contract):
    """`flights.scheduled` v1: a flight as known before departure; key = ``flight_id``.

    Event time (Kafka timestamp) = ``sched_dep_utc``. Weather is the origin's observation at the scheduled
    hour (standing in for a forecast); plane attributes come from the aircraft registry.
    """

    schema_version: Literal[1] = 1
    flight_id: str = Field(min_length=1, max_length=64)
    sched_dep_utc: AwareDatetime
    sched_arr_utc: AwareDatetime
    year: int = Field(ge=2000, le=2100)
    month: int = Field(ge=1, le=12)
    day: int = Field(ge=1, le=31)
    sched_dep_time: HhMm
    sched_arr_time: HhMm
    carrier: str = Field(min_length=2, max_length=3)
    flight: int = Field(ge=1, le=9999)
    tailnum: str | None = None
    origin: Airport
    dest: Airport
    distance: float = Field(gt=0, le=6000)
    temp: float | None = Field(default=None, ge=-60, le=130)
    dewp: float | None = Field(default=None, ge=-80, le=100)
    humid: float | None = Field(default=None, ge=0, le=100)
    wind_dir: float | None = Field(default=None, ge=0, le=360)
    wind_speed: float | None = Field(default=None, ge=0, le=200)
    wind_gust: float | None = Field(default=None, ge=0, le=250)
    precip: float | None = Field(default=None, ge=0, le=20)
    pressure: float | None = Field(default=None, ge=900, le=1100)
    visib: float | None = Field(default=None, ge=0, le=50)
    plane_year: int | None = Field(default=None, ge=1900, le=2100)
    plane_seats: int | None = Field(default=None, ge=1, le=1000)
    plane_engines: int | None = Field(default=None, ge=0, le=8)
    plane_type: str | None = None
    plane_manufacturer: str | None = None
    plane_engine: str | None = None


class FlightCompleted(FlightScheduled):
    """`flights.completed` v1: the same flight with its outcome, for training; key = ``flight_id``.

    Event time = ``arr_utc`` (actual arrival, or scheduled arrival when the flight never arrived).
    Label ``delayed``: arrival more than 15 minutes late, or cancelled, or diverted (the passenger did not
    arrive on time in all three cases).
    """

    arr_utc: AwareDatetime
    dep_delay: Minutes | None = None
    arr_delay: Minutes | None = None
    cancelled: bool
    diverted: bool
    delayed: bool


class Prediction(_Contract):
    """`flights.predictions` v1: one scored input; key = ``flight_id``."""

    schema_version: Literal[1] = 1
    flight_id: str
    probability: float = Field(ge=0, le=1)
    delayed: bool
    threshold: float = Field(ge=0, le=1)
    model_name: str
    model_version: int = Field(ge=1)
    source_topic: str
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    scored_at: AwareDatetime


class DeadLetter(_Contract):
    """`flights.dlq` v1: an input that could not be scored, with its original bytes (base64)."""

    schema_version: Literal[1] = 1
    source_topic: str
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    reason: str
    error_class: Literal["undecodable", "schema", "range"]
    original_b64: str
    failed_at: AwareDatetime


TOPIC_CONTRACTS: dict[str, type[_Contract]] = {
    FLIGHTS_SCHEDULED: FlightScheduled,
    FLIGHTS_COMPLETED: FlightCompleted,
    FLIGHTS_PREDICTIONS: Prediction,
    FLIGHTS_DLQ: DeadLetter,
}

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
        limits: dict[str, float] = {}
        for c in [*info.metadata, *_constraints(info.annotation)]:
            match c:
                case at.Ge(ge=v):
                    limits["ge"] = v
                case at.Gt(gt=v):
                    limits["gt"] = v
                case at.Le(le=v):
                    limits["le"] = v
                case at.Lt(lt=v):
                    limits["lt"] = v
                case at.MinLen(min_length=v):
                    limits["min_len"] = v
                case at.MaxLen(max_length=v):
                    limits["max_len"] = v
        specs.append(FieldSpec(name, base, nullable, literals, **limits))
    return specs


def arrow_schema(contract: type[BaseModel]) -> pa.Schema:
    """The Parquet/Arrow schema of a contract: one column per field, nullable where the field is optional."""
    fields = [pa.field(f.name, _ARROW_TYPES[f.base], nullable=f.nullable) for f in field_specs(contract)]
    return pa.schema(fields, metadata={"contract": contract.__name__, "schema_version": "1"})
