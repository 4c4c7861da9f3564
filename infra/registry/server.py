"""Run Apicurio Registry locally (its Confluent-compatible API at ``/apis/ccompat/v7``) from the cached server, its
schemas kept in Kafka (``kafkasql`` storage: the journal topic ``kafkasql-journal``), so they survive a restart.

Used by ``make registry-up`` / ``make registry-down`` (via ``python -m infra.registry``), the pytest fixture
``schema_registry_url`` and ``benchmarks/registry_start.py``. A ``Registry`` is one server: its own process
group, ports and folder (pid file, log, temporary files), so it can be stopped from another process.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra import jvm
from infra.kafka import security
from infra.local_service import AbsolutePath, LocalService, answers, free_port
from infra.registry import distribution
from infra.registry.distribution import Distribution, RegistrySetupError
from ml.kafka_client import KafkaConfigError, read_properties

PID_FILE = "registry.pid"
LOG_FILE = "registry.log"
CCOMPAT_PATH = "/apis/ccompat/v7"
# C1 only, as for the broker (infra/kafka/broker.py): on two cores the server was ready sooner and smaller without
# C2's compile bursts (docs/performance.md). Here and in docker-compose.yml (JAVA_OPTIONS).
JVM_FLAGS = ("-XX:TieredStopAtLevel=1",)
# At start-up kafkasql reads its topics until a poll comes back empty, several times: each costs a whole poll
# timeout (5 s by default). A record ends a poll at once, so a shorter timeout only adds idle polls. Here and in
# docker-compose.yml (APICURIO_KAFKASQL_CONSUMER_POLL_TIMEOUT).
POLL_TIMEOUT_MS = 1000


class RegistryConfig(BaseSettings):
    """Where a local registry listens, keeps its files and its schemas; from ``REGISTRY_<FIELD>`` variables
    (REGISTRY_PORT, REGISTRY_MANAGEMENT_PORT, REGISTRY_DATA_DIR, REGISTRY_HEAP, REGISTRY_JAVA_HOME,
    REGISTRY_DIST_CACHE), KAFKA_BOOTSTRAP_SERVERS and KAFKA_CLIENT_CONFIG when not given."""

    # populate_by_name: callers pass kafka_bootstrap_servers=, the environment KAFKA_BOOTSTRAP_SERVERS.
    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore", frozen=True, populate_by_name=True,
                                      env_ignore_empty=True, hide_input_in_errors=True)

    data_dir: AbsolutePath = Path(".local/registry")
    port: int = 8081
    # Quarkus' management interface (health, metrics) listens on 0.0.0.0:9000 unless moved: loopback, and clear
    # of Kafka (9092-9093), Airflow (8080), MLflow (5000) and the scorer (8000).
    management_port: int = 8091
    host: str = "127.0.0.1"
    heap: str = "320m"
    # The storage: Kafka topics through these brokers (kafkasql). The broker must run before the registry starts.
    kafka_bootstrap_servers: str = Field("localhost:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    # A secured broker: the librdkafka properties of the principal the storage uses (its security protocol, SCRAM or
    # PLAIN credentials and PEM CA), e.g. the admin's <KAFKA_DATA_DIR>/clients/admin.properties; None: plaintext.
    kafka_client_config: Path | None = Field(None, validation_alias="KAFKA_CLIENT_CONFIG")
    # System properties beyond the listeners and the storage (e.g. apicurio.kafkasql.topic for a journal of its own).
    overrides: dict[str, str] = {}
    version: str = distribution.REGISTRY_VERSION
    dist_cache: Path = Field(default_factory=distribution.default_cache_dir)
    java_home: Path | None = None  # None: infra.jvm.find_java looks for a Java 21+

    @property
    def ccompat_url(self) -> str:
        """The Confluent-compatible API: what SCHEMA_REGISTRY_URL and confluent-kafka's SchemaRegistryClient take."""
        return f"http://{self.host}:{self.port}{CCOMPAT_PATH}"


def scratch_dir(cfg: RegistryConfig) -> Path:
    """Where the server writes its scratch files (snapshots, imports, the JVM's temporary files): its own folder."""
    return cfg.data_dir / "tmp"


def find_java(cfg: RegistryConfig) -> tuple[str, int]:
    """The Java 21+ runtime the registry runs on, and its release (``infra.jvm.find_java``: REGISTRY_JAVA_HOME,
    else JAVA_HOME or PATH, else the newest under /usr/lib/jvm). Raises RegistrySetupError when there is none."""
    return jvm.find_java(distribution.JAVA_RELEASE, java_home=cfg.java_home, java_home_setting="REGISTRY_JAVA_HOME",
                         needed_by=f"Apicurio Registry {cfg.version}", install=distribution.JAVA_INSTALL_HINT,
                         error=RegistrySetupError)


def system_properties(cfg: RegistryConfig) -> dict[str, str]:
    """The server's settings: every listener on loopback, the schemas in Kafka, its scratch files in its folder."""
    scratch = str(scratch_dir(cfg))
    props = {
        "quarkus.http.host": cfg.host,
        "quarkus.http.port": str(cfg.port),
        "quarkus.management.host": cfg.host,
        "quarkus.management.port": str(cfg.management_port),
        "apicurio.storage.kind": "kafkasql",
        "apicurio.kafkasql.bootstrap.servers": cfg.kafka_bootstrap_servers,
        "apicurio.kafkasql.consumer.poll.timeout": str(POLL_TIMEOUT_MS),
        # Both default to /tmp, shared by every user of the machine.
        "apicurio.storage.snapshot.location": scratch,
        "apicurio.import.work-dir": scratch,
        "java.io.tmpdir": scratch,
        # As the official image runs it: Quarkus' log manager formats the JDK's own logging too.
        "java.util.logging.manager": "org.jboss.logmanager.LogManager",
    }
    props.update(cfg.overrides)
    return props


# librdkafka settings a Java client of the storage takes over (bootstrap.servers: KAFKA_BOOTSTRAP_SERVERS instead).
CLIENT_KEYS = frozenset({"bootstrap.servers", "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username",
                         "sasl.password", "ssl.ca.location"})
# Apicurio 3 hands every property named apicurio.kafka.common.<key> to each of its storage's Kafka clients (consumer,
# producer, admin). Its own apicurio.kafkasql.security.* settings do not fit: with sasl.enabled they force an OAuth
# JAAS login, and they set a trust store only with a password, which Kafka refuses for a PEM one.
COMMON_PREFIX = "apicurio.kafka.common."


def kafka_client_properties(settings: Mapping[str, str]) -> dict[str, str]:
    """The Java Kafka client properties equal to librdkafka ``settings`` (a client properties file's): security
    protocol, SASL login, the CA as a PEM trust store. Raises RegistrySetupError naming a setting it cannot carry."""
    unknown = sorted(set(settings) - CLIENT_KEYS)
    if unknown:
        raise RegistrySetupError(f"the registry's Kafka clients cannot take {', '.join(unknown)} from the client "
                                 f"properties (KAFKA_CLIENT_CONFIG); it takes {', '.join(sorted(CLIENT_KEYS))}")
    protocol = settings.get("security.protocol", "PLAINTEXT").upper()
    props = {"security.protocol": protocol}
    mechanism = (settings.get("sasl.mechanism") or settings.get("sasl.mechanisms") or "").upper()
    if protocol.startswith("SASL_"):
        if mechanism not in ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN") or "sasl.username" not in settings:
            raise RegistrySetupError(f"{protocol} needs sasl.mechanism SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN with "
                                     f"sasl.username and sasl.password (got {mechanism or 'no mechanism'})")
        props["sasl.mechanism"] = mechanism
        props["sasl.jaas.config"] = security.jaas_config(settings["sasl.username"], settings.get("sasl.password", ""),
                                                         mechanism)
    if protocol.endswith("SSL"):
        if "ssl.ca.location" in settings:
            props["ssl.truststore.type"] = "PEM"
            props["ssl.truststore.location"] = str(Path(settings["ssl.ca.location"]).resolve())
        # Apicurio turns host name verification off by default (an empty algorithm); librdkafka checks, so do we.
        props["ssl.endpoint.identification.algorithm"] = "https"
    return props


def kafka_client_environment(cfg: RegistryConfig) -> dict[str, str]:
    """The environment that gives the registry's Kafka clients the settings of ``cfg.kafka_client_config`` ({} when
    unset): variables, so that no password shows on the command line. Raises RegistrySetupError when the file cannot
    be read or carried over."""
    if cfg.kafka_client_config is None:
        return {}
    try:
        settings = read_properties(cfg.kafka_client_config)
    except KafkaConfigError as exc:
        raise RegistrySetupError(str(exc)) from None
    props = kafka_client_properties(settings)
    # Quarkus maps APICURIO_KAFKA_COMMON_SASL_JAAS_CONFIG to apicurio.kafka.common.sasl.jaas.config.
    return {(COMMON_PREFIX + key).upper().replace(".", "_"): value for key, value in props.items()}


def own_topics(prefix: str) -> dict[str, str]:
    """System properties (for ``RegistryConfig.overrides``) that give a registry Kafka topics of its own, named
    ``<prefix>`` + the default names: its journal, its snapshots and its events. Registries that share the
    topics share the schemas (replicas of one registry)."""
    return {"apicurio.kafkasql.topic": f"{prefix}kafkasql-journal",
            "apicurio.kafkasql.snapshots.topic": f"{prefix}kafkasql-snapshots",
            "apicurio.events.kafka.topic": f"{prefix}registry-events"}


def scratch_config(kafka_bootstrap_servers: str, name: str, kafka_client_config: Path | None = None,
                   **overrides: str) -> RegistryConfig:
    """A throw-away registry's settings (tests, benchmarks): free loopback ports, a temporary folder, and Kafka
    topics of its own named ``<name>-<random>-...`` (see ``own_topics``), reached with the client properties
    ``kafka_client_config`` (a secured broker); ``overrides`` are further system properties."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}-"
    return RegistryConfig(data_dir=Path(tempfile.mkdtemp(prefix=f"registry-{name}-")), port=free_port(),
                          management_port=free_port(), kafka_bootstrap_servers=kafka_bootstrap_servers,
                          kafka_client_config=kafka_client_config, overrides={**own_topics(tag), **overrides})


def topics_of(cfg: RegistryConfig) -> list[str]:
    """The Kafka topics ``own_topics`` gave a registry ([] for one on the default topics)."""
    return [cfg.overrides[key] for key in own_topics("") if key in cfg.overrides]


class Registry(LocalService):
    """One registry server from ``cfg``, run from ``dist`` (fetched for ``cfg.version`` on start when not given)."""

    pid_name, log_name, error = PID_FILE, LOG_FILE, RegistrySetupError
    poll_s = 0.25  # ready within seconds: a finer poll than the default half second, for a truer start time

    def __init__(self, cfg: RegistryConfig, dist: Distribution | None = None) -> None:
        super().__init__(cfg.data_dir)
        self.cfg, self.dist = cfg, dist
        self.name, self.host = f"Apicurio Registry on http://{cfg.host}:{cfg.port}", cfg.host
        # Its own scratch folder is in the command line: another registry's JVM is not this one.
        self.marker = f"-Djava.io.tmpdir={scratch_dir(cfg)}".encode()

    @cached_property
    def java(self) -> str:
        return find_java(self.cfg)[0]

    def ports(self) -> list[tuple[int, str, str]]:
        return [(self.cfg.port, "registry HTTP API", "REGISTRY_PORT"),
                (self.cfg.management_port, "registry management interface", "REGISTRY_MANAGEMENT_PORT")]

    def environment(self) -> dict[str, str]:
        return kafka_client_environment(self.cfg)

    def prepare(self) -> None:
        """Find Java 21+, check the Kafka client properties and fetch the server if none was given (each raises
        before anything starts)."""
        self.java  # noqa: B018 - a missing Java 21 is named before the download
        kafka_client_environment(self.cfg)
        if self.dist is None:
            self.dist = distribution.fetch(self.cfg.dist_cache, self.cfg.version)
        scratch_dir(self.cfg).mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            self.java,
            f"-Xms{self.cfg.heap}", f"-Xmx{self.cfg.heap}",
            *JVM_FLAGS,
            *(f"-D{k}={v}" for k, v in system_properties(self.cfg).items()),
            "-jar", str(self.dist.home / distribution.RUN_JAR),
        ]

    def describe(self) -> str:
        login = f" (as in {self.cfg.kafka_client_config})" if self.cfg.kafka_client_config else ""
        return f"; Confluent API {self.cfg.ccompat_url}, schemas in Kafka at {self.cfg.kafka_bootstrap_servers}{login}"

    def healthy(self) -> bool:
        """True once the server says it is ready (its storage has read the Kafka journal) and the Confluent API
        answers."""
        ready = f"http://{self.cfg.host}:{self.cfg.management_port}/health/ready"
        return answers(ready) and answers(f"{self.cfg.ccompat_url}/subjects")
