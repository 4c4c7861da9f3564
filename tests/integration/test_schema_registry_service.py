"""The schema registry the project starts is a real Confluent-compatible one: confluent-kafka's client registers and
reads schemas, they survive a restart (kept in Kafka), and nothing listens beyond loopback."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import psutil
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from infra.registry import server

pytestmark = pytest.mark.integration

FLIGHT_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Flight",
    "type": "object",
    "properties": {"flight_id": {"type": "string"}, "dep_delay": {"type": ["number", "null"]}},
    "required": ["flight_id"],
}


def _client(url: str) -> SchemaRegistryClient:
    """A client that gives up on a request after 30 s and retries it, as the loop's own does (a registry that
    stalls fails the test with the client's error instead of pytest's timeout)."""
    return SchemaRegistryClient({"url": url, "timeout": 30})


def _subject() -> str:
    return f"flights-{uuid.uuid4().hex[:8]}-value"


def test_confluent_client_registers_and_reads_back_a_json_schema(schema_registry_url):
    client = _client(schema_registry_url)
    subject = _subject()
    schema_id = client.register_schema(subject, Schema(json.dumps(FLIGHT_SCHEMA), "JSON"))

    latest = client.get_latest_version(subject)
    assert (latest.schema_id, latest.version, latest.subject) == (schema_id, 1, subject)
    assert latest.schema.schema_type == "JSON"
    assert json.loads(latest.schema.schema_str) == FLIGHT_SCHEMA
    assert json.loads(client.get_schema(schema_id).schema_str) == FLIGHT_SCHEMA
    assert subject in client.get_subjects()
    # The same schema again is the same version, not a new one.
    assert client.register_schema(subject, Schema(json.dumps(FLIGHT_SCHEMA), "JSON")) == schema_id
    assert client.get_versions(subject) == [1]


def test_json_serializer_round_trip_in_the_confluent_framing(schema_registry_url):
    client = _client(schema_registry_url)
    topic = _subject().removesuffix("-value")
    ctx = SerializationContext(topic, MessageField.VALUE)
    record = {"flight_id": "2013-01-01-UA-1545", "dep_delay": 2.0}

    payload = JSONSerializer(json.dumps(FLIGHT_SCHEMA), client)(record, ctx)
    schema_id = client.get_latest_version(f"{topic}-value").schema_id
    # Magic byte 0, then the schema id (big-endian int32), then the JSON document.
    assert payload[0] == 0 and int.from_bytes(payload[1:5], "big") == schema_id
    assert JSONDeserializer(None, schema_registry_client=client)(payload, ctx) == record


@pytest.fixture(scope="module")
def own_registry(new_registry: Callable[[], server.Registry]) -> Iterator[server.Registry]:
    """A second registry beside the session's, with its own folder and Kafka topics, for the tests that restart it
    or look at its process; stopped after this module."""
    registry = new_registry()
    registry.start()
    yield registry
    registry.stop()


@pytest.mark.slow
def test_a_schema_survives_a_restart(own_registry):
    url = own_registry.cfg.ccompat_url
    subject = _subject()
    schema_id = _client(url).register_schema(subject, Schema(json.dumps(FLIGHT_SCHEMA), "JSON"))

    assert own_registry.stop()
    own_registry.start()

    # A new client: nothing answers from a cache.
    client = _client(url)
    latest = client.get_latest_version(subject)
    assert (latest.schema_id, latest.version) == (schema_id, 1)
    assert json.loads(latest.schema.schema_str) == FLIGHT_SCHEMA


def test_every_listener_is_on_loopback(own_registry):
    pid = own_registry.running_pid()
    assert pid is not None
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN}
    # The API and the management interface, nothing else (Quarkus' default would be 0.0.0.0:9000 for the latter).
    assert {port for _, port in listening} == {own_registry.cfg.port, own_registry.cfg.management_port}
    assert {ip for ip, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}
