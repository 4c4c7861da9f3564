"""The arrival delay use case: what the loop, the scorer, the DAGs and the UI need to know of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field

from arrival_delay_minutes import preprocessing as prep
from arrival_delay_minutes.contracts import ArrivalDelayPrediction
from ml.gate import Criterion
from ml.json_columns import json_column
from ml.keras_models import predict
from ml.use_cases import UseCase, UseCaseSettings, UseCaseTopics
from use_cases.flight_delay import preprocessing as flight_features
from use_cases.flight_delay.contracts import FlightCompleted, FlightScheduled
from use_cases.flight_delay.use_case import CANARY_RECORD

if TYPE_CHECKING:
    import keras

    from ml.settings import LoopSettings
    from ml.training import TrainResult
    from ml.validation import Suite


class ArrivalDelaySettings(UseCaseSettings):
    """ARRIVAL_DELAY_MINUTES_* variables."""

    retrain_every_n: int = Field(15000, ge=0, description="Retrain once this many completed flights are in no "
                                                          "snapshot (0: off).")


class ArrivalDelayMinutes(UseCase):
    """Each scheduled flight from New York gets its predicted arrival delay in minutes, from what is known
    before departure. Trained on the flights that arrived (cancelled and diverted ones have no delay), judged by
    the mean absolute error, and promoted only when it beats predicting the training median."""

    name = "arrival_delay_minutes"
    title = "Arrival delay in minutes (regression, judged by MAE)"
    topics = UseCaseTopics(input="flights.scheduled", labels="flights.completed",
                           predictions="arrival_delay.predictions", dlq="arrival_delay.dlq")
    input_contract = FlightScheduled
    label_contract = FlightCompleted
    prediction_contract = ArrivalDelayPrediction
    label = prep.LABEL
    time_order = ("sched_dep_utc", "flight_id")
    gate = (Criterion(metric="mae", higher_is_better=False, margin=1.0),
            Criterion(metric="mae_skill", higher_is_better=True, floor=0.0))
    ui_metrics = ("mae", "rmse", "mae_skill")
    preprocessing = prep.ArrivalPreprocessing
    Settings = ArrivalDelaySettings

    # ------------------------------------------------------------ the loop

    def validation_suite(self) -> Suite:
        from arrival_delay_minutes.validation import SUITE

        return SUITE

    def train(self, rows: pd.DataFrame, settings: LoopSettings) -> TrainResult:
        from arrival_delay_minutes.model import train

        return train(rows, settings)

    def evaluate(self, model: keras.Model, preprocessing: prep.ArrivalPreprocessing, rows: pd.DataFrame
                 ) -> dict[str, float]:
        """MAE and RMSE in minutes; ``mae_skill`` = 1 - MAE / the MAE of predicting the training median (above 0:
        better than that baseline). Raises ValueError on no rows."""
        if len(rows) == 0:
            raise ValueError("cannot evaluate on zero rows")
        y = rows[self.label].to_numpy(dtype="float64")
        minutes = preprocessing.minutes(predict(model, self.transform(preprocessing, rows)))
        error = minutes - y
        baseline = float(np.mean(np.abs(preprocessing.target_center - y)))
        mae = float(np.mean(np.abs(error)))
        return {"mae": mae, "rmse": float(np.sqrt(np.mean(error ** 2))), "baseline_mae": baseline,
                "mae_skill": 1.0 - mae / baseline if baseline > 0 else 0.0,
                "mean_prediction": float(minutes.mean()), "mean_label": float(y.mean()), "rows": int(len(y))}

    # ------------------------------------------------------------ the scorer

    def transform(self, preprocessing: prep.ArrivalPreprocessing,
                  data: pa.Table | pd.DataFrame | Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        return flight_features.transform(preprocessing.features, data)

    def input_shapes(self, preprocessing: prep.ArrivalPreprocessing) -> dict[str, tuple[int, ...]]:
        return flight_features.input_shapes(preprocessing.features)

    def index_ranges(self, preprocessing: prep.ArrivalPreprocessing) -> dict[str, int]:
        return flight_features.index_ranges(preprocessing.features)

    def output_shape(self, preprocessing: prep.ArrivalPreprocessing) -> tuple[int, ...]:
        return (1,)

    def canary_records(self, preprocessing: prep.ArrivalPreprocessing) -> list[dict[str, Any]]:
        return [CANARY_RECORD]

    def predictions(self, preprocessing: prep.ArrivalPreprocessing, inputs: dict[str, np.ndarray],
                    outputs: np.ndarray, table: pa.Table) -> dict[str, pa.Array | str]:
        return {"flight_id": json_column(table.column("flight_id").combine_chunks()),
                "arr_delay_minutes": json_column(pa.array(preprocessing.minutes(outputs)))}
