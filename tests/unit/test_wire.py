"""The Confluent framing, and decoding records of a newer compatible schema through the code's contract."""

from __future__ import annotations

import orjson
import pytest

from ml import decode
from ml.decode import ContractDecoder
from ml.wire import HEADER_SIZE, WireError, header, split
from use_cases.flight_delay.contracts import FlightScheduled

GOOD = {"flight_id": "a", "sched_dep_utc": "2013-01-01T10:00:00+00:00", "sched_arr_utc": "2013-01-01T12:00:00+00:00",
        "year": 2013, "month": 1, "day": 1, "sched_dep_time": 500, "sched_arr_time": 800, "carrier": "UA",
        "flight": 1, "origin": "EWR", "dest": "IAH", "distance": 1400.0}


def test_a_frame_is_magic_byte_zero_and_the_big_endian_schema_id():
    assert header(1) == b"\x00\x00\x00\x00\x01" and len(header(2**31 - 1)) == HEADER_SIZE
    assert split(header(258) + b"{}") == (258, b"{}")


@pytest.mark.parametrize("value, starts", [(b'{"flight_id": "a"}', "b'{\"fli'"), (b"\x01\x00\x00\x00\x01{}", r"b'\x01"),
                                           (b"\x00\x00", r"b'\x00\x00'")])
def test_a_value_without_the_framing_is_refused_naming_its_first_bytes(value, starts):
    with pytest.raises(WireError, match="no Confluent framing") as caught:
        split(value)
    assert caught.value.kind == "framing" and caught.value.error_class == "undecodable"
    assert starts in caught.value.reason


@pytest.mark.parametrize("value", [None, b""])
def test_an_empty_value_is_refused(value):
    with pytest.raises(WireError, match="empty value"):
        split(value)


@pytest.fixture(params=["record by record", "pyarrow"])
def path(request, monkeypatch):
    """Both decoding paths: small batches record by record, large ones through pyarrow's JSON reader."""
    monkeypatch.setattr(decode, "RECORD_BY_RECORD_MAX", 10_000 if request.param == "record by record" else 0)


def test_fields_of_a_newer_schema_are_left_out_and_unknown_ones_still_refused(path):
    newer = [orjson.dumps({**GOOD, "flight_id": f"f{i}", "gate": f"C{i}"}) for i in range(20)]
    older = [orjson.dumps({**GOOD, "flight_id": "old"})]
    stray = orjson.dumps({**GOOD, "flight_id": "stray", "terminal": "B"})
    decoded = ContractDecoder(FlightScheduled, ignore=frozenset({"gate"})).decode([*newer, *older, stray])
    assert decoded.table.schema == ContractDecoder(FlightScheduled).schema
    assert decoded.table.column("flight_id").to_pylist() == [*(f"f{i}" for i in range(20)), "old"]
    assert [(r.index, r.error_class) for r in decoded.rejected] == [(21, "schema")]
    assert "terminal" in decoded.rejected[0].reason
    # Without the newer schema's field list, its records are refused like any unknown field.
    strict = ContractDecoder(FlightScheduled).decode(newer)
    assert len(strict.rejected) == 20 and "gate" in strict.rejected[0].reason


def test_a_newer_schemas_record_is_still_held_to_the_contracts_bounds(path):
    values = [orjson.dumps({**GOOD, "gate": "C1", "distance": -5.0}), orjson.dumps({**GOOD, "gate": None})]
    decoded = ContractDecoder(FlightScheduled, ignore=frozenset({"gate"})).decode(values)
    assert decoded.accepted.tolist() == [1]
    assert [(r.index, r.error_class) for r in decoded.rejected] == [(0, "range")]


def test_a_registry_that_does_not_answer_is_named_with_its_url():
    from infra.local_service import free_port
    from ml.errors import SchemaRegistryUnavailable
    from ml.schema_registry import SchemaRegistry
    from ml.schemas import TopicSchema

    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    with pytest.raises(SchemaRegistryUnavailable, match=f"schema registry at {url} is not reachable"):
        SchemaRegistry(url).writer_id(TopicSchema("flights.scheduled", FlightScheduled))


def test_a_registry_that_accepts_but_never_answers_fails_after_its_timeout():
    """A registry that takes the connection and never replies (a stalled JVM) fails the call after the client's
    timeout and retries, naming the registry, instead of holding the producer forever."""
    import socket

    from ml.errors import SchemaRegistryUnavailable
    from ml.schema_registry import SchemaRegistry
    from ml.schemas import TopicSchema

    with socket.create_server(("127.0.0.1", 0), backlog=16) as stalled:  # the kernel accepts; nobody reads
        url = f"http://127.0.0.1:{stalled.getsockname()[1]}/apis/ccompat/v7"
        registry = SchemaRegistry(url, timeout_s=0.2)
        with pytest.raises(SchemaRegistryUnavailable, match=f"schema registry at {url} is not reachable.*timed out"):
            registry.writer_id(TopicSchema("flights.scheduled", FlightScheduled))


def test_the_registry_timeout_comes_from_the_settings(monkeypatch):
    from ml.schema_registry import SchemaRegistry
    from ml.settings import TopicNames

    monkeypatch.setenv("SCHEMA_REGISTRY_TIMEOUT_S", "2.5")
    names = TopicNames()
    assert names.schema_registry_timeout_s == 2.5
    assert SchemaRegistry.of(names)._client._rest_client.timeout == 2.5
    monkeypatch.setenv("SCHEMA_REGISTRY_TIMEOUT_S", "0")
    with pytest.raises(ValueError, match="schema_registry_timeout_s"):
        TopicNames()
