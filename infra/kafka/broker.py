"""Run an Apache Kafka broker node (KRaft: broker and controller in one JVM) from the cached jars.

Used by ``make kafka-up`` / ``make kafka-down`` (via ``python -m infra.kafka``) and by the pytest fixtures.
A ``Broker`` is one node: its own process group, ports, and data folder with its logs and pid file, so it can
be stopped from another process and nothing is left behind. A node of a cluster (``infra.kafka.cluster``) also
knows its peers: the controller quorum and the replication of the internal topics follow the cluster's size.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.kafka import distribution, security as sec  # "sec": BrokerConfig.security is the mode
from infra.kafka.distribution import Distribution, require_tool
from infra.kafka.errors import KafkaSetupError
from infra.local_service import AbsolutePath, LocalService, free_port  # noqa: F401 - free_port: callers pick ports
from ml.kafka_client import KafkaConfigError, read_properties
from ml.topics import replication

LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
PID_FILE = "broker.pid"
LOG_FILE = "broker.log"
# The broker's collector and compiler, here and in docker-compose.yml (KAFKA_JVM_PERFORMANCE_OPTS). Z: short
# pauses, where G1's young collections stopped the broker and held up every produce and fetch. C1 only: on a
# small machine C2's compile bursts took the CPU from the clients the broker serves; C1 code was no slower.
JVM_FLAGS = ("-XX:+UseZGC", "-XX:TieredStopAtLevel=1")
# A TLS broker keeps C2 (here and in infra/compose/sasl-ssl.yml): the intrinsics that make AES-GCM fast are C2's,
# and C1-compiled TLS made the broker, not the clients, the bottleneck (docs/performance.md).
TLS_JVM_FLAGS = ("-XX:+UseZGC",)


def jvm_flags(cfg: BrokerConfig) -> tuple[str, ...]:
    """The collector and compiler flags of a node: TLS_JVM_FLAGS when it is secured, else JVM_FLAGS."""
    return TLS_JVM_FLAGS if cfg.security == "sasl_ssl" else JVM_FLAGS


class BrokerConfig(BaseSettings):
    """Where a local broker node listens and keeps its files, and how it is secured; from ``KAFKA_<FIELD>``
    variables (KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_DATA_DIR, KAFKA_SECURITY, KAFKA_VERSION, KAFKA_DIST_CACHE)
    when not given."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore", frozen=True, hide_input_in_errors=True)

    # Nodes of the cluster (KAFKA_NODES): 1 runs one node in data_dir; more run node i in data_dir/node-<i> on
    # port + 2(i-1) and the port after it (infra.kafka.cluster.node_configs), every node broker and controller.
    nodes: int = Field(1, ge=1, le=9)
    # Set by node_configs for a node of a cluster: its id, and (id, port, controller port) of every node.
    node_id: int = 1
    peers: tuple[tuple[int, int, int], ...] = ()
    cluster_dir: Path | None = None  # a cluster's folder: its id, CA and client settings, shared by the nodes
    data_dir: AbsolutePath = Path(".local/kafka")
    port: int = 9092
    controller_port: int = 9093  # port + 1 unless set
    host: str = "127.0.0.1"
    heap: str = "768m"
    # plaintext: anyone may do anything (the default, for a laptop); sasl_ssl: TLS, a SCRAM principal per role
    # (infra.kafka.security.ROLES) and ACLs, with the CA and each role's client settings in the data folder.
    security: Literal["plaintext", "sasl_ssl"] = "plaintext"
    # Broker settings beyond the single-node defaults of server_properties (e.g. message.max.bytes).
    overrides: dict[str, str] = {}
    version: str = distribution.KAFKA_VERSION
    dist_cache: Path | None = None  # None: distribution.default_cache_dir()

    @model_validator(mode="before")
    @classmethod
    def _controller_next_to_broker(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("controller_port") is None:
            data = {**data, "controller_port": int(data.get("port", cls.model_fields["port"].default)) + 1}
        return data

    @property
    def bootstrap_servers(self) -> str:
        """This node's listener (what its health check asks)."""
        return f"{self.host}:{self.port}"

    @property
    def cluster_bootstrap_servers(self) -> str:
        """Every node's listener: what clients are given, so that any one node may be down."""
        if not self.peers:
            return self.bootstrap_servers
        return ",".join(f"{self.host}:{port}" for _, port, _ in self.peers)

    @property
    def quorum_voters(self) -> str:
        """``controller.quorum.voters``: every node is a controller."""
        peers = self.peers or ((self.node_id, self.port, self.controller_port),)
        return ",".join(f"{node}@{self.host}:{controller}" for node, _, controller in peers)

    @property
    def cluster_size(self) -> int:
        return len(self.peers) or 1

    @property
    def shared_dir(self) -> Path:
        """Where the files every node of the cluster shares live (the node's own folder when it is alone)."""
        return self.cluster_dir or self.data_dir

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "kraft-logs"

    @property
    def props_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def pid_file(self) -> Path:
        return self.data_dir / PID_FILE

    @property
    def secured(self) -> bool:
        return self.security == "sasl_ssl"

    @property
    def tls(self) -> sec.TlsFiles:
        """The CA and broker certificates of a secured node (one CA and certificate for all nodes of a cluster)."""
        return sec.TlsFiles(self.shared_dir / "tls")

    @property
    def clients_dir(self) -> Path:
        return self.shared_dir / "clients"

    def client_config(self, role: str = sec.ADMIN) -> Path:
        """The librdkafka properties file of ``role`` (one of ``security.ROLES``) on a secured node."""
        if role not in sec.ROLES:
            raise ValueError(f"unknown role {role!r}; the roles are {', '.join(sec.ROLES)}")
        return sec.client_file(self.clients_dir, role)

    def client_settings(self, role: str = sec.ADMIN) -> dict[str, str]:
        """librdkafka settings of a client of this node: its bootstrap servers, and on a secured node the
        credentials of ``role`` (read from its client file)."""
        if not self.secured:
            return {"bootstrap.servers": self.cluster_bootstrap_servers}
        return read_properties(self.client_config(role))


def server_properties(cfg: BrokerConfig, admin_password: str | None = None) -> dict[str, str]:
    """Broker settings for one node: the internal topics (consumer offsets, transactions, share groups) and
    auto-created topics replicated as ``replication`` says for the cluster's size, so that consumer groups and
    transactions work on one node and survive a broker on three; no initial rebalance delay so tests are quick.
    A secured node (``cfg.security`` sasl_ssl) takes ``security.server_properties`` over them and needs
    ``admin_password``."""
    factor, min_isr = (str(n) for n in replication(cfg.cluster_size))
    props = {
        "process.roles": "broker,controller",
        "node.id": str(cfg.node_id),
        "controller.quorum.voters": cfg.quorum_voters,
        "listeners": f"PLAINTEXT://{cfg.host}:{cfg.port},CONTROLLER://{cfg.host}:{cfg.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{cfg.host}:{cfg.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(cfg.log_dirs),
        "num.partitions": "1",
        "default.replication.factor": factor,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": factor,
        "transaction.state.log.replication.factor": factor,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": factor,
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        # Compaction is on by default; keep the cleaner small for a laptop-sized JVM.
        "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
    }
    if cfg.secured:
        if admin_password is None:
            raise KafkaSetupError("a sasl_ssl broker's settings need the admin password (it talks to itself as admin)")
        props.update(sec.server_properties(cfg.host, cfg.port, cfg.controller_port, cfg.tls, admin_password))
    props.update(cfg.overrides)
    return props


def _new_cluster_id() -> str:
    # Kafka's Uuid.toString(): URL-safe base64 of 16 random bytes without padding.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def cluster_id(cfg: BrokerConfig) -> str:
    """The id the storage is formatted with: new for a lone node; for a node of a cluster the cluster's, made once
    and kept in its folder, since every node of one cluster must carry the same."""
    if not cfg.peers:
        return _new_cluster_id()
    path = cfg.shared_dir / "cluster.id"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_new_cluster_id() + "\n")
    return path.read_text().strip()


def _java_cmd(java: str, dist: Distribution, cfg: BrokerConfig, *main: str) -> list[str]:
    return [
        java,
        f"-Xms{cfg.heap}", f"-Xmx{cfg.heap}",
        *jvm_flags(cfg),
        # As Kafka's own start scripts do: every collection and its pause, in the data directory.
        f"-Xlog:gc*:file={cfg.data_dir / 'gc.log'}:time,uptime,level,tags:filecount=2,filesize=20M",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        "-cp", dist.classpath,
        *main,
    ]


def _formatted(cfg: BrokerConfig) -> bool:
    return (cfg.log_dirs / "meta.properties").exists()


def _argfile_line(arg: str) -> str:
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"\n'


def _format_storage(java: str, dist: Distribution, cfg: BrokerConfig, props_file: Path,
                    scram: Sequence[str] = (), secrets_in_args: Sequence[str] = ()) -> None:
    """Format the storage unless done; ``scram``: further arguments (``--add-scram``) whose ``secrets_in_args`` must
    not show in the process list or in an error message."""
    if _formatted(cfg):
        return
    # "=": a random id may start with "-", which the tool would take for an option.
    main = ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id(cfg)}", "-c", str(props_file)]
    argfile = cfg.data_dir / ".storage-format.args"
    if scram:
        # Passwords go through a java @argfile (owner-only, removed after): never on a command line others can read.
        sec.write_private(argfile, "".join(_argfile_line(arg) for arg in [*main, *scram]))
        main = [f"@{argfile}"]
    try:
        proc = subprocess.run(_java_cmd(java, dist, cfg, *main), capture_output=True, text=True, check=False)
    finally:
        argfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        for secret in secrets_in_args:
            output = output.replace(secret, "***")
        raise KafkaSetupError(f"formatting Kafka storage in {cfg.log_dirs} failed:\n{output}")


class Broker(LocalService):
    """One broker node from ``cfg``, run with the jars of ``dist`` (fetched for ``cfg.version`` on start when
    not given)."""

    pid_name, log_name = PID_FILE, LOG_FILE
    error = KafkaSetupError
    start_timeout, poll_s = 90.0, 0.2

    def __init__(self, cfg: BrokerConfig, dist: Distribution | None = None) -> None:
        super().__init__(cfg.data_dir)
        self.cfg, self.dist = cfg, dist

    @property
    def name(self) -> str:
        node = f"node {self.cfg.node_id} of {self.cfg.cluster_size} " if self.cfg.peers else ""
        return f"Kafka broker {node}on {self.cfg.bootstrap_servers}" + (" (SASL_SSL)" if self.cfg.secured else "")

    @property
    def host(self) -> str:
        return self.cfg.host

    @property
    def marker(self) -> bytes:
        # The main class and this node's properties file: another node's JVM is not this one.
        return b"kafka.Kafka\0" + str(self.cfg.props_file).encode()

    @cached_property
    def java(self) -> str:
        return require_tool("java", "Java 17")

    def ports(self) -> list[tuple[int, str, str]]:
        return [(self.cfg.port, "Kafka broker listener", "KAFKA_PORT"),
                (self.cfg.controller_port, "Kafka controller listener", "KAFKA_CONTROLLER_PORT")]

    def prepare(self) -> None:
        """Fetch the jars if none were given, write server.properties, format the storage on first start; a secured
        node first makes (or reuses) its certificates and its principals' passwords and writes their client files."""
        if self.dist is None:
            self.dist = distribution.fetch(self.cfg.version, self.cfg.dist_cache)
        if not self.cfg.secured:
            if self._holds_secured_data():
                # A guard: the data of a secured node would be served to anyone.
                raise KafkaSetupError(f"{self.cfg.data_dir} holds a sasl_ssl broker (client settings in "
                                      f"{self.cfg.clients_dir}): start it with KAFKA_SECURITY=sasl_ssl, or use another "
                                      f"KAFKA_DATA_DIR")
            self.cfg.props_file.write_text("".join(f"{k}={v}\n" for k, v in server_properties(self.cfg).items()))
            _format_storage(self.java, self.dist, self.cfg, self.cfg.props_file)
            return
        tls = sec.ensure_tls(self.cfg.tls.tls_dir, self.cfg.host)
        try:
            # Passwords are made only with the storage: SCRAM credentials exist from its format on.
            passwords = sec.passwords(self.cfg.clients_dir, create=not _formatted(self.cfg))
        except LookupError as missing:
            raise KafkaSetupError(f"the storage in {self.cfg.log_dirs} exists but the SCRAM passwords it was formatted "
                                  f"with are not in {missing} (formatted by a plaintext broker?): use another "
                                  f"KAFKA_DATA_DIR, or remove {self.cfg.data_dir} to start afresh") from None
        sec.write_client_files(self.cfg.clients_dir, self.cfg.cluster_bootstrap_servers, passwords, tls.ca_cert)
        props = server_properties(self.cfg, passwords[sec.ADMIN])
        sec.write_private(self.cfg.props_file, "".join(f"{k}={v}\n" for k, v in props.items()))
        _format_storage(self.java, self.dist, self.cfg, self.cfg.props_file,
                        scram=sec.scram_arguments(passwords), secrets_in_args=list(passwords.values()))

    def command(self) -> list[str]:
        return _java_cmd(self.java, self.dist, self.cfg, "kafka.Kafka", str(self.cfg.props_file))

    def _holds_secured_data(self) -> bool:
        return any(self.cfg.clients_dir.glob("*.properties"))

    def describe(self) -> str:
        if not self.cfg.secured:
            hint = " (a sasl_ssl broker's: set KAFKA_SECURITY=sasl_ssl)" if self._holds_secured_data() else ""
            return f"; data in {self.cfg.data_dir}{hint}"
        return (f"; data in {self.cfg.data_dir}; SCRAM-SHA-512 over TLS: client settings of "
                f"{', '.join(sec.ROLES)} in {self.cfg.clients_dir}/<role>.properties, CA {self.cfg.tls.ca_cert}")

    def healthy(self) -> bool:
        """True once the broker answers a metadata request (on a secured node: to the admin principal)."""
        from confluent_kafka.admin import AdminClient

        try:
            settings = self.cfg.client_settings()
        except KafkaConfigError:
            return False  # a secured node's client files are written on its first start
        admin = AdminClient({**settings, "bootstrap.servers": self.cfg.bootstrap_servers, "log_level": 0})
        try:
            return bool(admin.list_topics(timeout=1.0).brokers)
        except Exception:  # noqa: BLE001 - KafkaException until the listener is up
            return False
