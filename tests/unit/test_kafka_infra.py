"""Clear errors from the local-broker tooling: taken ports, missing prerequisites, failed downloads; the secured
broker's settings, certificates and client files, and how the registry reaches it; a cluster's nodes and their
replication settings."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from confluent_kafka import KafkaError, KafkaException
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from infra.kafka import broker, cluster, distribution, security
from infra.kafka.errors import KafkaSetupError
from infra.registry import distribution as registry_distribution, server as registry_server
from infra.registry.distribution import RegistrySetupError
from ml.kafka_client import read_properties
from ml.settings import LoopSettings
from ml.topics import replication, topic_specs


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


# ---------------------------------------------------------------- the secured broker (KAFKA_SECURITY=sasl_ssl)

def _secured(tmp_path, **extra) -> broker.BrokerConfig:
    return broker.BrokerConfig(data_dir=tmp_path, port=1234, controller_port=1235, security="sasl_ssl", **extra)


def test_security_comes_from_the_environment_and_defaults_to_plaintext(monkeypatch, tmp_path):
    monkeypatch.delenv("KAFKA_SECURITY", raising=False)
    assert broker.BrokerConfig(data_dir=tmp_path).security == "plaintext"
    monkeypatch.setenv("KAFKA_SECURITY", "sasl_ssl")
    assert broker.BrokerConfig(data_dir=tmp_path).secured
    monkeypatch.setenv("KAFKA_SECURITY", "ssl")
    with pytest.raises(ValueError, match="plaintext.*sasl_ssl"):
        broker.BrokerConfig(data_dir=tmp_path)


def test_plaintext_settings_are_unchanged_by_the_security_option(tmp_path):
    props = broker.server_properties(broker.BrokerConfig(data_dir=tmp_path, port=1234, controller_port=1235))
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert not any(key.startswith(("ssl.", "sasl.", "authorizer", "super.")) for key in props)


def test_secured_settings_authenticate_every_listener_and_deny_by_default(tmp_path):
    cfg = _secured(tmp_path, overrides={"message.max.bytes": "2000000"})
    props = broker.server_properties(cfg, admin_password="pw-admin")
    assert props["listeners"] == "SASL_SSL://127.0.0.1:1234,CONTROLLER://127.0.0.1:1235"
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:1234"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SSL"
    assert "PLAINTEXT" not in props["listeners"] + props["listener.security.protocol.map"]
    assert (props["sasl.enabled.mechanisms"], props["sasl.mechanism.inter.broker.protocol"]) == ("SCRAM-SHA-512",) * 2
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"] == (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="pw-admin";')
    # The controller: mutual TLS, the broker's certificate its only way in.
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert (props["ssl.keystore.type"], props["ssl.truststore.type"]) == ("PEM", "PEM")
    assert props["ssl.keystore.location"] == str(tmp_path / "tls" / "broker.pem")
    assert props["ssl.truststore.location"] == str(tmp_path / "tls" / "ca.pem")
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:admin;User:CN=retrain-loop-broker"
    # The single-node settings and the overrides still apply.
    assert props["transaction.state.log.min.isr"] == "1" and props["message.max.bytes"] == "2000000"


def test_secured_settings_need_the_admin_password(tmp_path):
    with pytest.raises(KafkaSetupError, match="admin password"):
        broker.server_properties(_secured(tmp_path))


def _load_cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_broker_certificate_is_signed_by_the_local_ca_for_the_host_and_loopback(tmp_path):
    files = security.ensure_tls(tmp_path / "tls", "10.1.2.3")
    ca, cert = _load_cert(files.ca_cert), _load_cert(files.broker_cert)
    cert.verify_directly_issued_by(ca)  # raises unless the CA signed it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                            ipaddress.ip_address("10.1.2.3")}
    assert cert.subject.rfc4514_string() == f"CN={security.BROKER_CN}"
    usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_private_keys_are_owner_only_and_the_key_store_holds_key_and_chain(tmp_path):
    files = security.ensure_tls(tmp_path / "tls", "broker.example")
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    for private in (files.ca_key, files.broker_keystore):
        assert private.stat().st_mode & 0o777 == 0o600, private
    pem = files.broker_keystore.read_text()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----") and pem.count("BEGIN CERTIFICATE") == 2
    chain = x509.load_pem_x509_certificates(pem.split("-----END PRIVATE KEY-----\n")[1].encode())
    assert chain == [_load_cert(files.broker_cert), _load_cert(files.ca_cert)]
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert key.public_key() == chain[0].public_key()
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "broker.example" in san.get_values_for_type(x509.DNSName)


def test_certificates_are_reused_and_the_broker_one_reissued_for_a_new_host(tmp_path):
    first = security.ensure_tls(tmp_path / "tls", "127.0.0.1")
    before = {p: p.read_bytes() for p in (first.ca_cert, first.ca_key, first.broker_cert, first.broker_keystore)}
    security.ensure_tls(tmp_path / "tls", "127.0.0.1")
    assert {p: p.read_bytes() for p in before} == before
    moved = security.ensure_tls(tmp_path / "tls", "kafka.local")
    assert moved.ca_cert.read_bytes() == before[first.ca_cert]
    assert moved.broker_cert.read_bytes() != before[first.broker_cert]
    _load_cert(moved.broker_cert).verify_directly_issued_by(_load_cert(moved.ca_cert))


def test_each_role_gets_a_private_client_file_and_a_scram_credential(tmp_path):
    clients = tmp_path / "clients"
    made = security.passwords(clients, create=True)
    assert set(made) == set(security.ROLES) and len(set(made.values())) == len(security.ROLES)
    files = security.write_client_files(clients, "127.0.0.1:1234", made, tmp_path / "tls" / "ca.pem")
    for role, path in files.items():
        assert path == clients / f"{role}.properties" and path.stat().st_mode & 0o777 == 0o600
        assert read_properties(path) == {
            "bootstrap.servers": "127.0.0.1:1234", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": role, "sasl.password": made[role], "ssl.ca.location": str(tmp_path / "tls" / "ca.pem")}
    # Kept: a restart reads the same passwords back.
    assert security.passwords(clients, create=False) == made
    args = security.scram_arguments(made)
    assert args[:2] == ["--add-scram", f"SCRAM-SHA-512=[name=admin,password={made['admin']}]"]
    assert len(args) == 2 * len(security.ROLES)


def test_a_formatted_storage_without_its_passwords_is_not_started(tmp_path):
    cfg = _secured(tmp_path)
    cfg.log_dirs.mkdir(parents=True)
    (cfg.log_dirs / "meta.properties").write_text("cluster.id=x\n")
    with pytest.raises(KafkaSetupError, match="SCRAM passwords it was formatted with are not in .*admin.properties"):
        broker.Broker(cfg, distribution.Distribution("0", tmp_path)).prepare()
    assert not cfg.clients_dir.exists() or not any(cfg.clients_dir.iterdir())


def test_a_secured_data_folder_is_not_served_in_plaintext(tmp_path):
    security.write_client_files(tmp_path / "clients", "127.0.0.1:1234", {"admin": "pw"}, tmp_path / "ca.pem")
    cfg = broker.BrokerConfig(data_dir=tmp_path, port=1234, controller_port=1235)
    with pytest.raises(KafkaSetupError, match="holds a sasl_ssl broker .*KAFKA_SECURITY=sasl_ssl"):
        broker.Broker(cfg, distribution.Distribution("0", tmp_path)).prepare()
    assert not cfg.props_file.exists()


def test_client_config_names_a_role_file(tmp_path):
    cfg = _secured(tmp_path)
    assert cfg.client_config() == tmp_path / "clients" / "admin.properties"
    assert cfg.client_config("scorer") == tmp_path / "clients" / "scorer.properties"
    with pytest.raises(ValueError, match="unknown role 'root'"):
        cfg.client_config("root")


def test_refused_credentials_and_untrusted_certificates_are_named(tmp_path):
    settings = {"sasl.username": "loop", "sasl.mechanism": "SCRAM-SHA-512", "ssl.ca.location": "/x/ca.pem"}
    down = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")
    auth = KafkaError(KafkaError._AUTHENTICATION, "sasl_ssl://h:1/bootstrap: SASL authentication error: invalid")
    tls = KafkaError(KafkaError._SSL, "sasl_ssl://h:1/bootstrap: SSL handshake failed: certificate verify failed")
    exc = KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata"))
    assert security.connection_failure("h:1", settings, [down, auth], exc) == (
        "Kafka at h:1 refused the credentials of 'loop' (SCRAM-SHA-512): sasl_ssl://h:1/bootstrap: SASL "
        "authentication error: invalid; check sasl.username and sasl.password")
    message = security.connection_failure("h:1", settings, [tls, down], exc)
    assert message.startswith("TLS with Kafka at h:1 failed: sasl_ssl://h:1/bootstrap: SSL handshake failed")
    assert "this client trusts /x/ca.pem" in message
    assert security.connection_failure("h:1", {}, [down], exc).startswith("Kafka at h:1 is not reachable: ")


def test_the_registry_reaches_a_secured_broker_through_its_environment(tmp_path):
    clients = tmp_path / "clients"
    security.write_client_files(clients, "127.0.0.1:1234", {"admin": 'p"w\\1'}, tmp_path / "tls" / "ca.pem")
    cfg = registry_server.RegistryConfig(data_dir=tmp_path / "registry",
                                         kafka_client_config=clients / "admin.properties")
    env = registry_server.kafka_client_environment(cfg)
    assert env == {
        "APICURIO_KAFKA_COMMON_SECURITY_PROTOCOL": "SASL_SSL",
        "APICURIO_KAFKA_COMMON_SASL_MECHANISM": "SCRAM-SHA-512",
        "APICURIO_KAFKA_COMMON_SASL_JAAS_CONFIG":
            'org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="p\\"w\\\\1";',
        "APICURIO_KAFKA_COMMON_SSL_TRUSTSTORE_TYPE": "PEM",
        "APICURIO_KAFKA_COMMON_SSL_TRUSTSTORE_LOCATION": str(tmp_path / "tls" / "ca.pem"),
        "APICURIO_KAFKA_COMMON_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "https",
    }
    registry = registry_server.Registry(cfg, registry_distribution.Distribution("3.3.3", tmp_path / "dist"))
    registry.java = "java"  # the command line without looking for a Java 21
    assert registry.environment() == env
    assert not [arg for arg in registry.command() if "p\"w" in arg or "KAFKA_COMMON" in arg.upper()]
    # Plaintext: nothing added, as before.
    assert registry_server.kafka_client_environment(registry_server.RegistryConfig(data_dir=tmp_path)) == {}


def test_the_registry_names_client_settings_it_cannot_carry(tmp_path):
    with pytest.raises(RegistrySetupError, match="cannot take ssl.key.location"):
        registry_server.kafka_client_properties({"security.protocol": "SSL", "ssl.key.location": "/k.pem"})
    with pytest.raises(RegistrySetupError, match="SASL_SSL needs sasl.mechanism"):
        registry_server.kafka_client_properties({"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI",
                                                 "sasl.username": "u"})
    cfg = registry_server.RegistryConfig(data_dir=tmp_path, kafka_client_config=tmp_path / "missing.properties")
    with pytest.raises(RegistrySetupError, match="cannot read the Kafka client configuration .*missing.properties"):
        registry_server.kafka_client_environment(cfg)


def test_a_secured_node_keeps_the_c2_compiler_tls_needs(tmp_path):
    dist = distribution.Distribution("4.1.1", tmp_path)
    plain = broker.BrokerConfig(data_dir=tmp_path / "p", security="plaintext")
    secured = broker.BrokerConfig(data_dir=tmp_path / "s", security="sasl_ssl")
    assert "-XX:TieredStopAtLevel=1" in broker._java_cmd("java", dist, plain, "kafka.Kafka")
    cmd = broker._java_cmd("java", dist, secured, "kafka.Kafka")
    assert "-XX:+UseZGC" in cmd and not [a for a in cmd if a.startswith("-XX:TieredStopAtLevel")]


# ---------------------------------------------------------------- a cluster (KAFKA_NODES=3)

def test_a_three_node_cluster_has_a_node_per_folder_and_port_pair_and_one_quorum(tmp_path):
    nodes = cluster.node_configs(broker.BrokerConfig(data_dir=tmp_path, port=19092, nodes=3))
    assert [(n.node_id, n.port, n.controller_port) for n in nodes] == [(1, 19092, 19093), (2, 19094, 19095),
                                                                       (3, 19096, 19097)]
    assert [n.data_dir for n in nodes] == [tmp_path / f"node-{i}" for i in (1, 2, 3)]
    assert {n.shared_dir for n in nodes} == {tmp_path}
    assert nodes[2].cluster_bootstrap_servers == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    props = [broker.server_properties(n) for n in nodes]
    assert {p["controller.quorum.voters"] for p in props} == {
        "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"}
    assert [p["node.id"] for p in props] == ["1", "2", "3"]
    for key in ("default.replication.factor", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor", "share.coordinator.state.topic.replication.factor"):
        assert props[0][key] == "3", key
    for key in ("min.insync.replicas", "transaction.state.log.min.isr", "share.coordinator.state.topic.min.isr"):
        assert props[0][key] == "2", key


def test_one_node_is_the_single_node_layout(tmp_path):
    cfg = broker.BrokerConfig(data_dir=tmp_path, port=1234, controller_port=1235)
    assert cluster.node_configs(cfg) == [cfg]
    props = broker.server_properties(cfg)
    assert (props["controller.quorum.voters"], props["min.insync.replicas"]) == ("1@127.0.0.1:1235", "1")


@pytest.mark.parametrize(("brokers", "expected"), [(1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (5, (3, 2))])
def test_replication_follows_the_cluster_size(brokers, expected):
    assert replication(brokers) == expected


def test_topics_on_three_brokers_are_replicated_three_times_with_two_in_sync():
    specs = topic_specs(LoopSettings(), brokers=3)
    assert {s.replication_factor for s in specs} == {3}
    assert {s.config["min.insync.replicas"] for s in specs} == {"2"}
    assert {s.replication_factor for s in topic_specs(LoopSettings())} == {1}


def test_nodes_of_a_cluster_share_one_cluster_id(tmp_path):
    nodes = cluster.node_configs(broker.BrokerConfig(data_dir=tmp_path, nodes=3))
    assert len({broker.cluster_id(n) for n in nodes}) == 1
    lone = broker.BrokerConfig(data_dir=tmp_path / "lone")
    assert broker.cluster_id(lone) != broker.cluster_id(lone)  # a lone node's storage is formatted once


def test_a_folder_of_another_size_is_refused_by_name(tmp_path):
    (tmp_path / "kraft-logs").mkdir()  # a single node's storage
    with pytest.raises(KafkaSetupError, match=r"holds a cluster of 1 node\(s\), not 3: start it with KAFKA_NODES=1"):
        cluster.Cluster(broker.BrokerConfig(data_dir=tmp_path, nodes=3), distribution.Distribution("0", tmp_path)
                        ).start()


def test_down_and_status_find_the_size_in_the_folder(tmp_path, monkeypatch):
    for i in (1, 2, 3):
        (tmp_path / f"node-{i}").mkdir()
    monkeypatch.setenv("KAFKA_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("KAFKA_NODES", raising=False)
    assert len(cluster.Cluster.from_env().nodes) == 3
    monkeypatch.setenv("KAFKA_NODES", "1")
    assert len(cluster.Cluster.from_env().nodes) == 1  # said explicitly: the start refuses the folder
