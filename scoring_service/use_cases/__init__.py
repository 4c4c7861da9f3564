"""What the scorer does differently per use case, behind one small interface; ``get(name)`` picks one.

Each use case names its input and output contracts, reads a model's feature contract back from an envelope
(and checks it against the input topic), builds the canary batch a new model must pass, and turns a decoded
batch into its output columns through the use case's one preprocessing path (``ml.features`` for flights,
``ml.sensors.features`` for sensors). Decoding, dead letters, batching, delivery and the hot swap are the
same code for all.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from scoring_service.inference import NumpyForward


class ScoringUseCase(Protocol):
    """The scorer's view of one use case."""

    name: str
    input_contract: type[BaseModel]
    output_contract: type[BaseModel]
    key_field: str  # input field that keys the output record

    def parse_contract(self, data: dict[str, Any]) -> Any:
        """The envelope's feature contract; raises ModelRefused("contract") when it cannot read the input."""

    def model_problems(self, contract: Any, forward: NumpyForward) -> list[str]:
        """Why the model's inputs do not fit what the contract's transform yields; empty when they do."""

    def canary_inputs(self, contract: Any, rows: int) -> dict[str, np.ndarray]:
        """A canary batch through the real feature path (plus random rows) for the model's inputs."""

    def output_problems(self, contract: Any, output: np.ndarray, rows: int) -> list[str]:
        """Why the model's canary output is unfit to serve (shape, non-finite, out of range)."""

    def score(self, forward: NumpyForward, contract: Any, table: pa.Table,
              decision_threshold: float) -> dict[str, pa.Array | str]:
        """The use case's own output columns for the rows of ``table`` (arrays, or JSON literals for constants).

        Raises ValueError when a row cannot be transformed."""


def get(name: str) -> ScoringUseCase:
    """The scoring side of a use case of ``ml.usecases``; raises KeyError for an unknown name."""
    from scoring_service.use_cases import flights, sensors

    return {flights.FLIGHT_DELAY.name: flights.FLIGHT_DELAY, sensors.SENSOR_ANOMALY.name: sensors.SENSOR_ANOMALY}[name]
