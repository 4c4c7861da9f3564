"""The flight topics' contracts: `flights.scheduled` (scored), `flights.completed` (labelled, trained on) and
`flights.predictions`. ``docs/contracts.md`` documents them for people."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field

from ml.contracts import Contract, ScoredEvent

DELAY_THRESHOLD_MINUTES = 15.0

Airport = Annotated[str, Field(min_length=3, max_length=4)]
Minutes = Annotated[float, Field(ge=-1440, le=2880)]
HhMm = Annotated[int, Field(ge=0, le=2400)]


class FlightScheduled(Contract):
    """`flights.scheduled` v1: a flight as known before departure; key = ``flight_id``.

    Event time (Kafka timestamp) = ``sched_dep_utc``. Weather is the origin's observation at the scheduled
    hour (standing in for a forecast); plane attributes come from the aircraft registry.
    """

    EVENT_TIME: ClassVar[str] = "sched_dep_utc"
    KEY: ClassVar[str] = "flight_id"

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

    EVENT_TIME: ClassVar[str] = "arr_utc"

    arr_utc: AwareDatetime
    dep_delay: Minutes | None = None
    arr_delay: Minutes | None = None
    cancelled: bool
    diverted: bool
    delayed: bool


class FlightPrediction(ScoredEvent):
    """`flights.predictions` v1: one scored flight; key = ``flight_id``. ``delayed`` is the decision at
    ``threshold`` (FLIGHT_DELAY_DECISION_THRESHOLD)."""

    flight_id: str
    probability: float = Field(ge=0, le=1)
    delayed: bool
    threshold: float = Field(ge=0, le=1)
