"""Typed settings of the retraining loop, read from environment variables once and passed explicitly.

Every field maps to the upper-case environment variable of the same name (``kafka_bootstrap_servers`` ->
``KAFKA_BOOTSTRAP_SERVERS``). Defaults fit the local path (`make kafka-up`, SQLite MLflow under ``.local``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ml import contracts

log = logging.getLogger(__name__)

DEV_SIGNING_KEY = "local-dev-signing-key-not-for-production"


class LoopSettings(BaseSettings):
    """Settings shared by replay, snapshot, training, registry and publishing."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = "localhost:9092"
    topic_flights_scheduled: str = contracts.FLIGHTS_SCHEDULED
    topic_flights_completed: str = contracts.FLIGHTS_COMPLETED
    topic_flights_predictions: str = contracts.FLIGHTS_PREDICTIONS
    topic_flights_dlq: str = contracts.FLIGHTS_DLQ
    topic_models: str = contracts.MODELS
    # Scorers report each model version they take live or reject here (the DAG waits for "live").
    topic_models_status: str = contracts.MODELS_STATUS
    topic_partitions: int = Field(3, ge=1)

    loop_data_dir: Path = Path(".local/data")
    mlflow_tracking_uri: str = "sqlite:///.local/mlflow/mlflow.db"
    mlflow_artifact_root: Path = Path(".local/mlflow/artifacts")
    mlflow_experiment: str = "flight-delay"
    model_name: str = "flight_delay"
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
