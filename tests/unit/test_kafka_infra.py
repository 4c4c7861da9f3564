"""Clear errors from the local-broker tooling: taken ports, missing prerequisites, failed downloads."""

from __future__ import annotations

import socket

import pytest

from infra.kafka import broker, distribution
from infra.kafka.errors import KafkaSetupError


def test_start_names_the_port_that_is_taken(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        cfg = broker.BrokerConfig(data_dir=tmp_path, port=taken, controller_port=broker.free_port())
        dist = distribution.Distribution("0", tmp_path)
        with pytest.raises(KafkaSetupError, match=f"port {taken} on 127.0.0.1 .*already in use"):
            broker.Broker(cfg, dist).start()
    assert not cfg.pid_file.exists()


@pytest.mark.parametrize("tool, prerequisite", [("java", "Java 17"), ("mvn", "Maven")])
def test_missing_prerequisite_is_named(monkeypatch, tool, prerequisite):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(KafkaSetupError, match=f"`{tool}` not found on PATH: {prerequisite} is required"):
        distribution.require_tool(tool, prerequisite)


def test_fetch_without_java_fails_before_touching_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(KafkaSetupError, match="Java 17"):
        distribution.fetch("4.1.1", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_failed_download_leaves_no_cache(tmp_path):
    # Offline and a version nobody has: Maven fails fast, and nothing may be left for the next run.
    cache = tmp_path / "cache"
    with pytest.raises(KafkaSetupError, match="Maven could not fetch .*0.0.0-missing.*nothing was cached"):
        distribution.fetch("0.0.0-missing", cache, offline=True)
    assert list(cache.iterdir()) == []
    assert distribution.cached("0.0.0-missing", cache) is None


def test_incomplete_cache_is_not_used(tmp_path):
    half = tmp_path / "4.1.1" / "libs"
    half.mkdir(parents=True)
    (half / "kafka_2.13-4.1.1.jar").write_bytes(b"truncated")
    assert distribution.cached("4.1.1", tmp_path) is None


def test_corrupt_jar_is_rejected(tmp_path):
    (tmp_path / "kafka_2.13-4.1.1.jar").write_bytes(b"not a zip")
    with pytest.raises(KafkaSetupError, match="corrupt"):
        distribution._verify(tmp_path, "4.1.1")


def test_single_node_settings_make_transactions_and_groups_work(tmp_path):
    props = broker.server_properties(broker.BrokerConfig(data_dir=tmp_path, port=1234, controller_port=1235))
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1234,CONTROLLER://127.0.0.1:1235"
