"""A local KRaft cluster of ``KAFKA_NODES`` broker nodes (each broker and controller, its own process group, ports
and data folder) from the same jars as the single node: what ``make kafka-up KAFKA_NODES=3`` starts.

A cluster of one is the single node of ``infra.kafka.broker`` in ``KAFKA_DATA_DIR`` itself; a larger one keeps node
i in ``KAFKA_DATA_DIR/node-<i>``, listening on ``KAFKA_PORT + 2(i-1)`` (clients) and the port after it (controller).
Nodes are launched together and waited for together: none answers before a majority of the controllers runs.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from pathlib import Path

from infra.kafka.broker import Broker, BrokerConfig
from infra.kafka.distribution import Distribution
from infra.kafka.errors import KafkaSetupError

log = logging.getLogger(__name__)


def node_configs(cfg: BrokerConfig, ports: Sequence[tuple[int, int]] | None = None) -> list[BrokerConfig]:
    """The settings of each node of the cluster ``cfg`` describes: ``cfg`` itself for one node; else node i in
    ``cfg.data_dir/node-<i>`` on ``ports[i-1]`` (client, controller), by default ``cfg.port + 2(i-1)`` and the next."""
    if cfg.nodes == 1 and not ports:
        return [cfg]
    count = len(ports) if ports else cfg.nodes
    ports = list(ports) if ports else [(cfg.port + 2 * i, cfg.port + 2 * i + 1) for i in range(count)]
    peers = tuple((i + 1, port, controller) for i, (port, controller) in enumerate(ports))
    return [cfg.model_copy(update={"nodes": count, "node_id": node, "port": port, "controller_port": controller,
                                   "data_dir": cfg.data_dir / f"node-{node}", "peers": peers,
                                   "cluster_dir": cfg.data_dir})
            for node, port, controller in peers]


def nodes_in(data_dir: Path) -> int:
    """How many nodes the cluster kept in ``data_dir`` has (0: none there; 1: a single node's folder)."""
    if (data_dir / "kraft-logs").exists():
        return 1
    return len(list(data_dir.glob("node-[0-9]*")))


class Cluster:
    """The nodes of one local cluster, started, stopped and checked as one service (``make kafka-up``, the pytest
    fixtures); each node also on its own (``nodes``) for fault tests that kill or restart one."""

    def __init__(self, cfg: BrokerConfig, dist: Distribution | None = None,
                 ports: Sequence[tuple[int, int]] | None = None) -> None:
        self.cfg = cfg
        self.node_configs = node_configs(cfg, ports)
        self.nodes = [Broker(node, dist) for node in self.node_configs]

    @classmethod
    def from_env(cls) -> Cluster:
        """The cluster of the environment's settings; ``down`` and ``status`` find the size from the data folder
        when KAFKA_NODES is not set, so that a cluster is never stopped in part."""
        cfg = BrokerConfig()
        kept = nodes_in(cfg.data_dir)
        if "nodes" not in cfg.model_fields_set and kept > 1:
            cfg = cfg.model_copy(update={"nodes": kept})
        return cls(cfg)

    # The LocalService interface that infra.local_service.add_commands uses.
    @property
    def name(self) -> str:
        if len(self.nodes) == 1:
            return self.nodes[0].name
        return f"Kafka cluster of {len(self.nodes)} nodes on {self.bootstrap_servers}" + (
            " (SASL_SSL)" if self.cfg.secured else "")

    @property
    def home(self) -> Path:
        return self.cfg.data_dir

    @property
    def log_file(self) -> Path:
        return self.nodes[0].log_file if len(self.nodes) == 1 else self.cfg.data_dir / "node-*" / "broker.log"

    @property
    def bootstrap_servers(self) -> str:
        return self.node_configs[0].cluster_bootstrap_servers

    def client_settings(self, role: str = "admin") -> dict[str, str]:
        """librdkafka settings of a client of the whole cluster (with ``role``'s credentials when secured)."""
        return self.node_configs[0].client_settings(role)

    def client_config(self, role: str = "admin") -> Path:
        """The librdkafka properties file of ``role`` on a secured cluster (every node's listener in it)."""
        return self.node_configs[0].client_config(role)

    def describe(self) -> str:
        return self.nodes[0].describe().replace(str(self.nodes[0].cfg.data_dir), str(self.cfg.data_dir))

    def running_pid(self) -> int | None:
        """The first node's pid while any node runs (None when none does)."""
        pids = [node.running_pid() for node in self.nodes]
        return next((pid for pid in pids if pid is not None), None)

    def healthy(self) -> bool:
        """True when every node answers and each sees all of them in the cluster's metadata."""
        return all(node.healthy() for node in self.nodes) and self._brokers_seen() == len(self.nodes)

    def _brokers_seen(self) -> int:
        from confluent_kafka.admin import AdminClient

        try:
            admin = AdminClient({**self.client_settings(), "log_level": 0})
            return len(admin.list_topics(timeout=2.0).brokers)
        except Exception:  # noqa: BLE001 - not up yet, or a secured cluster's client files not written yet
            return 0

    def _check_layout(self) -> None:
        kept = nodes_in(self.cfg.data_dir)
        if kept and kept != len(self.nodes):
            raise KafkaSetupError(
                f"{self.cfg.data_dir} holds a cluster of {kept} node(s), not {len(self.nodes)}: start it with "
                f"KAFKA_NODES={kept}, or use another KAFKA_DATA_DIR (a cluster does not change size here)")

    def start(self, timeout: float | None = None) -> None:
        """Launch every node, then wait until all answer; on a failure stop them all and raise."""
        self._check_layout()
        launched = []
        t0 = time.monotonic()
        try:
            for node in self.nodes:
                launched.append((node, node.launch()))
            deadline = time.monotonic() + (timeout or Broker.start_timeout)
            for node, proc in launched:
                node.await_start(proc, max(1.0, deadline - time.monotonic()))
            while self._brokers_seen() != len(self.nodes):
                if time.monotonic() > deadline:
                    raise KafkaSetupError(f"{self.name}: not every node joined within {timeout or 90:.0f} s")
                time.sleep(0.2)
        except BaseException:
            for node, _ in launched:
                node.stop()
            raise
        log.info("%s ready after %.1f s", self.name, time.monotonic() - t0)

    def up(self, timeout: float | None = None) -> tuple[int, float | None]:
        """Start the cluster unless it runs; nodes that are down are started again (a node restarted on its own
        rejoins). Returns a pid and the seconds taken, or None when every node ran already."""
        running = [node.running_pid() for node in self.nodes]
        if all(pid is not None for pid in running):
            return running[0], None
        t0 = time.monotonic()
        if any(pid is not None for pid in running):
            for node, pid in zip(self.nodes, running, strict=True):
                if pid is None:
                    node.start(timeout)
        else:
            self.start(timeout)
        return self.running_pid() or 0, time.monotonic() - t0

    def stop(self, timeout: float | None = None) -> bool:
        """Stop every node at once: one by one, the last would wait for a controller majority that has left."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            return any(list(pool.map(lambda node: node.stop(timeout), self.nodes)))
