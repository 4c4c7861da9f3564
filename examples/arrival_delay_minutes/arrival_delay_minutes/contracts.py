"""The contract of this use case's own topic, `arrival_delay.predictions`. It reads the flight topics
(`flights.scheduled`, `flights.completed`), whose contracts belong to the flight delay use case."""

from __future__ import annotations

from pydantic import Field

from ml.contracts import ScoredEvent


class ArrivalDelayPrediction(ScoredEvent):
    """`arrival_delay.predictions` v1: the predicted arrival delay of one scheduled flight; key = ``flight_id``."""

    flight_id: str
    arr_delay_minutes: float = Field(ge=-1440, le=2880)
