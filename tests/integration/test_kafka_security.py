"""The secured local broker (KAFKA_SECURITY=sasl_ssl) keeps out whom it should: only SCRAM principals over TLS are
served, with the broker's own CA; its controller listener takes no anonymous client; the schema registry keeps its
schemas in it as the admin principal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from infra.kafka import security
from infra.kafka.errors import KafkaSetupError
from infra.kafka.smoke import round_trip
from infra.registry import distribution as registry_distribution, server as registry_server

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _schema_registry_env() -> Iterator[None]:
    """These tests bring their own secured broker and registry: not the session's plaintext ones (the autouse
    fixture of tests/integration/conftest.py would start them for nothing)."""
    yield


def _refusal(settings: dict[str, str], timeout: float = 5.0) -> tuple[KafkaError, list[KafkaError]]:
    """The error of a metadata request with ``settings`` that must fail, and what librdkafka's error callback got."""
    reported: list[KafkaError] = []
    admin = AdminClient({**settings, "error_cb": reported.append, "log_level": 0})
    with pytest.raises(KafkaException) as refused:
        admin.list_topics(timeout=timeout)
    admin.poll(0.5)  # the error callback is served here
    return refused.value.args[0], reported


def _other_ca(tmp_path: Path) -> Path:
    """A CA certificate of another local CA (made the same way, so only trust differs)."""
    return security.ensure_tls(tmp_path / "other-tls", "127.0.0.1").ca_cert


def test_admin_creates_a_topic_and_round_trips_records(secured_kafka):
    admin = AdminClient(secured_kafka.properties("admin"))
    topic = f"secured-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    assert topic in admin.list_topics(timeout=10).topics

    result = round_trip(secured_kafka.bootstrap_servers, 2_000, settings=secured_kafka.properties("admin"))
    assert (result.produced, result.high_watermark, result.consumed) == (2_000, 2_000, 2_000)


def test_every_role_authenticates_but_only_admin_is_a_super_user(secured_kafka):
    for role in security.ROLES:
        assert AdminClient(secured_kafka.properties(role)).list_topics(timeout=10).brokers, role
    # No ACLs yet (ml/acls.py grants them): a role may not create topics.
    topic = f"denied-{uuid.uuid4().hex[:8]}"
    loop = AdminClient(secured_kafka.properties("loop"))
    with pytest.raises(KafkaException) as refused:
        loop.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    assert refused.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_client_files_are_private_and_name_the_broker_and_its_ca(secured_kafka):
    for role in security.ROLES:
        path = secured_kafka.client_config(role)
        assert path.stat().st_mode & 0o777 == 0o600
        props = secured_kafka.properties(role)
        assert props["bootstrap.servers"] == secured_kafka.bootstrap_servers
        assert (props["security.protocol"], props["sasl.mechanism"], props["sasl.username"]) == (
            "SASL_SSL", "SCRAM-SHA-512", role)
        assert Path(props["ssl.ca.location"]) == secured_kafka.ca_file and secured_kafka.ca_file.is_absolute()
    passwords = {secured_kafka.properties(role)["sasl.password"] for role in security.ROLES}
    assert len(passwords) == len(security.ROLES)
    log = secured_kafka.cfg.log_file.read_text()
    assert not [p for p in passwords if p in log], "a password is in the broker log"


def test_a_plaintext_client_is_refused(secured_kafka):
    error, reported = _refusal({"bootstrap.servers": secured_kafka.bootstrap_servers})
    # The broker closes a connection that does not start with TLS: no metadata, every broker down.
    assert error.code() == KafkaError._TRANSPORT
    assert KafkaError._ALL_BROKERS_DOWN in {e.code() for e in reported}


def test_a_tls_client_without_sasl_credentials_is_refused(secured_kafka):
    error, reported = _refusal({"bootstrap.servers": secured_kafka.bootstrap_servers, "security.protocol": "SSL",
                                "ssl.ca.location": str(secured_kafka.ca_file)})
    assert error.code() == KafkaError._TRANSPORT
    assert KafkaError._ALL_BROKERS_DOWN in {e.code() for e in reported}


def test_a_wrong_password_is_refused_as_an_authentication_failure(secured_kafka):
    settings = {**secured_kafka.properties("scorer"), "sasl.password": "not-the-password"}
    _, reported = _refusal(settings)
    auth = [e for e in reported if e.code() == KafkaError._AUTHENTICATION]
    assert auth, reported
    assert "SASL authentication error" in auth[0].str() and "invalid credentials" in auth[0].str()
    assert secured_kafka.bootstrap_servers in auth[0].str()

    with pytest.raises(KafkaSetupError) as failed:
        round_trip(secured_kafka.bootstrap_servers, 1, settings=settings)
    assert str(failed.value).startswith(f"Kafka at {secured_kafka.bootstrap_servers} refused the credentials of "
                                        f"'scorer' (SCRAM-SHA-512)")
    assert "not-the-password" not in str(failed.value)


def test_a_client_trusting_another_ca_fails_naming_the_broker(secured_kafka, tmp_path):
    settings = {**secured_kafka.properties("monitor"), "ssl.ca.location": str(_other_ca(tmp_path))}
    _, reported = _refusal(settings)
    tls = [e for e in reported if e.code() == KafkaError._SSL]
    assert tls, reported
    assert f"sasl_ssl://{secured_kafka.bootstrap_servers}" in tls[0].str()
    assert "certificate verify failed" in tls[0].str()

    with pytest.raises(KafkaSetupError, match=f"TLS with Kafka at {secured_kafka.bootstrap_servers} failed: .*"
                                              "certificate verify failed"):
        round_trip(secured_kafka.bootstrap_servers, 1, settings=settings)


def test_the_controller_listener_refuses_anonymous_clients(secured_kafka):
    # Without TLS: the connection is dropped.
    error, _ = _refusal({"bootstrap.servers": secured_kafka.controller})
    assert error.code() == KafkaError._TRANSPORT
    # TLS trusting the right CA, but no client certificate: the handshake is refused (mTLS).
    error, reported = _refusal({"bootstrap.servers": secured_kafka.controller, "security.protocol": "SSL",
                                "ssl.ca.location": str(secured_kafka.ca_file)})
    assert error.code() == KafkaError._TRANSPORT
    assert any("alert bad certificate" in e.str() or "certificate required" in e.str() for e in reported), reported
    # Valid SCRAM credentials do not open it either.
    _refusal({**secured_kafka.properties("admin"), "bootstrap.servers": secured_kafka.controller})


def test_the_cli_checks_the_secured_broker_with_the_admin_credentials(secured_kafka):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}, "KAFKA_SECURITY": "sasl_ssl",
           "KAFKA_DATA_DIR": str(secured_kafka.cfg.data_dir), "KAFKA_PORT": str(secured_kafka.cfg.port),
           "KAFKA_CONTROLLER_PORT": str(secured_kafka.cfg.controller_port)}
    cli = [sys.executable, "-m", "infra.kafka"]
    status = subprocess.run([*cli, "status"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert "(SASL_SSL)" in status.stdout and "healthy" in status.stdout
    assert f"{secured_kafka.cfg.clients_dir}/<role>.properties" in status.stdout
    check = subprocess.run([*cli, "check", "--messages", "500"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, check.stderr
    assert "consumed 500" in check.stdout and "round trip OK" in check.stdout


@pytest.mark.slow
def test_the_registry_keeps_its_schemas_in_the_secured_broker(secured_kafka):
    cfg = registry_server.scratch_config(secured_kafka.bootstrap_servers, "secured",
                                         kafka_client_config=secured_kafka.client_config("admin"))
    registry = registry_server.Registry(cfg, registry_distribution.fetch(cfg.dist_cache, cfg.version))
    subject = f"secured-{uuid.uuid4().hex[:8]}-value"
    schema = json.dumps({"type": "object", "properties": {"flight_id": {"type": "string"}}})
    password = secured_kafka.properties("admin")["sasl.password"]
    try:
        registry.start()
        client = SchemaRegistryClient({"url": cfg.ccompat_url, "timeout": 30})
        schema_id = client.register_schema(subject, Schema(schema, "JSON"))
        registry.stop()
        # A fresh server has nothing but what it reads back from the broker's journal topic.
        registry.start()
        latest = client.get_latest_version(subject)
        assert (latest.schema_id, latest.version) == (schema_id, 1)
        topics = AdminClient(secured_kafka.properties("admin")).list_topics(timeout=10).topics
        assert cfg.overrides["apicurio.kafkasql.topic"] in topics
        log = registry.log_file.read_text()
        assert "security.protocol = SASL_SSL" in log and "sasl.mechanism = SCRAM-SHA-512" in log
        # The password reaches the server through its environment: not its command line, not its log.
        assert password not in log
        assert password.encode() not in Path(f"/proc/{registry.running_pid()}/cmdline").read_bytes()
    finally:
        registry.stop()
    shutil.rmtree(cfg.data_dir, ignore_errors=True)  # kept when the test failed
