"""The sensor-anomaly use case in the scorer: `sensors.readings` in, `sensors.scores` out.

The model is an autoencoder: its output is the reconstruction of its input, the anomaly score is the
reconstruction error (``ml.sensors.features.anomaly_score``), and ``is_anomaly`` is decided at the
threshold that travelled with the model in its feature contract (chosen on validation data when it was
trained), not at a scorer setting.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from ml.replay import json_column
from ml.sensors import features
from ml.sensors.contracts import CHANNELS, SensorReading, SensorScore
from scoring_service.inference import NumpyForward
from scoring_service.model_checks import ModelRefused


class SensorAnomalyScoring:
    """Reconstruction error and its verdict per reading."""

    name = "sensor_anomaly"
    input_contract = SensorReading
    output_contract = SensorScore
    key_field = "machine_id"

    def parse_contract(self, data: dict[str, Any]) -> features.SensorFeatureContract:
        try:
            contract = features.SensorFeatureContract.from_dict(data)
        except ValueError as e:
            raise ModelRefused("contract", f"invalid sensor feature contract: {str(e)[:300]}") from e
        unknown = [c for c in contract.channels if c not in CHANNELS]
        if unknown:
            raise ModelRefused("contract", f"feature contract {contract.fingerprint} reads channels {unknown} "
                                           f"that SensorReading does not have")
        if contract.threshold is None:
            raise ModelRefused("contract", f"feature contract {contract.fingerprint} carries no anomaly threshold")
        return contract

    def model_problems(self, contract: features.SensorFeatureContract, forward: NumpyForward) -> list[str]:
        have = {spec.name: spec.row_shape for spec in forward.inputs}
        expected = {features.INPUT: (contract.width,)}
        return [] if have == expected else [f"model inputs {have} != contract inputs {expected}"]

    def canary_inputs(self, contract: features.SensorFeatureContract, rows: int) -> dict[str, np.ndarray]:
        """A normal reading of the first known machine (its centre) through ``transform``, then random rows."""
        machine = next(iter(sorted(contract.machine_center)), "canary")
        centre = contract.machine_center.get(machine, contract.center)
        real = features.transform(contract, [{"machine_id": machine, **dict(zip(contract.channels, centre))}])
        noise = np.random.default_rng(0).normal(size=(rows - 1, contract.width)).astype("float32")
        return {features.INPUT: np.concatenate([real, noise])}

    def output_problems(self, contract: features.SensorFeatureContract, output: np.ndarray,
                        rows: int) -> list[str]:
        if output.shape != (rows, contract.width):
            return [f"output shape {output.shape}, expected ({rows}, {contract.width})"]
        if not np.all(np.isfinite(output)):
            return [f"{int(np.sum(~np.isfinite(output)))} non-finite output(s) on the canary batch"]
        return []

    def score(self, forward: NumpyForward, contract: features.SensorFeatureContract, table: pa.Table,
              decision_threshold: float) -> dict[str, pa.Array | str]:
        frame = table.select(["machine_id", *contract.channels]).to_pandas()
        x = features.transform(contract, frame)
        score = features.anomaly_score(forward({features.INPUT: x}), x)
        return {"machine_id": json_column(table.column("machine_id").combine_chunks()),
                "reading_id": json_column(table.column("reading_id").combine_chunks()),
                "ts": json_column(table.column("ts").combine_chunks()),
                "score": json_column(pa.array(score)), "threshold": orjson.dumps(contract.threshold).decode(),
                "is_anomaly": json_column(pa.array(score > contract.threshold))}


SENSOR_ANOMALY = SensorAnomalyScoring()
