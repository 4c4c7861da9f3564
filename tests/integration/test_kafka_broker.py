"""The broker the project starts is a real Kafka: groups, watermarks, transactions and compaction behave."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource, ResourceType

pytestmark = pytest.mark.integration


def _consumer(bootstrap: str, group: str, **extra) -> Consumer:
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        **extra,
    })


def _drain(consumer: Consumer, partitions: int = 1, limit_s: float = 30.0) -> list:
    """Read until every assigned partition reports EOF; return the data messages."""
    import time

    out, eof, deadline = [], set(), time.monotonic() + limit_s
    while len(eof) < partitions and time.monotonic() < deadline:
        for msg in consumer.consume(500, timeout=0.5):
            err = msg.error()
            if err is None:
                out.append(msg)
            elif err.code() == KafkaError._PARTITION_EOF:
                eof.add(msg.partition())
            else:
                raise AssertionError(f"consumer error: {err}")
    assert len(eof) == partitions, f"only {len(eof)}/{partitions} partitions reached EOF"
    return out


def _produce(bootstrap: str, topic: str, values: list[bytes], **extra) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, **extra})
    errors = []
    for i, v in enumerate(values):
        producer.produce(topic, key=str(i).encode(), value=v,
                         on_delivery=lambda err, _m: err and errors.append(err))
    assert producer.flush(30) == 0
    assert errors == []


def test_produce_then_consume_returns_the_same_records(kafka_bootstrap, new_topic):
    topic = new_topic("roundtrip")
    values = [f"v{i}".encode() for i in range(500)]
    _produce(kafka_bootstrap, topic, values)
    c = _consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex}")
    c.subscribe([topic])
    msgs = _drain(c)
    c.close()
    assert [m.value() for m in msgs] == values
    assert [m.offset() for m in msgs] == list(range(500))


def test_committed_group_offset_survives_a_new_consumer(kafka_bootstrap, new_topic):
    topic = new_topic("group")
    _produce(kafka_bootstrap, topic, [f"v{i}".encode() for i in range(100)])
    group = f"g-{uuid.uuid4().hex}"
    first = _consumer(kafka_bootstrap, group)
    first.assign([TopicPartition(topic, 0, 0)])
    got = []
    while len(got) < 40:
        got += [m for m in first.consume(40 - len(got), timeout=1) if m.error() is None]
    first.commit(offsets=[TopicPartition(topic, 0, got[-1].offset() + 1)], asynchronous=False)
    first.close()

    second = _consumer(kafka_bootstrap, group)
    committed = second.committed([TopicPartition(topic, 0)], timeout=10)
    assert committed[0].offset == 40
    second.subscribe([topic])
    rest = _drain(second)
    second.close()
    assert [m.offset() for m in rest] == list(range(40, 100))


def test_high_watermark_counts_records_not_batches(kafka_bootstrap, new_topic):
    topic = new_topic("watermark", partitions=3)
    # linger + large batches: many records per produce request and per record batch on disk.
    _produce(kafka_bootstrap, topic, [b"x" * 50] * 10_000, **{"linger.ms": 50, "batch.num.messages": 5000})
    c = _consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex}")
    total = sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(3))
    c.close()
    assert total == 10_000


def test_transactions_commit_and_abort_under_read_committed(kafka_bootstrap, new_topic):
    topic = new_topic("txn")
    p = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex}"})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(100):
        p.produce(topic, value=f"committed-{i}".encode())
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(50):
        p.produce(topic, value=f"aborted-{i}".encode())
    p.flush(30)
    p.abort_transaction(30)

    committed = _consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex}", **{"isolation.level": "read_committed"})
    committed.subscribe([topic])
    seen = [m.value().decode() for m in _drain(committed)]
    committed.close()
    assert len(seen) == 100 and all(v.startswith("committed-") for v in seen)

    uncommitted = _consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex}", **{"isolation.level": "read_uncommitted"})
    uncommitted.subscribe([topic])
    everything = [m.value().decode() for m in _drain(uncommitted)]
    uncommitted.close()
    assert sum(v.startswith("aborted-") for v in everything) == 50


def test_send_offsets_to_transaction_commits_the_group_offsets(kafka_bootstrap, new_topic):
    src, dst = new_topic("src"), new_topic("dst")
    _produce(kafka_bootstrap, src, [f"in-{i}".encode() for i in range(30)])
    group = f"g-{uuid.uuid4().hex}"
    consumer = _consumer(kafka_bootstrap, group, **{"isolation.level": "read_committed"})
    consumer.subscribe([src])
    inputs = _drain(consumer)
    assert len(inputs) == 30

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"ctp-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for m in inputs:
        producer.produce(dst, key=m.key(), value=m.value().replace(b"in-", b"out-"))
    producer.send_offsets_to_transaction(
        [TopicPartition(src, 0, inputs[-1].offset() + 1)], consumer.consumer_group_metadata(), 30
    )
    producer.commit_transaction(30)
    consumer.close()

    probe = _consumer(kafka_bootstrap, group)
    assert probe.committed([TopicPartition(src, 0)], timeout=10)[0].offset == 30
    probe.close()
    reader = _consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex}", **{"isolation.level": "read_committed"})
    reader.subscribe([dst])
    assert len(_drain(reader)) == 30
    reader.close()


def test_compacted_topic_can_be_created(kafka_bootstrap, kafka_admin, new_topic):
    topic = new_topic("models", config={"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01",
                                         "segment.ms": "100"})
    res = ConfigResource(ResourceType.TOPIC, topic)
    configs = kafka_admin.describe_configs([res])[res].result(timeout=30)
    assert configs["cleanup.policy"].value == "compact"
    # Same key twice: a compacted topic serves the latest value per key.
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for value in (b"v1", b"v2"):
        producer.produce(topic, key=b"flight-delay", value=value)
    assert producer.flush(30) == 0
    c = _consumer(kafka_bootstrap, f"g-{uuid.uuid4().hex}")
    c.subscribe([topic])
    assert [m.value() for m in _drain(c)][-1] == b"v2"
    c.close()


def test_storage_format_takes_a_cluster_id_that_starts_with_a_dash(tmp_path, monkeypatch):
    """Kafka ids are URL-safe base64, so about one in 64 random ids starts with "-"."""
    from infra.kafka import broker, distribution
    from infra.kafka.distribution import require_tool

    monkeypatch.setattr(broker, "_new_cluster_id", lambda: "-" + "A" * 21)
    cfg = broker.BrokerConfig(data_dir=tmp_path, port=broker.free_port(), controller_port=broker.free_port())
    props = tmp_path / "server.properties"
    props.write_text("".join(f"{k}={v}\n" for k, v in broker.server_properties(cfg).items()))
    broker._format_storage(require_tool("java", "Java 17"), distribution.fetch(), cfg, props)
    assert "cluster.id=-AAAA" in (cfg.log_dirs / "meta.properties").read_text()


def _free_run(count: int) -> int:
    """A port p with p .. p + count - 1 free on the loopback (a cluster's nodes take consecutive ports)."""
    from infra.local_service import free_port, port_in_use

    for _ in range(50):
        base = free_port()
        if base + count < 65535 and not any(port_in_use("127.0.0.1", base + i) for i in range(count)):
            return base
    raise AssertionError("no run of free ports found")


@pytest.mark.slow
def test_kafka_up_with_three_nodes_runs_a_replicated_cluster_and_down_stops_every_node(tmp_path):
    """`make kafka-up KAFKA_NODES=3` as the Makefile runs it; the loop's topics on it get three replicas, two in sync;
    `kafka-down` without KAFKA_NODES finds the three nodes in the folder and stops them all."""
    import os
    import subprocess
    import sys

    from confluent_kafka.admin import AdminClient

    from ml.settings import LoopSettings
    from ml.topics import ensure_topics

    base = _free_run(6)
    env = {**os.environ, "KAFKA_DATA_DIR": str(tmp_path), "KAFKA_PORT": str(base), "KAFKA_HEAP": "512m"}
    env.pop("KAFKA_NODES", None)

    def cli(*args: str, nodes: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "infra.kafka", *args], capture_output=True, text=True,
                              env={**env, **({"KAFKA_NODES": nodes} if nodes else {})}, timeout=180)

    up = cli("up", nodes="3")
    try:
        assert up.returncode == 0, up.stderr
        bootstrap = ",".join(f"127.0.0.1:{base + 2 * i}" for i in range(3))
        assert f"Kafka cluster of 3 nodes on {bootstrap} ready" in up.stdout
        status = cli("status")
        assert status.returncode == 0 and "healthy" in status.stdout, status.stdout + status.stderr
        admin = AdminClient({"bootstrap.servers": bootstrap})
        assert sorted(admin.list_topics(timeout=10).brokers) == [1, 2, 3]
        settings = LoopSettings(kafka_bootstrap_servers=bootstrap, topic_prefix="three.")
        ensure_topics(settings, timeout=30)
        meta = admin.list_topics(settings.models_topic, timeout=10).topics[settings.models_topic]
        assert [len(p.replicas) for p in meta.partitions.values()] == [3]
        resource = ConfigResource(ResourceType.TOPIC, settings.models_topic)
        config = admin.describe_configs([resource])[resource].result(10)
        assert config["min.insync.replicas"].value == "2"
        check = cli("check", "--messages", "1000", nodes="3")
        assert check.returncode == 0 and "round trip OK" in check.stdout, check.stdout + check.stderr
    finally:
        down = cli("down")
    assert down.returncode == 0 and "Kafka cluster of 3 nodes" in down.stdout, down.stdout + down.stderr
    assert [p.name for p in tmp_path.glob("node-*/broker.pid")] == []
    assert cli("status").returncode == 1


@pytest.mark.slow
def test_a_secured_three_node_cluster_shares_one_ca_and_one_set_of_principals(tmp_path):
    """KAFKA_NODES=3 with KAFKA_SECURITY=sasl_ssl: the nodes talk to each other over SASL_SSL and mutual TLS with
    one CA; every role's client file names all three nodes; the loop's topics get three replicas."""
    from confluent_kafka.admin import AdminClient

    from infra.kafka import broker, cluster, distribution
    from ml.settings import LoopSettings
    from ml.topics import ensure_topics

    cfg = broker.BrokerConfig(data_dir=tmp_path, security="sasl_ssl", heap="512m")
    kafka = cluster.Cluster(cfg, distribution.fetch(), [(broker.free_port(), broker.free_port()) for _ in range(3)])
    kafka.start()
    try:
        loop = kafka.client_settings("loop")
        assert loop["bootstrap.servers"] == kafka.bootstrap_servers and loop["sasl.username"] == "loop"
        assert sorted(AdminClient(kafka.client_settings()).list_topics(timeout=10).brokers) == [1, 2, 3]
        admin = LoopSettings(kafka_bootstrap_servers=kafka.bootstrap_servers, topic_prefix="secured3.",
                             kafka_client_config=kafka.client_config("admin"))
        ensure_topics(admin, timeout=30)
        meta = AdminClient(kafka.client_settings()).list_topics(admin.models_topic, timeout=10)
        assert [len(p.replicas) for p in meta.topics[admin.models_topic].partitions.values()] == [3]
    finally:
        kafka.stop()
