"""Kafka client settings: a librdkafka properties file, KAFKA_* variables, precedence, and secrets kept out of
reprs, dumps and the Airflow connection path."""

from __future__ import annotations

import pytest

from ml import airflow_tasks
from ml.kafka_client import KafkaConfigError, env_key, env_properties, read_properties
from ml.settings import LoopSettings
from scoring_service.config import ScorerSettings

SECRET = "s3cr3t-p4ss"


@pytest.fixture(autouse=True)
def _no_kafka_env(monkeypatch):
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CLIENT_CONFIG", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("name, key", [
    ("KAFKA_BOOTSTRAP_SERVERS", "bootstrap.servers"),
    ("KAFKA_SASL_USERNAME", "sasl.username"),
    ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
    ("KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "ssl.endpoint.identification.algorithm"),
    ("KAFKA_LOG__LEVEL", "log_level"),
    ("KAFKA_DEBUG", "debug"),
    # The launcher's and compose's own variables are not client properties.
    ("KAFKA_PORT", None), ("KAFKA_DATA_DIR", None), ("KAFKA_SECURITY", None), ("KAFKA_HOST_PORT", None),
    ("KAFKA_CONTROLLER_PORT", None), ("KAFKA_CLIENT_CONFIG", None), ("KAFKA_VERSION", None),
    ("KAFKA_DIST_CACHE", None), ("MLFLOW_TRACKING_URI", None),
])
def test_environment_variables_map_to_librdkafka_keys_as_confluent_images_do(name, key):
    assert env_key(name) == key


def test_empty_variables_count_as_unset():
    assert env_properties({"KAFKA_SASL_USERNAME": "", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}) == {
        "sasl.mechanism": "SCRAM-SHA-512"}


def test_a_properties_file_is_read_with_comments_and_both_separators(tmp_path):
    path = tmp_path / "client.properties"
    path.write_text("# a comment\n! another\n\nbootstrap.servers=b1:9093,b2:9093\nsasl.mechanism: SCRAM-SHA-512\n"
                    f"sasl.password = {SECRET}\nsasl.jaas.config=a=b;c=d\n")
    assert read_properties(path) == {"bootstrap.servers": "b1:9093,b2:9093", "sasl.mechanism": "SCRAM-SHA-512",
                                     "sasl.password": SECRET, "sasl.jaas.config": "a=b;c=d"}


def test_an_unreadable_or_malformed_file_is_a_clear_error(tmp_path):
    with pytest.raises(KafkaConfigError, match="missing.properties.*KAFKA_CLIENT_CONFIG"):
        read_properties(tmp_path / "missing.properties")
    bad = tmp_path / "bad.properties"
    bad.write_text("bootstrap.servers=x\njust-a-word\n")
    with pytest.raises(KafkaConfigError, match=r"bad.properties:2: expected key=value"):
        read_properties(bad)


def test_file_then_environment_then_bootstrap_then_the_clients_own(tmp_path, monkeypatch):
    path = tmp_path / "loop.properties"
    path.write_text(f"bootstrap.servers=file:9093\nsecurity.protocol=SASL_SSL\nsasl.password={SECRET}\n"
                    "client.id=from-file\n")
    monkeypatch.setenv("KAFKA_CLIENT_CONFIG", str(path))
    monkeypatch.setenv("KAFKA_CLIENT_ID", "from-env")
    s = LoopSettings()
    assert s.kafka_bootstrap_servers == "file:9093" and s.kafka_security == "sasl_ssl"
    assert s.kafka_identity == "file:9093 over SASL_SSL"
    assert s.kafka_config({"client.id": "own", "group.id": "g"}) == {
        "security.protocol": "SASL_SSL", "sasl.password": SECRET, "client.id": "own",
        "bootstrap.servers": "file:9093", "group.id": "g"}
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "env:9093")
    assert LoopSettings().kafka_config()["bootstrap.servers"] == "env:9093"
    assert LoopSettings(kafka_bootstrap_servers="given:1").kafka_config()["bootstrap.servers"] == "given:1"


def test_without_configuration_clients_reach_the_local_broker_in_plaintext():
    for s in (LoopSettings(), ScorerSettings(use_case="flight_delay")):
        assert s.kafka_config() == {"bootstrap.servers": "localhost:9092"} and s.kafka_security == "plaintext"


def test_secrets_stay_out_of_repr_dumps_and_log_lines(monkeypatch):
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    for s in (LoopSettings(), ScorerSettings(use_case="flight_delay")):
        assert SECRET not in repr(s) and SECRET not in str(s.model_dump()) and SECRET not in s.model_dump_json()
        assert s.kafka_config()["sasl.password"] == SECRET
        assert SECRET not in s.kafka_identity
    # Settings re-validated from a dump (as the DAG tasks do) keep their credentials.
    s = LoopSettings()
    assert LoopSettings.model_validate(s.model_dump()).kafka_config()["sasl.password"] == SECRET


def test_the_airflow_connection_extra_configures_every_client_but_not_the_watchers_own_keys(monkeypatch):
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "from-env")
    extra = {"bootstrap.servers": "conn:9093", "security.protocol": "SASL_SSL", "sasl.password": SECRET,
             "group.id": "airflow", "auto.offset.reset": "earliest"}
    s = airflow_tasks.settings_for_run({}, kafka_extra=extra, base=LoopSettings())
    assert s.kafka_config() == {"security.protocol": "SASL_SSL", "sasl.password": SECRET,
                                "bootstrap.servers": "conn:9093"}
    assert SECRET not in repr(s)
