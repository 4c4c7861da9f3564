"""The flight-delay use case in the scorer: `flights.scheduled` in, `flights.predictions` out.

The model's feature contract must read `flights.scheduled` (every field it reads exists there with the same
type, and a field it requires is required there too); its output is P(delayed), and ``delayed`` is decided
at the scorer's configured threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from ml import contracts, features
from ml.replay import json_column
from scoring_service.inference import NumpyForward
from scoring_service.model_checks import ModelRefused

# A plausible `flights.scheduled` record: the canary runs the real feature path, not only random arrays.
CANARY_RECORD: dict[str, Any] = {
    "schema_version": 1, "flight_id": "canary", "sched_dep_utc": "2013-01-01T10:15:00Z",
    "sched_arr_utc": "2013-01-01T13:45:00Z", "year": 2013, "month": 1, "day": 1, "sched_dep_time": 515,
    "sched_arr_time": 819, "carrier": "UA", "flight": 1545, "tailnum": "N14228", "origin": "EWR", "dest": "IAH",
    "distance": 1400.0, "temp": 39.0, "dewp": 28.0, "humid": 64.4, "wind_dir": 260.0, "wind_speed": 12.7,
    "wind_gust": None, "precip": 0.0, "pressure": 1012.0, "visib": 10.0, "plane_year": 1999, "plane_seats": 149,
    "plane_engines": 2, "plane_type": "Fixed wing multi engine", "plane_manufacturer": "BOEING",
    "plane_engine": "Turbo-fan",
}


def _topic_schema() -> dict[str, str]:
    """Name -> Arrow type of every field of the input contract ("?" marks an optional field)."""
    schema = contracts.arrow_schema(contracts.FlightScheduled)
    return {f.name: f"{f.type}{'?' if f.nullable else ''}" for f in schema}


def contract_problems(contract: features.FeatureContract) -> list[str]:
    """Why ``contract`` cannot read `flights.scheduled` records; empty when it can."""
    topic = _topic_schema()
    problems = []
    for name, wanted in contract.input_schema.items():
        have = topic.get(name)
        if have is None:
            problems.append(f"{name}: not a field of FlightScheduled")
        elif wanted.rstrip("?") != have.rstrip("?"):
            problems.append(f"{name}: contract reads {wanted.rstrip('?')}, topic has {have.rstrip('?')}")
        elif not wanted.endswith("?") and have.endswith("?"):
            problems.append(f"{name}: contract requires it, topic makes it optional")
    return problems


class FlightDelayScoring:
    """P(delayed) per scheduled flight."""

    name = "flight_delay"
    input_contract = contracts.FlightScheduled
    output_contract = contracts.Prediction
    key_field = "flight_id"

    def parse_contract(self, data: dict[str, Any]) -> features.FeatureContract:
        try:
            contract = features.FeatureContract.from_dict(data)
        except ValueError as e:  # pydantic's ValidationError is a ValueError too
            raise ModelRefused("contract", f"invalid feature contract: {str(e)[:300]}") from e
        problems = contract_problems(contract)
        if problems:
            raise ModelRefused("contract", f"feature contract {contract.fingerprint} does not fit "
                                           f"{contracts.FLIGHTS_SCHEDULED}: {'; '.join(problems[:5])}")
        return contract

    def model_problems(self, contract: features.FeatureContract, forward: NumpyForward) -> list[str]:
        expected = {features.NUMERIC_INPUT: (contract.numeric_width,)}
        expected |= {features.CATEGORICAL_PREFIX + n: () for n in contract.vocabularies}
        have = {spec.name: spec.row_shape for spec in forward.inputs}
        problems = []
        if set(have) != set(expected):
            problems.append(f"model inputs {sorted(have)} != contract inputs {sorted(expected)}")
        for name in set(have) & set(expected):
            if have[name] != expected[name]:
                problems.append(f"{name}: model row shape {have[name]}, contract gives {expected[name]}")
        for name, size in contract.vocab_sizes.items():
            rows = forward.embedding_sizes.get(features.CATEGORICAL_PREFIX + name)
            if rows is not None and rows < size:
                problems.append(f"{name}: embedding has {rows} rows, contract indexes up to {size - 1}")
        return problems

    def canary_inputs(self, contract: features.FeatureContract, rows: int) -> dict[str, np.ndarray]:
        """The canary record through ``features.transform``, then random rows covering every category index."""
        real = features.transform(contract, [CANARY_RECORD])
        rng = np.random.default_rng(0)
        out = {features.NUMERIC_INPUT: np.concatenate([
            real[features.NUMERIC_INPUT],
            rng.normal(size=(rows - 1, contract.numeric_width)).astype("float32")])}
        for name, size in contract.vocab_sizes.items():
            key = features.CATEGORICAL_PREFIX + name
            out[key] = np.concatenate([real[key], rng.integers(0, size, rows - 1, dtype="int32")])
        return out

    def output_problems(self, contract: features.FeatureContract, output: np.ndarray, rows: int) -> list[str]:
        if output.shape not in ((rows,), (rows, 1)):
            return [f"output shape {output.shape}, expected ({rows}, 1)"]
        if not np.all(np.isfinite(output)):
            return [f"{int(np.sum(~np.isfinite(output)))} non-finite output(s) on the canary batch"]
        if output.min() < 0 or output.max() > 1:
            return [f"outputs outside [0, 1]: min {output.min()}, max {output.max()}"]
        return []

    def score(self, forward: NumpyForward, contract: features.FeatureContract, table: pa.Table,
              decision_threshold: float) -> dict[str, pa.Array | str]:
        p = forward(features.transform(contract, table)).reshape(-1)
        return {"flight_id": json_column(table.column("flight_id").combine_chunks()),
                "probability": json_column(pa.array(p)), "delayed": json_column(pa.array(p >= decision_threshold)),
                "threshold": orjson.dumps(decision_threshold).decode()}


FLIGHT_DELAY = FlightDelayScoring()
