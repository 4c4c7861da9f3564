"""Run a single-node Apache Kafka broker (KRaft: broker and controller in one JVM) from the cached jars.

Used by ``make kafka-up`` / ``make kafka-down`` (via ``python -m infra.kafka``) and by the pytest fixture.
The broker runs in its own process group with its data, logs and pid file in one folder, so it can be
stopped from another process and nothing is left behind.
"""

from __future__ import annotations

import base64
import logging
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from infra import process_group
from infra.kafka.distribution import Distribution, require_tool
from infra.kafka.errors import KafkaSetupError

log = logging.getLogger(__name__)

LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
PID_FILE = "broker.pid"
LOG_FILE = "broker.log"
# The broker's collector and compiler, here and in docker-compose.yml (KAFKA_JVM_PERFORMANCE_OPTS). Z: pauses
# under a millisecond, where G1's young collections stopped the broker for 12-95 ms every 1.5-3 s. C1 only:
# on a 2-core machine C2's compile bursts (40-50% of a core for the first 35 s of a stream, again after each
# new kind of request) took the CPU from the clients the broker serves; C1 code was no slower for them.
JVM_FLAGS = ("-XX:+UseZGC", "-XX:TieredStopAtLevel=1")


@dataclass(frozen=True)
class BrokerConfig:
    """Where a local broker listens and keeps its files."""

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    host: str = "127.0.0.1"
    heap: str = "768m"
    # Broker settings beyond the single-node defaults below (e.g. message.max.bytes).
    overrides: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "kraft-logs"

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def pid_file(self) -> Path:
        return self.data_dir / PID_FILE


def server_properties(cfg: BrokerConfig) -> dict[str, str]:
    """Broker settings for one node: every internal topic at replication factor 1 and min ISR 1, so that
    consumer groups, transactions and share groups work; no initial rebalance delay so tests are quick."""
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{cfg.host}:{cfg.controller_port}",
        "listeners": f"PLAINTEXT://{cfg.host}:{cfg.port},CONTROLLER://{cfg.host}:{cfg.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{cfg.host}:{cfg.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(cfg.log_dirs),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        # Compaction is on by default; keep the cleaner small for a laptop-sized JVM.
        "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
    }
    props.update(cfg.overrides)
    return props


def port_in_use(host: str, port: int) -> bool:
    """True if something already listens on (host, port) or the port cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS considers free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _cluster_id() -> str:
    # Kafka's Uuid.toString(): URL-safe base64 of 16 random bytes without padding.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def running_pid(cfg: BrokerConfig) -> int | None:
    """The pid of the broker recorded in ``cfg.data_dir`` if that process is still alive."""
    return process_group.recorded_pid(cfg.pid_file, b"kafka.Kafka")


def log_tail(cfg: BrokerConfig, lines: int = 25) -> str:
    try:
        return "\n".join(cfg.log_file.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no broker log)"


def _java_cmd(java: str, dist: Distribution, cfg: BrokerConfig, *main: str) -> list[str]:
    return [
        java,
        f"-Xms{cfg.heap}", f"-Xmx{cfg.heap}",
        *JVM_FLAGS,
        # As Kafka's own start scripts do: every collection and its pause, in the data directory.
        f"-Xlog:gc*:file={cfg.data_dir / 'gc.log'}:time,uptime,level,tags:filecount=2,filesize=20M",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        "-cp", dist.classpath,
        *main,
    ]


def _format_storage(java: str, dist: Distribution, cfg: BrokerConfig, props_file: Path) -> None:
    if (cfg.log_dirs / "meta.properties").exists():
        return
    cmd = _java_cmd(java, dist, cfg, "kafka.tools.StorageTool", "format",
                    # "=": a random id may start with "-", which the tool would take for an option.
                    f"--cluster-id={_cluster_id()}", "-c", str(props_file))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise KafkaSetupError(f"formatting Kafka storage in {cfg.log_dirs} failed:\n{proc.stdout}{proc.stderr}")


def wait_until_ready(cfg: BrokerConfig, proc: subprocess.Popen | None, timeout: float = 90.0) -> float:
    """Block until the broker answers a metadata request; return the seconds waited.

    Raises KafkaSetupError with the log tail if the JVM exits or the timeout passes.
    """
    from confluent_kafka.admin import AdminClient

    start = time.monotonic()
    admin = AdminClient({"bootstrap.servers": cfg.bootstrap_servers, "log_level": 0})
    while True:
        if proc is not None and proc.poll() is not None:
            raise KafkaSetupError(
                f"Kafka broker exited with code {proc.returncode} during start-up; log tail "
                f"({cfg.log_file}):\n{log_tail(cfg)}"
            )
        try:
            md = admin.list_topics(timeout=1.0)
            if md.brokers:
                return time.monotonic() - start
        except Exception:  # noqa: BLE001 - KafkaException until the listener is up
            pass
        if time.monotonic() - start > timeout:
            raise KafkaSetupError(
                f"Kafka broker on {cfg.bootstrap_servers} did not answer within {timeout:.0f} s; log tail:\n"
                f"{log_tail(cfg)}"
            )
        time.sleep(0.2)


def start(cfg: BrokerConfig, dist: Distribution, *, timeout: float = 90.0) -> subprocess.Popen:
    """Format storage if needed, start the broker in its own process group and wait until it answers.

    Raises KafkaSetupError if a port is taken, Java is missing, or the broker fails to come up.
    """
    java = require_tool("java", "Java 17")
    for name, port in (("broker", cfg.port), ("controller", cfg.controller_port)):
        if port_in_use(cfg.host, port):
            raise KafkaSetupError(
                f"port {port} on {cfg.host} (Kafka {name} listener) is already in use; stop what holds it "
                f"or choose another port (KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
            )
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    props_file = cfg.data_dir / "server.properties"
    props_file.write_text("".join(f"{k}={v}\n" for k, v in server_properties(cfg).items()))
    _format_storage(java, dist, cfg, props_file)

    with open(cfg.log_file, "ab") as out:
        proc = subprocess.Popen(
            _java_cmd(java, dist, cfg, "kafka.Kafka", str(props_file)),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: stop() signals the whole group
        )
    cfg.pid_file.write_text(f"{proc.pid}\n")
    try:
        waited = wait_until_ready(cfg, proc, timeout)
    except KafkaSetupError:
        stop(cfg)
        raise
    log.info("Kafka %s ready on %s after %.1f s (pid %d, data %s)",
             dist.version, cfg.bootstrap_servers, waited, proc.pid, cfg.data_dir)
    return proc


def stop(cfg: BrokerConfig, timeout: float = 30.0) -> bool:
    """Stop the broker recorded in ``cfg.data_dir``: SIGTERM, then SIGKILL after ``timeout``.

    Returns False if no broker was running there.
    """
    pid = process_group.stop_recorded(cfg.pid_file, b"kafka.Kafka", f"Kafka broker on {cfg.bootstrap_servers}",
                                      timeout)
    if pid is None:
        return False
    log.info("Kafka broker pid %d on %s stopped", pid, cfg.bootstrap_servers)
    return True
