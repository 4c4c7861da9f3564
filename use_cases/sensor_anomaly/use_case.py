"""The sensor anomaly use case: what the loop, the scorer, the DAGs and the UI need to know of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field

from ml.gate import Criterion
from ml.json_columns import json_column, literal
from ml.use_cases import LiveSpec, UseCase, UseCaseSettings, UseCaseTopics
from use_cases.sensor_anomaly import preprocessing as prep
from use_cases.sensor_anomaly.contracts import SensorReading, SensorScore

if TYPE_CHECKING:
    import keras
    import typer

    from ml.bootstrap import Metric as MetricFunction
    from ml.settings import LoopSettings
    from ml.training import TrainResult
    from ml.validation import Suite


class SensorAnomalySettings(UseCaseSettings):
    """SENSOR_ANOMALY_* variables."""

    retrain_every_n: int = Field(60000, ge=0, description="Retrain once this many readings are in no snapshot "
                                                          "(all partitions of sensors.readings; 0: off).")


class SensorAnomaly(UseCase):
    """Each machine reading (temperature, vibration, pressure, current, rpm) gets an anomaly score: the
    reconstruction error of a dense autoencoder trained on normal readings only, flagged above the threshold
    chosen on validation readings, which travels with the model. The readings carry their labels (injected
    spikes, drifts, stuck values, bearing failures): the loop trains and gates on them, the scorer ignores them."""

    name = "sensor_anomaly"
    title = "Sensor anomaly: autoencoder reconstruction error per machine reading"
    topics = UseCaseTopics(input="sensors.readings", labels="sensors.readings", predictions="sensors.scores",
                           dlq="sensors.dlq")
    input_contract = SensorReading
    label_contract = SensorReading
    prediction_contract = SensorScore
    label = "is_anomaly"
    time_order = ("ts", "machine_id")
    gate = (Criterion(metric="precision", higher_is_better=True, floor=0.5),
            Criterion(metric="recall", higher_is_better=True, floor=0.5),
            Criterion(metric="f1", higher_is_better=True, margin=0.02))
    ui_metrics = ("precision", "recall", "f1")
    preprocessing = prep.SensorPreprocessing
    live = LiveSpec(key="reading_id", score="score", decision="is_anomaly", metric="f1")
    Settings = SensorAnomalySettings

    # ------------------------------------------------------------ the loop

    def validation_suite(self) -> Suite:
        from use_cases.sensor_anomaly.validation import SUITE

        return SUITE

    def train(self, rows: pd.DataFrame, settings: LoopSettings) -> TrainResult:
        from use_cases.sensor_anomaly.model import train

        return train(rows, settings)

    def evaluate(self, model: keras.Model, preprocessing: prep.SensorPreprocessing, rows: pd.DataFrame, *,
                 scores: np.ndarray | None = None) -> dict[str, float]:
        """Precision, recall, F1 and more at the model's own threshold; ValueError without one."""
        from use_cases.sensor_anomaly.evaluation import metrics

        if preprocessing.threshold is None:
            raise ValueError(f"sensor preprocessing {preprocessing.fingerprint} carries no threshold")
        return metrics(rows[self.label].to_numpy(dtype=bool),
                       self.scores(model, preprocessing, rows) if scores is None else scores,
                       preprocessing.threshold)

    def scores(self, model: keras.Model, preprocessing: prep.SensorPreprocessing, rows: pd.DataFrame
               ) -> np.ndarray:
        """The anomaly score (reconstruction error) per reading."""
        from use_cases.sensor_anomaly.evaluation import score

        return score(model, preprocessing, rows)

    def metric_functions(self, preprocessing: prep.SensorPreprocessing) -> Mapping[str, MetricFunction]:
        """Precision, recall and F1 at the threshold that travels with the model, weighted (``ml.bootstrap``);
        ValueError without one."""
        from use_cases.sensor_anomaly.evaluation import metric_functions

        if preprocessing.threshold is None:
            raise ValueError(f"sensor preprocessing {preprocessing.fingerprint} carries no threshold")
        return metric_functions(preprocessing.threshold)

    # ------------------------------------------------------------ the scorer

    def transform(self, preprocessing: prep.SensorPreprocessing,
                  data: pa.Table | pd.DataFrame | Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        if isinstance(data, pa.Table):
            data = data.select(["machine_id", *preprocessing.channels]).to_pandas()
        return {prep.INPUT: prep.transform(preprocessing, data)}

    def input_shapes(self, preprocessing: prep.SensorPreprocessing) -> dict[str, tuple[int, ...]]:
        return {prep.INPUT: (preprocessing.width,)}

    def output_shape(self, preprocessing: prep.SensorPreprocessing) -> tuple[int, ...]:
        return (preprocessing.width,)

    def canary_records(self, preprocessing: prep.SensorPreprocessing) -> list[dict[str, Any]]:
        """A normal reading of the first known machine: its centre."""
        machine = next(iter(sorted(preprocessing.machine_center)), "canary")
        centre = preprocessing.machine_center.get(machine, preprocessing.center)
        return [{"machine_id": machine, **dict(zip(preprocessing.channels, centre, strict=True))}]

    def check_preprocessing(self, preprocessing: prep.SensorPreprocessing) -> list[str]:
        missing = [] if preprocessing.threshold is not None else ["it carries no anomaly threshold"]
        return super().check_preprocessing(preprocessing) + missing

    def predictions(self, preprocessing: prep.SensorPreprocessing, inputs: dict[str, np.ndarray],
                    outputs: np.ndarray, table: pa.Table) -> dict[str, pa.Array | str]:
        score = prep.anomaly_score(outputs, inputs[prep.INPUT])
        return {"machine_id": json_column(table.column("machine_id").combine_chunks()),
                "reading_id": json_column(table.column("reading_id").combine_chunks()),
                "ts": json_column(table.column("ts").combine_chunks()),
                "score": json_column(pa.array(score)), "threshold": literal(preprocessing.threshold),
                "is_anomaly": json_column(pa.array(score > preprocessing.threshold))}

    # ------------------------------------------------------------ live monitoring

    def live_metrics(self, y: np.ndarray, scores: np.ndarray, decisions: np.ndarray) -> dict[str, float]:
        from use_cases.sensor_anomaly.live_metrics import live_metrics

        return live_metrics(y, scores, decisions)

    # ------------------------------------------------------------ tools

    def cli(self) -> typer.Typer:
        from use_cases.sensor_anomaly.cli import app

        return app
