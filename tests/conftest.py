"""Shared fixtures: one real Kafka broker per test session (or the cluster named by KAFKA_BOOTSTRAP_SERVERS) and one
real schema registry keeping its schemas in it (or the registry named by SCHEMA_REGISTRY_URL)."""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from infra.kafka import broker, distribution
from infra.registry import distribution as registry_distribution, server as registry_server
from ml.settings import LoopSettings
from ml.topics import wait_until_served

REPO = Path(__file__).resolve().parents[1]
KEPT_LOGS = REPO / ".local" / "test-logs"


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
    """Bootstrap servers of a real broker: ``$KAFKA_BOOTSTRAP_SERVERS`` if set, else a fresh local broker
    on free ports with its own data and log folder, stopped at the end (its log kept if a test failed)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    dist = distribution.fetch()
    data_dir = Path(tempfile.mkdtemp(prefix="kafka-test-"))
    cfg = broker.BrokerConfig(data_dir=data_dir, port=broker.free_port(), controller_port=broker.free_port(),
                              heap="512m")
    node = broker.Broker(cfg, dist)
    node.start()
    try:
        yield cfg.bootstrap_servers
    finally:
        # Destroy the clients tests left for the garbage collector while the broker still answers; otherwise
        # librdkafka logs "connection refused" from their threads until the interpreter exits.
        gc.collect()
        node.stop()
        _keep_log(request, cfg.log_file, "kafka")
        shutil.rmtree(data_dir, ignore_errors=True)


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
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})]
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
