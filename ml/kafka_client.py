"""Kafka client settings in librdkafka's convention, read in one place by every client of the loop and the scorer.

Three layers, later ones winning: a librdkafka properties file (``KAFKA_CLIENT_CONFIG=path``, e.g. the
``clients/<role>.properties`` the secured local broker writes, or a Confluent Cloud / MSK client file),
``KAFKA_``-prefixed environment variables mapped to librdkafka keys the way Confluent's images map them
(``KAFKA_SASL_USERNAME`` -> ``sasl.username``; ``__`` stands for ``_``), and ``KAFKA_BOOTSTRAP_SERVERS``.
Each client then adds what its own semantics need (group id, idempotence, isolation level), which wins.
Values are kept as secrets: a settings object's repr, dump or log line never shows a password.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ml.errors import LoopError

ENV_PREFIX = "KAFKA_"
DEFAULT_BOOTSTRAP_SERVERS = "localhost:9092"
# The first segment of every librdkafka configuration key: a KAFKA_ variable maps to a client property only when
# its key starts with one of these, so the launcher's own variables (KAFKA_PORT, KAFKA_DATA_DIR, KAFKA_SECURITY,
# KAFKA_HOST_PORT, ...) never reach a client.
LIBRDKAFKA_NAMESPACES = frozenset({
    "acks", "allow", "api", "auto", "background", "batch", "bootstrap", "broker", "builtin", "check", "client",
    "compression", "connections", "consume", "coordinator", "debug", "delivery", "dr", "enable", "fetch", "group",
    "heartbeat", "https", "internal", "isolation", "linger", "log", "max", "message", "metadata", "offset",
    "partition", "partitioner", "plugin", "queue", "queued", "receive", "reconnect", "request", "resolve",
    "retries", "retry", "sasl", "security", "session", "socket", "ssl", "statistics", "sticky", "topic",
    "transaction", "transactional",
})
NOT_PROPERTIES = frozenset({"KAFKA_CLIENT_CONFIG", "KAFKA_CLIENT_PROPERTIES"})


class KafkaConfigError(LoopError):
    """The Kafka client configuration (its properties file) cannot be read."""


def env_key(name: str) -> str | None:
    """The librdkafka key of environment variable ``name``, or None when it is not a client property."""
    if not name.startswith(ENV_PREFIX) or name in NOT_PROPERTIES:
        return None
    key = name[len(ENV_PREFIX):].lower().replace("__", "\0").replace("_", ".").replace("\0", "_")
    first = re.split(r"[._]", key, maxsplit=1)[0]
    if first not in LIBRDKAFKA_NAMESPACES or (key == first and key != "debug"):
        return None
    return key


def env_properties(environ: Mapping[str, str]) -> dict[str, str]:
    """The client properties named by ``KAFKA_*`` variables of ``environ`` (empty values count as unset)."""
    out = {}
    for name, value in environ.items():
        key = env_key(name)
        if key is not None and value != "":
            out[key] = value
    return out


def read_properties(path: Path) -> dict[str, str]:
    """A Java-style properties file as librdkafka reads it: ``key=value`` (or ``key: value``) lines, ``#``/``!``
    comments; raises KafkaConfigError naming the file and line when it cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise KafkaConfigError(f"cannot read the Kafka client configuration {path} (KAFKA_CLIENT_CONFIG): "
                               f"{e.strerror}") from e
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        sep = min((i for i in (line.find("="), line.find(":")) if i > 0), default=-1)
        if sep < 0:
            raise KafkaConfigError(f"{path}:{number}: expected key=value")
        out[line[:sep].strip()] = line[sep + 1:].strip()
    return out


class KafkaClientSettings(BaseSettings):
    """Where and how the clients of one service reach Kafka (a mixin of the loop's and the scorer's settings)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_ignore_empty=True, hide_input_in_errors=True)

    kafka_bootstrap_servers: str = Field(
        None, description="Kafka bootstrap servers (default: the client file's bootstrap.servers, else "
                          f"{DEFAULT_BOOTSTRAP_SERVERS}).")
    kafka_client_config: Path | None = Field(
        None, description="librdkafka properties file (security.protocol, sasl.*, ssl.*); KAFKA_<KEY> "
                          "variables (KAFKA_SASL_USERNAME: sasl.username) win.")
    kafka_client_properties: dict[str, SecretStr] = Field(
        None, repr=False, description="Client properties from the file and KAFKA_* variables (filled when not "
                                      "given; values are secrets).")

    @model_validator(mode="before")
    @classmethod
    def _read_client_config(cls, data: Any) -> Any:
        """Fill the properties from the file and the environment, and the bootstrap servers from them."""
        if not isinstance(data, dict):
            return data
        props = data.get("kafka_client_properties")
        if props is None:
            path = data.get("kafka_client_config")
            props = {**(read_properties(Path(path)) if path else {}), **env_properties(os.environ)}
        props = {k: v.get_secret_value() if isinstance(v, SecretStr) else str(v) for k, v in props.items()}
        bootstrap = data.get("kafka_bootstrap_servers") or props.get("bootstrap.servers") or DEFAULT_BOOTSTRAP_SERVERS
        props.pop("bootstrap.servers", None)
        return {**data, "kafka_bootstrap_servers": bootstrap, "kafka_client_properties": props}

    def kafka_config(self, own: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The librdkafka configuration of one client: the shared properties, the bootstrap servers, then the
        client's ``own`` settings (group id, idempotence, ...)."""
        shared = {k: v.get_secret_value() for k, v in self.kafka_client_properties.items()}
        return {**shared, "bootstrap.servers": self.kafka_bootstrap_servers, **(own or {})}

    @property
    def kafka_identity(self) -> str:
        """Where and as whom the clients connect, for log lines (never a credential): ``host:port over SASL_SSL as
        'loop'``, or just the servers in plaintext."""
        props = {k: v.get_secret_value() for k, v in self.kafka_client_properties.items()
                 if k in ("security.protocol", "sasl.username")}
        text = self.kafka_bootstrap_servers
        if "security.protocol" in props:
            text += f" over {props['security.protocol'].upper()}"
        return text + (f" as {props['sasl.username']!r}" if "sasl.username" in props else "")

    @property
    def kafka_security(self) -> str:
        """The security protocol the clients use (``plaintext`` unless configured), for log lines and checks."""
        value = self.kafka_client_properties.get("security.protocol")
        return value.get_secret_value().lower() if value is not None else "plaintext"


class ClientErrors:
    """A client's ``error_cb``: keeps the last errors librdkafka reported, to say why a request got no answer."""

    def __init__(self) -> None:
        self.errors: deque[KafkaError] = deque(maxlen=32)

    def __call__(self, err: KafkaError) -> None:
        self.errors.append(err)

    def reason(self, settings: KafkaClientSettings) -> str | None:
        """Refused credentials or an untrusted certificate, in words that say what to check; else None."""
        by_code = {e.code(): e for e in self.errors}
        if (auth := by_code.get(KafkaError._AUTHENTICATION)) is not None:
            user = settings.kafka_client_properties.get("sasl.username")
            who = f"the credentials of {user.get_secret_value()!r}" if user else "this client's credentials"
            return f"{who} were refused ({auth.str()}); check sasl.username and sasl.password"
        if (tls := by_code.get(KafkaError._SSL)) is not None:
            ca = settings.kafka_client_properties.get("ssl.ca.location")
            trusted = ca.get_secret_value() if ca else "the system's CAs"
            return f"TLS failed ({tls.str()}); this client trusts {trusted} (ssl.ca.location)"
        return None
