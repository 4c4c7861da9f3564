"""Topic contracts of the sensor use case: `sensors.readings` (labelled readings) and `sensors.scores`.

`sensors.dlq` uses the loop's ``ml.contracts.DeadLetter``. ``docs/contracts.md`` documents both for people.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field

from ml.contracts import Contract, ScoredEvent

# The measured channels, in the order the features and the autoencoder read them.
CHANNELS = ("temperature", "vibration", "pressure", "current", "rpm")
ANOMALY_KINDS = ("spike", "drift", "stuck", "correlated")

Celsius = Annotated[float, Field(ge=-40, le=200)]
MmPerS = Annotated[float, Field(ge=0, le=100)]
Bar = Annotated[float, Field(ge=0, le=25)]
Amps = Annotated[float, Field(ge=0, le=300)]
Rpm = Annotated[float, Field(ge=0, le=6000)]


class SensorReading(Contract):
    """`sensors.readings` v1: one reading of every channel of a machine; key = ``machine_id``.

    Event time (Kafka timestamp) = ``ts``. The ranges are the sensors' physical measuring ranges: a value
    outside them is a broken record (rejected), not an anomaly. ``is_anomaly`` / ``anomaly_kind`` are the
    labels of the replay (None on a live, unlabelled stream): the loop trains and gates on them, the scorer
    ignores them.
    """

    EVENT_TIME: ClassVar[str] = "ts"
    KEY: ClassVar[str] = "machine_id"

    schema_version: Literal[1] = 1
    reading_id: str = Field(min_length=1, max_length=64)
    machine_id: str = Field(min_length=1, max_length=32)
    ts: AwareDatetime
    temperature: Celsius
    vibration: MmPerS
    pressure: Bar
    current: Amps
    rpm: Rpm
    is_anomaly: bool | None = None
    anomaly_kind: Literal["none", "spike", "drift", "stuck", "correlated"] | None = None


class SensorScore(ScoredEvent):
    """`sensors.scores` v1: one scored reading; key = ``machine_id``.

    ``score`` is the model's reconstruction error of the reading, ``is_anomaly`` is ``score > threshold``
    with the threshold that travelled with the model.
    """

    machine_id: str
    reading_id: str
    ts: AwareDatetime
    score: float = Field(ge=0)
    threshold: float = Field(gt=0)
    is_anomaly: bool
