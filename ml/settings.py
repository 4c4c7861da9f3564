"""Typed settings of the retraining loop, read from environment variables once and passed explicitly.

Every field maps to the upper-case environment variable of the same name (``kafka_bootstrap_servers`` ->
``KAFKA_BOOTSTRAP_SERVERS``); an empty variable counts as unset. Defaults fit the local path (`make kafka-up`,
SQLite MLflow under ``.local``). What differs per use case (its topics, its gate, its own knobs) comes from
the use case (``ml.use_cases``), not from here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

DEV_SIGNING_KEY = "local-dev-signing-key-not-for-production"
# The loop's own topics; a use case's topics are named by the use case.
MODELS_TOPIC = "models"
MODELS_STATUS_TOPIC = "models.status"
DEFAULT_SCHEMA_REGISTRY_URL = "http://localhost:8081/apis/ccompat/v7"


class TopicNames(BaseSettings):
    """How topics are named and where their schemas live, shared by the loop's and the scorer's settings: a
    topic's default name (a use case's or the loop's) is looked up in ``topic_names`` (``{"default": "actual"}``),
    else prefixed with ``topic_prefix``; its value schema is the subject ``<topic>-value`` of the registry at
    ``schema_registry_url``."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_ignore_empty=True)

    topic_prefix: str = Field("", description="Prefix of every topic name (a namespace per team or environment).")
    topic_names: dict[str, str] = Field(default_factory=dict, description="JSON object renaming topics: "
                                        "default name -> actual name (wins over the prefix).")
    schema_registry_url: str = Field(DEFAULT_SCHEMA_REGISTRY_URL, description="Confluent-compatible schema "
                                     "registry API every client registers and resolves topic schemas at (local: "
                                     "`make registry-up`, Apicurio's /apis/ccompat/v7).")
    schema_auto_register: bool = Field(True, description="Register a topic's schema on first use when the "
                                       "registry lacks it (off: `python -m ml schemas register` must run first).")

    def topic(self, name: str) -> str:
        """The actual name of the topic whose default name is ``name``."""
        return self.topic_names.get(name, self.topic_prefix + name)

    @property
    def models_topic(self) -> str:
        """The compacted topic of signed model envelopes, shared by every use case (keyed by model name)."""
        return self.topic(MODELS_TOPIC)

    @property
    def status_topic(self) -> str:
        """Where scorers report each model version they take live or reject (the DAG waits for "live")."""
        return self.topic(MODELS_STATUS_TOPIC)


def use_case_defaults(data: Any) -> Any:
    """Fill ``model_name`` / ``mlflow_experiment`` from ``use_case`` when not given (a before-validator)."""
    if not isinstance(data, dict) or not data.get("use_case"):
        return data
    name = data["use_case"]
    defaults = {"model_name": name, "mlflow_experiment": name.replace("_", "-")}
    return {**data, **{k: v for k, v in defaults.items() if not data.get(k)}}


class LoopSettings(TopicNames):
    """Settings shared by replay, snapshot, training, registry and publishing."""

    # Which use case the steps run (a name of ml.use_cases); model_name and mlflow_experiment follow it.
    use_case: str | None = None
    kafka_bootstrap_servers: str = "localhost:9092"
    topic_partitions: int = Field(3, ge=1)

    loop_data_dir: Path = Path(".local/data")
    mlflow_tracking_uri: str = "sqlite:///.local/mlflow/mlflow.db"
    mlflow_artifact_root: Path = Path(".local/mlflow/artifacts")
    mlflow_experiment: str | None = None
    # Registered model name, and the key of its envelopes on the shared models topic.
    model_name: str | None = None
    model_signing_key: SecretStr = SecretStr(DEV_SIGNING_KEY)

    # Training window: the latest N snapshots of the use case's labels topic form the training set.
    snapshot_window: int = Field(12, ge=1)
    min_training_rows: int = Field(1000, ge=1)
    # The most recent days of the window are held out: challenger and champion are both scored on them.
    holdout_days: float = Field(7.0, gt=0)
    epochs: int = Field(20, ge=1)
    seed: int = 42

    @model_validator(mode="before")
    @classmethod
    def _names_follow_use_case(cls, data: Any) -> Any:
        return use_case_defaults(data)

    @field_validator("use_case")
    @classmethod
    def _known(cls, name: str | None) -> str | None:
        from ml import use_cases

        if name is not None:
            use_cases.require_known(name)
        return name

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
