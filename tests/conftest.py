"""Shared fixtures: one real Kafka broker per test session (or the cluster named by KAFKA_BOOTSTRAP_SERVERS) and one
real schema registry keeping its schemas in it (or the registry named by SCHEMA_REGISTRY_URL); a secured (sasl_ssl)
broker of its own for the tests that ask for it (``secured_kafka``)."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from infra.kafka import broker, cluster, distribution, security
from infra.registry import distribution as registry_distribution, server as registry_server
from ml.settings import LoopSettings
from ml.signing import Signer, write_key_pair
from ml.topics import wait_until_served

REPO = Path(__file__).resolve().parents[1]
KEPT_LOGS = REPO / ".local" / "test-logs"


def pytest_configure(config: pytest.Config) -> None:
    """An Airflow home of this test process's own, set before anything imports Airflow: its configuration (the
    metadata database under AIRFLOW_HOME) is read once, at import, and whichever test imports it first (a unit
    test of the plugin, or the DAG tests' ``dag.test()``) must find the home the DAG tests migrate, and no test
    writes into the user's ~/airflow. Each pytest process (``make test`` runs two) gets its own."""
    home = Path(tempfile.mkdtemp(prefix="airflow-tests-"))
    os.environ["AIRFLOW_HOME"] = str(home)
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))


def _until(what: str, check: Callable[[], object], timeout: float, every: float = 2.0):
    """``check()``'s first truthy value, polled every ``every`` s; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def until() -> Callable[..., object]:
    """Wait for a condition of a real service (a run to finish, a DAG to be parsed): ``until(what, check,
    timeout, every=2.0)``."""
    return _until


def _keep_log(request: pytest.FixtureRequest, log_file: Path, name: str) -> None:
    """Copy a service's log under .local/test-logs when a test of the session failed."""
    if request.session.testsfailed and log_file.exists():
        KEPT_LOGS.mkdir(parents=True, exist_ok=True)
        kept = KEPT_LOGS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        shutil.copy(log_file, kept)
        print(f"\n{name} log kept at {kept}")


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> Iterator[str]:
    """Bootstrap servers of a real broker: ``$KAFKA_BOOTSTRAP_SERVERS`` if set, else a fresh local broker (a cluster
    of ``$KAFKA_TEST_NODES`` nodes, default 1) on free ports with its own data and log folder, stopped at the end
    (its log kept if a test failed)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    # plaintext even when KAFKA_SECURITY is set: the session's clients connect without credentials.
    nodes = int(os.environ.get("KAFKA_TEST_NODES", "1"))
    with _local_broker(request, "plaintext", "kafka", nodes) as kafka:
        yield kafka.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_cluster(request: pytest.FixtureRequest) -> Iterator[cluster.Cluster]:
    """A local three-node KRaft cluster (plaintext) of its own, started only for the tests that ask for it (fault
    tests kill and restart its nodes: each test leaves every node running) and stopped at the end."""
    with _local_broker(request, "plaintext", "kafka-cluster", 3) as kafka:
        yield kafka


@contextlib.contextmanager
def _local_broker(request: pytest.FixtureRequest, security: str, name: str,
                  nodes: int = 1) -> Iterator[cluster.Cluster]:
    """A local broker of ``security`` (a cluster of ``nodes``) on free ports with its own folder, stopped on leaving
    (each node's log kept as ``name`` if a test failed)."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"{name}-test-"))
    cfg = broker.BrokerConfig(data_dir=data_dir, port=broker.free_port(), controller_port=broker.free_port(),
                              heap="512m", security=security)
    ports = [(broker.free_port(), broker.free_port()) for _ in range(nodes)] if nodes > 1 else None
    kafka = cluster.Cluster(cfg, distribution.fetch(), ports)
    kafka.start()
    try:
        yield kafka
    finally:
        # Destroy the clients tests left for the garbage collector while the broker still answers; otherwise
        # librdkafka logs "connection refused" from their threads until the interpreter exits.
        gc.collect()
        kafka.stop()
        for node in kafka.nodes:
            _keep_log(request, node.log_file, name if nodes == 1 else f"{name}-node-{node.cfg.node_id}")
        shutil.rmtree(data_dir, ignore_errors=True)


@dataclass(frozen=True)
class SecuredKafka:
    """A running sasl_ssl broker as its clients see it: where it listens, its CA, each role's client settings."""

    cfg: broker.BrokerConfig

    @property
    def bootstrap_servers(self) -> str:
        return self.cfg.bootstrap_servers

    @property
    def controller(self) -> str:
        return f"{self.cfg.host}:{self.cfg.controller_port}"

    @property
    def ca_file(self) -> Path:
        return self.cfg.tls.ca_cert

    def client_config(self, role: str = security.ADMIN) -> Path:
        """The librdkafka properties file of ``role`` (one of ``infra.kafka.security.ROLES``)."""
        return self.cfg.client_config(role)

    def properties(self, role: str = security.ADMIN) -> dict[str, str]:
        """``role``'s librdkafka settings, ready for confluent-kafka's clients."""
        return self.cfg.client_settings(role)


@pytest.fixture(scope="session")
def secured_kafka(request: pytest.FixtureRequest) -> Iterator[SecuredKafka]:
    """A local sasl_ssl broker (TLS, one SCRAM-SHA-512 principal per role, the standard authorizer) on free ports
    with its own folder, started only for the tests that ask for it and stopped at the end (its log kept if a test
    failed)."""
    with _local_broker(request, "sasl_ssl", "kafka-secured") as kafka:
        yield SecuredKafka(kafka.node_configs[0])


@pytest.fixture(scope="session")
def new_registry(request: pytest.FixtureRequest,
                 kafka_bootstrap: str) -> Iterator[Callable[[], registry_server.Registry]]:
    """Makes local Apicurio Registries (not started), each on free loopback ports with its own folder and its own
    Kafka topics on the session's broker; at the end of the session each is stopped (its log kept if a test
    failed), its folder and topics removed."""
    made: list[registry_server.Registry] = []

    def make() -> registry_server.Registry:
        # Topics of its own: registries sharing topics share schemas, and on a shared cluster another registry
        # (`make registry-up`) may use the default ones.
        cfg = registry_server.scratch_config(kafka_bootstrap, "test")
        made.append(registry_server.Registry(cfg, registry_distribution.fetch(cfg.dist_cache, cfg.version)))
        return made[-1]

    yield make
    for registry in made:
        registry.stop()  # before the broker it keeps its schemas in
        _keep_log(request, registry.log_file, f"registry-{registry.cfg.port}")
        shutil.rmtree(registry.cfg.data_dir, ignore_errors=True)
    topics = [topic for registry in made for topic in registry_server.topics_of(registry.cfg)]
    if topics:
        futures.wait(AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics(topics).values(), timeout=30)


@pytest.fixture(scope="session")
def schema_registry_url(new_registry: Callable[[], registry_server.Registry]) -> Iterator[str]:
    """The Confluent-compatible API of a real schema registry (``http://127.0.0.1:<port>/apis/ccompat/v7``):
    ``$SCHEMA_REGISTRY_URL`` if set, else a fresh local Apicurio Registry (``new_registry``) keeping its schemas
    in the session's broker (kafkasql), stopped at the end."""
    external = os.environ.get("SCHEMA_REGISTRY_URL")
    if external:
        yield external
        return
    registry = new_registry()
    registry.start()
    yield registry.cfg.ccompat_url


@pytest.fixture
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    # Per test: a session-long client would outlive the broker and log connection errors until exit.
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def high_watermark(kafka_bootstrap: str) -> Callable[[str], int]:
    """The high watermark (records written) of partition 0 of a topic."""
    def read(topic: str) -> int:
        c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "probe"})
        try:
            return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
        finally:
            c.close()

    return read


@pytest.fixture
def new_topic(kafka_bootstrap: str, kafka_admin: AdminClient) -> Callable[..., str]:
    """Create a uniquely named topic (deleted after the test) and wait until the broker serves every
    partition; returns its name. (CreateTopics answers once the controller has the topic: the broker may
    not have applied it yet, and then answers UNKNOWN_TOPIC_OR_PART for a moment.)"""
    created: list[str] = []

    def make(prefix: str = "t", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        fut = kafka_admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=-1, config=config or {})]
        )[name]
        fut.result(timeout=30)
        created.append(name)
        wait_until_served(LoopSettings(kafka_bootstrap_servers=kafka_bootstrap), {name: partitions}, timeout=30)
        return name

    yield make
    if created:
        for fut in kafka_admin.delete_topics(created).values():
            fut.result(timeout=30)


@pytest.fixture
def browser() -> Iterator[Callable[..., str]]:
    """Opens a page in a real Chromium (Debian's, driven by Playwright), after signing in to Airflow when a login
    is given; saves a full-page screenshot under .local/test-logs/ and returns the page's text."""
    from playwright.sync_api import Error as PlaywrightError, sync_playwright

    executable = shutil.which("chromium")
    assert executable, "chromium not found: `apt-get install chromium` (README, Prerequisites)"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])

        def open_page(url: str, screenshot: str, *, airflow_url: str | None = None,
                      login: tuple[str, str] | None = None, wait_for: str = "body") -> str:
            page = chromium.new_page(viewport={"width": 1400, "height": 900})
            if login is not None:
                # Airflow 3's login form is rendered by JavaScript: wait for its inputs before filling them.
                page.goto(f"{airflow_url}/", wait_until="networkidle")
                page.wait_for_selector("input[name=username]", timeout=60_000)
                page.fill("input[name=username]", login[0])
                page.fill("input[type=password]", login[1])
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_load_state("networkidle")
            for attempt in range(3):
                try:
                    page.goto(url, wait_until="networkidle")
                    break
                except PlaywrightError as e:
                    # The sign-in's own redirect may still be under way and abort this navigation: go again.
                    if "ERR_ABORTED" not in str(e) or attempt == 2:
                        raise
                    page.wait_for_load_state("networkidle")
            page.wait_for_selector(wait_for, timeout=60_000)
            KEPT_LOGS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=KEPT_LOGS / screenshot, full_page=True)
            text = page.inner_text("body")
            page.close()
            return text

        yield open_page
        chromium.close()


@dataclass(frozen=True)
class SigningKeys:
    """A model signing key pair of a test: the private key file the loop signs with, and a trust folder holding
    only its public key, as a scorer's is."""

    key_id: str
    private_file: Path
    trusted_dir: Path

    @property
    def loop(self) -> dict[str, Path]:
        """LoopSettings fields that sign with this key."""
        return {"model_signing_key_file": self.private_file, "model_trusted_keys_dir": self.trusted_dir}

    @property
    def env(self) -> dict[str, str]:
        """The variables that point the loop's and the scorer's processes at these keys."""
        return {"MODEL_SIGNING_KEY_FILE": str(self.private_file), "MODEL_TRUSTED_KEYS_DIR": str(self.trusted_dir)}

    def signer(self) -> Signer:
        return Signer.from_pem(self.private_file.read_bytes(), self.key_id, source=str(self.private_file))


def make_signing_keys(folder: Path, key_id: str | None = None) -> SigningKeys:
    """A new key pair under ``folder`` (``private/`` and ``trusted/``), as `python -m ml keys generate` writes it."""
    files = write_key_pair(folder / "private", Signer.generate(key_id))
    trusted = folder / "trusted"
    trusted.mkdir(parents=True)
    shutil.copy(files.public_file, trusted / files.public_file.name)
    return SigningKeys(files.key_id, files.private_file, trusted)


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> SigningKeys:
    """The session's model signing key pair (tests that change a trust folder make their own: ``new_signing_keys``)."""
    return make_signing_keys(tmp_path_factory.mktemp("signing-keys"))


@pytest.fixture
def new_signing_keys(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., SigningKeys]:
    """Makes key pairs of this test, each in a folder of its own: ``new_signing_keys(key_id=None)``."""
    return lambda key_id=None: make_signing_keys(tmp_path_factory.mktemp("signing-keys"), key_id)
