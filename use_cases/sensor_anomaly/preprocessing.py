"""The sensor features: the one preprocessing path shared by training, evaluation and the scorer.

A reading becomes its channels standardised with its machine's normal statistics (centre and scale learnt
from normal training readings of that machine; a machine not seen in training uses the statistics of all
machines). Each reading is transformed on its own, so scoring needs no state across batches. The fitted
``SensorPreprocessing`` holds those statistics and, once the autoencoder is trained, its anomaly threshold: it
travels with the model, so a model is always scored as it was validated.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from ml.contracts import field_types
from ml.preprocessing import Preprocessing
from use_cases.sensor_anomaly.contracts import CHANNELS, SensorReading

log = logging.getLogger(__name__)

# Bumped whenever the meaning of a feature changes: a preprocessing fitted by other code is refused.
VERSION = 1
INPUT = "readings"  # the autoencoder's input name
MIN_SCALE = 1e-6  # a channel constant in training keeps scale 1 rather than dividing by ~0


class SensorPreprocessing(Preprocessing):
    """Normalisation statistics per machine and the model's anomaly threshold; JSON round-trips."""

    VERSION = VERSION

    use_case: Literal["sensor_anomaly"] = "sensor_anomaly"
    channels: list[str]
    center: list[float]  # all machines: the fallback for a machine not seen in training
    scale: list[float]
    machine_center: dict[str, list[float]]
    machine_scale: dict[str, list[float]]
    threshold: float | None = Field(None, gt=0, description="anomaly when score > threshold; set by training")
    threshold_method: str | None = None

    @property
    def width(self) -> int:
        return len(self.channels)

    def with_threshold(self, threshold: float, method: str) -> SensorPreprocessing:
        return self.model_validate({**self.to_dict(), "threshold": threshold, "threshold_method": method})


def _frame(data: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    df = data if isinstance(data, pd.DataFrame) else pd.DataFrame.from_records(list(data))
    if len(df) == 0:
        return pd.DataFrame(columns=["machine_id", *CHANNELS])
    absent = [c for c in ("machine_id", *CHANNELS) if c not in df.columns]
    if absent:
        raise ValueError(f"input lacks sensors.readings fields: {absent}")
    return df


def fit(df: pd.DataFrame) -> SensorPreprocessing:
    """Learn per-machine and overall centre/scale of each channel from normal readings (no threshold yet).

    Raises ValueError on zero rows.
    """
    frame = _frame(df)
    if len(frame) == 0:
        raise ValueError("cannot fit the sensor preprocessing on zero rows")
    values = frame[list(CHANNELS)].astype("float64")

    def stats(v: pd.DataFrame) -> tuple[list[float], list[float]]:
        return v.mean().tolist(), v.std(ddof=0).where(lambda s: s > MIN_SCALE, 1.0).tolist()

    center, scale = stats(values)
    machine_center, machine_scale = {}, {}
    for machine, rows in values.groupby(frame["machine_id"].astype(str), sort=True):
        machine_center[machine], machine_scale[machine] = stats(rows)
    types = field_types(SensorReading)
    fitted = SensorPreprocessing(
        version=VERSION, input_schema={name: types[name] for name in ("machine_id", *CHANNELS)},
        channels=list(CHANNELS), center=center, scale=scale,
        machine_center=machine_center, machine_scale=machine_scale, rows_fitted=len(frame),
        fitted_through=pd.to_datetime(frame["ts"], utc=True).max().isoformat(),
    )
    log.info("fitted sensor preprocessing v%d %s on %d normal readings of %d machines",
             VERSION, fitted.fingerprint, len(frame), len(machine_center))
    return fitted


def transform(fitted: SensorPreprocessing, data: pd.DataFrame | Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The autoencoder's input for rows of a DataFrame or a list of `sensors.readings` records.

    Returns float32 (n, len(channels)): each channel minus its machine's centre, divided by its scale.
    Raises ValueError when a channel or ``machine_id`` is absent.
    """
    frame = _frame(data)
    values = frame[fitted.channels].to_numpy(dtype="float64")
    machines = frame["machine_id"].astype(str).to_numpy()
    center = np.tile(np.asarray(fitted.center), (len(frame), 1))
    scale = np.tile(np.asarray(fitted.scale), (len(frame), 1))
    for machine in np.unique(machines):
        if machine in fitted.machine_center:
            rows = machines == machine
            center[rows] = fitted.machine_center[machine]
            scale[rows] = fitted.machine_scale[machine]
    return ((values - center) / scale).astype("float32")


def anomaly_score(reconstruction: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The anomaly score of each row: mean squared reconstruction error over the channels, float64 (n,)."""
    diff = np.asarray(reconstruction, dtype="float64") - np.asarray(x, dtype="float64")
    return np.mean(diff * diff, axis=1)
