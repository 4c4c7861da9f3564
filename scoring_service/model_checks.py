"""Checks a model must pass before it may serve: its feature contract fits the input topic and the model,
and it scores a canary batch with finite probabilities that match Keras.

Each failed check raises ``ModelRefused`` with a ``kind`` (the label of the rejected-models counter).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ml import contracts, features
from scoring_service.inference import NumpyForward

# Largest difference between the numpy pass and Keras on the canary batch: float32 sums in another order.
MAX_KERAS_DIFF = 1e-5

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


class ModelRefused(ValueError):
    """A model failed an admission check; ``kind`` names which (contract, architecture, canary)."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"{kind}: {reason}")


def _topic_schema() -> dict[str, str]:
    """Name -> Arrow type of every field of the input contract ("?" marks an optional field)."""
    schema = contracts.arrow_schema(contracts.FlightScheduled)
    return {f.name: f"{f.type}{'?' if f.nullable else ''}" for f in schema}


def contract_problems(contract: features.FeatureContract) -> list[str]:
    """Why ``contract`` cannot read `flights.scheduled` records; empty when it can.

    Every field of its ``input_schema`` must exist in FlightScheduled with the same type; a field the
    contract requires (no "?") must be required by the topic too, or records could arrive without it.
    """
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


def parse_contract(data: dict[str, Any]) -> features.FeatureContract:
    """The envelope's feature contract, checked against the input topic; raises ModelRefused("contract")."""
    try:
        contract = features.FeatureContract.from_dict(data)
    except ValueError as e:  # pydantic's ValidationError is a ValueError too
        raise ModelRefused("contract", f"invalid feature contract: {str(e)[:300]}") from e
    problems = contract_problems(contract)
    if problems:
        raise ModelRefused("contract", f"feature contract {contract.fingerprint} does not fit "
                                       f"{contracts.FLIGHTS_SCHEDULED}: {'; '.join(problems[:5])}")
    return contract


def model_problems(contract: features.FeatureContract, forward: NumpyForward) -> list[str]:
    """Why the model's inputs do not match what ``features.transform(contract, ...)`` yields."""
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


def canary_inputs(contract: features.FeatureContract, rows: int) -> dict[str, np.ndarray]:
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


def warm_up(contract: features.FeatureContract, forward: NumpyForward, keras_model, rows: int) -> np.ndarray:
    """Score the canary batch; raises ModelRefused unless the model fits the contract and returns ``rows``
    finite probabilities in [0, 1] that equal Keras's own within MAX_KERAS_DIFF. Returns them."""
    problems = model_problems(contract, forward)
    if problems:
        raise ModelRefused("architecture", "; ".join(problems[:5]))
    x = canary_inputs(contract, max(rows, 2))
    try:
        p = forward(x)
    except (ValueError, IndexError) as e:
        raise ModelRefused("canary", f"numpy pass failed: {e}") from e
    if p.shape != (len(x[features.NUMERIC_INPUT]),):
        raise ModelRefused("canary", f"output shape {p.shape}, expected ({len(x[features.NUMERIC_INPUT])},)")
    if not np.all(np.isfinite(p)):
        raise ModelRefused("canary", f"{int(np.sum(~np.isfinite(p)))} non-finite output(s) on the canary batch")
    if p.min() < 0 or p.max() > 1:
        raise ModelRefused("canary", f"outputs outside [0, 1]: min {p.min()}, max {p.max()}")
    reference = np.asarray(keras_model(x, training=False)).reshape(-1)
    diff = float(np.max(np.abs(reference - p)))
    if not diff <= MAX_KERAS_DIFF:
        raise ModelRefused("canary", f"numpy pass differs from Keras by {diff:.3g} (> {MAX_KERAS_DIFF})")
    return p
