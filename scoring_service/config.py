"""The scorer's settings: one typed object, read from environment variables once, overridden by CLI flags.

Every field maps to the upper-case environment variable of the same name (``batch_size`` -> ``BATCH_SIZE``);
an empty variable counts as unset. The use case (``USE_CASE``) names the topics it reads and writes; topic
naming and trust-folder variables are the ones ``ml.settings.LoopSettings`` reads, so one environment
configures the whole loop. A scorer holds public keys only: the private key that signs models is never one of
its settings. What only one use case knows (e.g. a decision threshold) is read by the use case
from its own ``<NAME>_*`` variables.
"""

from __future__ import annotations

import json
import logging
import socket
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from ml import use_cases
from ml.client_ids import scorer_group
from ml.kafka_client import KafkaClientSettings
from ml.settings import DEFAULT_TRUSTED_KEYS_DIR, TopicNames
from ml.signing import TrustStore
from ml.use_cases import UseCaseTopics

log = logging.getLogger(__name__)


class ScorerSettings(TopicNames, KafkaClientSettings):
    """Settings of one scorer replica."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, protected_namespaces=(), env_ignore_empty=True,
                                      hide_input_in_errors=True)

    use_case: str = Field(description="The use case it scores (`python -m ml use-cases`): its input topic in, "
                                      "its predictions and DLQ out; model name and group id follow it.")
    group_id: str = Field(None, description="Consumer group shared by the replicas (default <use case>-scorer).")
    replica_name: str = Field(default_factory=socket.gethostname, description="Stable, unique name of this "
                              "replica (pod or container name): a replacement under it resumes at once.")
    static_membership: bool = Field(True, description="Join as the static member <group id>-<replica name>: a "
                                    "restart under the same name causes no rebalance.")
    model_name: str = Field(None, description="Model name (envelope key) this scorer serves (default: the use "
                                              "case's).")
    # Large: a backlog is scored in few big batches, amortising the fixed cost of each call and commit;
    # batch_max_wait_ms bounds the latency of a live stream, whose batches stay small.
    batch_size: int = Field(10_000, ge=1, le=100_000, description="Score at most this many records per batch.")
    batch_max_wait_ms: int = Field(10, ge=1, le=60_000,
                                   description="Close a batch after this many ms even if not full.")
    delivery_mode: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once", description="at_least_once (commit after delivery) or exactly_once (transactions).")
    commit_interval_ms: int = Field(
        500, ge=0, le=60_000,
        description="at_least_once: commit delivered batches' offsets at most this often (a crash re-scores up "
                    "to this much; 0: every batch). exactly_once commits each batch.")
    transactional_id: str | None = Field(
        None, description="exactly_once only: stable per replica, so a restarted replica fences its old self "
                          "(default <group id>-<replica name>).")
    session_timeout_ms: int = Field(30_000, ge=6_000, le=300_000,
                                    description="Consumer group session timeout: how soon the partitions of a "
                                                "replica that died for good move to the others; longer than a "
                                                "broker failover, or a replica is fenced by its own rejoin.")
    heartbeat_interval_ms: int = Field(50, ge=10, le=10_000,
                                       description="Consumer group heartbeat interval: how soon a replica learns "
                                                   "that partitions move to it (a hand-over's pause).")
    http_port: int = Field(8000, ge=0, le=65535, description="Port of /healthz, /readyz, /metrics (0: any free).")
    max_model_bytes: int = Field(64 * 1024 * 1024, ge=1,
                                 description="Largest uncompressed .keras archive accepted (zip-bomb guard).")
    model_load_timeout_s: float = Field(120.0, gt=0, description="Refuse a model whose load or canary run "
                                        "takes longer (a load right after start also waits for the TensorFlow import).")
    canary_rows: int = Field(64, ge=1, description="Rows of the synthetic warm-up batch a model must pass.")
    liveness_timeout_s: float = Field(60.0, gt=0, description="/healthz fails when the loop stalls this long.")
    delivery_timeout_s: float = Field(30.0, gt=0, description="Give up on an unacknowledged record, a commit or "
                                                              "a transaction after this long (the scorer then stops).")
    model_trusted_keys_dir: Path = Field(
        DEFAULT_TRUSTED_KEYS_DIR, description="Folder of the Ed25519 public keys trusted to sign models (<key id>.pem "
        "each) and an optional revoked.json; read again for each model envelope, so rotation and revocation need no "
        "restart.")
    # NoDecode: a list is read from the environment as comma-separated ids or a JSON list (_id_list).
    model_revoked_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Key ids whose models are refused (comma-separated or a JSON list).")
    model_revoked_versions: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="Versions of the served model that are refused (comma-separated or a "
                                          "JSON list).")
    log_level: str = Field("INFO", description="Python log level.")

    @model_validator(mode="before")
    @classmethod
    def _follow_use_case(cls, data: Any) -> Any:
        """Model name, group id and transactional id default to the use case's."""
        if not isinstance(data, dict) or not data.get("use_case"):
            return data
        group = data.get("group_id") or scorer_group(data["use_case"])
        return {**data, "model_name": data.get("model_name") or data["use_case"], "group_id": group}

    @field_validator("model_revoked_keys", "model_revoked_versions", mode="before")
    @classmethod
    def _id_list(cls, value: Any) -> Any:
        """A JSON list, or comma-separated ids (as an environment variable or a flag holds them)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("use_case")
    @classmethod
    def _known(cls, name: str) -> str:
        use_cases.require_known(name)
        return name

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> ScorerSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        return self

    @property
    def producer_transactional_id(self) -> str:
        """exactly_once's transactional id: computed when read, so a copy under another replica name has its own."""
        return self.transactional_id or f"{self.group_id}-{self.replica_name}"

    @property
    def group_instance_id(self) -> str | None:
        """The static group member id of this replica, or None with static membership off."""
        return f"{self.group_id}-{self.replica_name}" if self.static_membership else None

    @cached_property
    def topics(self) -> UseCaseTopics:
        """The use case's topics as these settings name them (read per batch: computed once)."""
        return use_cases.use_case_class(self.use_case).topics.resolved(self)

    @property
    def input_topic(self) -> str:
        return self.topics.input

    @property
    def output_topic(self) -> str:
        return self.topics.predictions

    @property
    def dlq_topic(self) -> str:
        return self.topics.dlq

    @property
    def shadow_topic(self) -> str:
        """Where the shadow model's predictions go (``<predictions topic>.shadow``)."""
        return self.topics.shadow

    def trust_store(self) -> TrustStore:
        """The public keys and revocations model envelopes are checked against (the folder is read per envelope;
        absolute, so a refusal's reason names it unambiguously)."""
        return TrustStore(keys_dir=self.model_trusted_keys_dir.absolute(),
                          revoked_keys=frozenset(self.model_revoked_keys),
                          revoked_versions=frozenset(self.model_revoked_versions), model_name=self.model_name)
