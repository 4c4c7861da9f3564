"""Typed settings of the retraining loop, read from environment variables once and passed explicitly.

Every field maps to the upper-case environment variable of the same name (``kafka_bootstrap_servers`` ->
``KAFKA_BOOTSTRAP_SERVERS``). Defaults fit the local path (`make kafka-up`, SQLite MLflow under ``.local``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ml import contracts

log = logging.getLogger(__name__)

DEV_SIGNING_KEY = "local-dev-signing-key-not-for-production"

UseCaseName = Literal["flight_delay", "sensor_anomaly"]
# What follows the use case unless set explicitly: (model_name, mlflow_experiment). The model name keys the
# envelopes on the shared `models` topic, so each use case's scorer finds its own model there.
USE_CASE_NAMES: dict[str, tuple[str, str]] = {
    "flight_delay": ("flight_delay", "flight-delay"),
    "sensor_anomaly": ("sensor_anomaly", "sensor-anomaly"),
}


class LoopSettings(BaseSettings):
    """Settings shared by replay, snapshot, training, registry and publishing."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Which use case the steps run (ml.usecases); model_name and mlflow_experiment follow it unless set.
    use_case: UseCaseName = "flight_delay"
    kafka_bootstrap_servers: str = "localhost:9092"
    topic_flights_scheduled: str = contracts.FLIGHTS_SCHEDULED
    topic_flights_completed: str = contracts.FLIGHTS_COMPLETED
    topic_flights_predictions: str = contracts.FLIGHTS_PREDICTIONS
    topic_flights_dlq: str = contracts.FLIGHTS_DLQ
    # Sensor readings carry their labels (the loop snapshots them; the scorer ignores them).
    topic_sensors_readings: str = contracts.SENSORS_READINGS
    topic_sensors_scores: str = contracts.SENSORS_SCORES
    topic_sensors_dlq: str = contracts.SENSORS_DLQ
    topic_models: str = contracts.MODELS
    # Scorers report each model version they take live or reject here (the DAG waits for "live").
    topic_models_status: str = contracts.MODELS_STATUS
    topic_partitions: int = Field(3, ge=1)

    loop_data_dir: Path = Path(".local/data")
    mlflow_tracking_uri: str = "sqlite:///.local/mlflow/mlflow.db"
    mlflow_artifact_root: Path = Path(".local/mlflow/artifacts")
    mlflow_experiment: str = USE_CASE_NAMES["flight_delay"][1]
    model_name: str = USE_CASE_NAMES["flight_delay"][0]
    model_signing_key: SecretStr = SecretStr(DEV_SIGNING_KEY)

    # Training window: the latest N snapshots of flights.completed form the training set.
    snapshot_window: int = Field(12, ge=1)
    min_training_rows: int = Field(1000, ge=1)
    # The most recent days of the window are held out: challenger and champion are both scored on them.
    holdout_days: float = Field(7.0, gt=0)
    epochs: int = Field(20, ge=1)
    seed: int = 42

    # Gate: the challenger may be worse than the champion by at most the margin, and must clear the floors.
    gate_auc_margin: float = Field(0.01, ge=0)
    gate_logloss_margin: float = Field(0.02, ge=0)
    gate_min_auc: float = Field(0.60, ge=0, le=1)
    gate_max_logloss: float = Field(0.69, gt=0)
    decision_threshold: float = Field(0.5, gt=0, lt=1)
    # Sensor anomaly gate, at each model's own threshold: F1 at most this much below the champion's, and
    # precision and recall at least these floors.
    gate_f1_margin: float = Field(0.02, ge=0)
    gate_min_precision: float = Field(0.5, ge=0, le=1)
    gate_min_recall: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _names_follow_use_case(cls, data: Any) -> Any:
        """Fill model_name / mlflow_experiment from the use case when they are not given."""
        if not isinstance(data, dict):
            return data
        names = USE_CASE_NAMES.get(data.get("use_case") or "flight_delay")
        if names is None:  # an unknown use case: the field's own validation names the allowed values
            return data
        defaults = dict(zip(("model_name", "mlflow_experiment"), names, strict=True))
        return {**data, **{k: v for k, v in defaults.items() if data.get(k) is None}}

    def signing_key(self) -> bytes:
        """The HMAC key for model envelopes; warns when the built-in development key is in use."""
        key = self.model_signing_key.get_secret_value()
        if key == DEV_SIGNING_KEY:
            log.warning("MODEL_SIGNING_KEY is not set: signing model envelopes with the local development key")
        return key.encode()

    @property
    def snapshot_dir(self) -> Path:
        return self.loop_data_dir / "snapshots"

    @property
    def reports_dir(self) -> Path:
        return self.loop_data_dir / "reports"
