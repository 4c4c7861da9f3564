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

from ml.kafka_client import KafkaClientSettings
from ml.errors import SigningKeyError
from ml.signing import KEY_ID_PATTERN, Signer, TrustStore, create_dev_key

log = logging.getLogger(__name__)

# The local path's model signing key and trust folder: without a configured key, publishing creates a development
# key pair there (ml.signing.create_dev_key), so `make demo` needs no setup.
DEFAULT_SIGNING_KEY_FILE = Path(".local/keys/model-signing.pem")
DEFAULT_TRUSTED_KEYS_DIR = Path(".local/keys/trusted")
DEFAULT_SIGNING_CONN_ID = "model_signing"
# The loop's own topics; a use case's topics are named by the use case.
MODELS_TOPIC = "models"
MODELS_STATUS_TOPIC = "models.status"
DEFAULT_SCHEMA_REGISTRY_URL = "http://localhost:8081/apis/ccompat/v7"


class TopicNames(BaseSettings):
    """How topics are named and where their schemas live, shared by the loop's and the scorer's settings: a
    topic's default name (a use case's or the loop's) is looked up in ``topic_names`` (``{"default": "actual"}``),
    else prefixed with ``topic_prefix``; its value schema is the subject ``<topic>-value`` of the registry at
    ``schema_registry_url``."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_ignore_empty=True, hide_input_in_errors=True)

    topic_prefix: str = Field("", description="Prefix of every topic name (a namespace per team or environment).")
    topic_names: dict[str, str] = Field(default_factory=dict, description="JSON object renaming topics: "
                                        "default name -> actual name (wins over the prefix).")
    schema_registry_url: str = Field(DEFAULT_SCHEMA_REGISTRY_URL, description="Confluent-compatible schema "
                                     "registry API every client registers and resolves topic schemas at (local: "
                                     "`make registry-up`, Apicurio's /apis/ccompat/v7).")
    schema_registry_timeout_s: float = Field(10.0, gt=0, description="Seconds one schema registry request may "
                                             "take (retried 3 times, then an error).")
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


class LoopSettings(TopicNames, KafkaClientSettings):
    """Settings shared by replay, snapshot, training, registry and publishing."""

    # Which use case the steps run (a name of ml.use_cases); model_name and mlflow_experiment follow it.
    use_case: str | None = None
    topic_partitions: int = Field(3, ge=1)

    loop_data_dir: Path = Path(".local/data")
    # The scripts, styles and fonts of the Data Docs pages (``python -m infra.data_docs fetch`` prints the folder):
    # with it the pages load copies beside them, without it the CDNs (``ml.data_docs_assets``).
    data_docs_assets_dir: Path | None = None
    mlflow_tracking_uri: str = "sqlite:///.local/mlflow/mlflow.db"
    mlflow_artifact_root: Path = Path(".local/mlflow/artifacts")
    mlflow_experiment: str | None = None
    # Registered model name, and the key of its envelopes on the shared models topic.
    model_name: str | None = None
    # The Ed25519 private key that signs model envelopes (PEM PKCS8), only where the loop publishes: its text
    # (a secret variable, or the Airflow connection model_signing_conn_id: password = PEM, extra key_id) wins
    # over the file. Key id: derived from the public key unless set. See signer().
    model_signing_key: SecretStr | None = None
    model_signing_key_file: Path = DEFAULT_SIGNING_KEY_FILE
    model_signing_key_id: str | None = Field(None, pattern=KEY_ID_PATTERN)
    model_signing_conn_id: str = DEFAULT_SIGNING_CONN_ID
    # Public keys (<key id>.pem, optional revoked.json) the loop trusts when it reads the models topic back,
    # besides its own key: those of keys rotated out, as the scorers trust them.
    model_trusted_keys_dir: Path = DEFAULT_TRUSTED_KEYS_DIR

    # Training window: the latest N snapshots of the use case's labels topic form the training set.
    snapshot_window: int = Field(12, ge=1)
    # Processes that read a snapshot, this one included (0: one per two usable cores); see ml.snapshot_files.
    snapshot_workers: int = Field(0, ge=0)
    min_training_rows: int = Field(1000, ge=1)
    # The most recent days of the window are held out: challenger and champion are both scored on them.
    holdout_days: float = Field(7.0, gt=0)
    epochs: int = Field(20, ge=1)
    seed: int = 42
    # The gate's confidence interval of each margin metric's difference (a paired bootstrap on the holdout, seeded
    # by `seed`): a challenger replaces the champion only when the interval's bound on its worse side clears the
    # margin. Off: the point values alone decide, as before.
    gate_interval: bool = True
    gate_ci_level: float = Field(0.95, ge=0.5, le=0.999)
    gate_bootstrap_samples: int = Field(1000, ge=100)
    # A promoted candidate goes live in shadow first (scored beside the champion, to the shadow predictions topic)
    # rather than as the champion; the retraining DAG's Param `shadow` defaults to it.
    shadow_first: bool = False

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

    def signer(self) -> Signer:
        """The key that signs model envelopes: MODEL_SIGNING_KEY, else MODEL_SIGNING_KEY_FILE. With neither set
        and the default file missing (the local path), a development key pair is created, its public key trusted
        in ``model_trusted_keys_dir``, with a warning naming both files. Raises SigningKeyError."""
        signer = self._configured_signer()
        if signer is not None:
            return signer
        if self.model_signing_key_file != DEFAULT_SIGNING_KEY_FILE:
            raise SigningKeyError(f"model signing key file {self.model_signing_key_file} does not exist "
                                  "(MODEL_SIGNING_KEY_FILE): create a key pair with `python -m ml keys generate`")
        return create_dev_key(self.model_signing_key_file, self.model_trusted_keys_dir, self.model_signing_key_id)

    def _configured_signer(self) -> Signer | None:
        """The signer of the configured private key; None when there is none (no text, no file)."""
        if self.model_signing_key is not None:
            return Signer.from_pem(self.model_signing_key.get_secret_value().encode(), self.model_signing_key_id,
                                   source=f"MODEL_SIGNING_KEY (or the password of the Airflow connection "
                                          f"{self.model_signing_conn_id})")
        path = self.model_signing_key_file
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SigningKeyError(f"cannot read the model signing key {path} (MODEL_SIGNING_KEY_FILE): "
                                  f"{e.strerror}") from None
        return Signer.from_pem(pem, self.model_signing_key_id, source=f"{path} (MODEL_SIGNING_KEY_FILE)")

    def trust_store(self) -> TrustStore:
        """What the loop checks envelopes against when it reads the models topic back: the public keys of
        ``model_trusted_keys_dir`` and of its own signing key, if one is configured (none is created here)."""
        own = self._configured_signer()
        pinned = ((own.key_id, own.public_pem()),) if own is not None else ()
        return TrustStore(keys_dir=self.model_trusted_keys_dir, model_name=self.model_name, pinned=pinned)

    @property
    def snapshot_dir(self) -> Path:
        return self.loop_data_dir / "snapshots"

    @property
    def reports_dir(self) -> Path:
        return self.loop_data_dir / "reports"

    @property
    def scratch_dir(self) -> Path:
        """Where a task writes files it unlinks as soon as it has them open (``SnapshotRows.table``'s columns)."""
        return self.loop_data_dir / "scratch"
