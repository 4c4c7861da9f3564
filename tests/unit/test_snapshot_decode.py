"""Decoding batches: both fast paths (msgspec record by record for small batches, pyarrow's reader for large
ones) and the per-record pydantic contract agree on every record."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest

from ml import contracts, decode
from ml.decode import ERROR_RANGE, ERROR_SCHEMA, ERROR_UNDECODABLE, ContractDecoder, JsonLines, field_checks
from use_cases.flight_delay.contracts import FlightCompleted, FlightScheduled

GOOD = {
    "schema_version": 1, "flight_id": "20130101-UA1545-EWR-0515", "sched_dep_utc": "2013-01-01T10:15:00Z",
    "sched_arr_utc": "2013-01-01T14:19:00Z", "year": 2013, "month": 1, "day": 1, "sched_dep_time": 515,
    "sched_arr_time": 819, "carrier": "UA", "flight": 1545, "tailnum": "N14228", "origin": "EWR", "dest": "IAH",
    "distance": 1400, "temp": 39.02, "dewp": 28.04, "humid": 64.43, "wind_dir": 260, "wind_speed": 12.65858,
    "wind_gust": None, "precip": 0, "pressure": 1011.9, "visib": 10, "plane_year": 1999, "plane_seats": 149,
    "plane_engines": 2, "plane_type": "Fixed wing multi engine", "plane_manufacturer": "BOEING",
    "plane_engine": "Turbo-fan", "arr_utc": "2013-01-01T14:30:00Z", "dep_delay": 2, "arr_delay": 11,
    "cancelled": False, "diverted": False, "delayed": False,
}
MISSING = object()


def record(i: int = 0, **changes) -> bytes:
    rec = dict(GOOD, flight_id=f"20130101-UA{1000 + i}-EWR-0515")
    for key, value in changes.items():
        if value is MISSING:
            rec.pop(key)
        else:
            rec[key] = value
    return orjson.dumps(rec)


@pytest.fixture(params=["record_by_record", "pyarrow"])
def decoder(request, monkeypatch) -> ContractDecoder:
    """A decoder whose fast path is the one named: every batch of these tests is small, so the pyarrow
    reader is chosen by lowering the size limit of the record-by-record path."""
    if request.param == "pyarrow":
        monkeypatch.setattr(decode, "RECORD_BY_RECORD_MAX", 0)
    return ContractDecoder(FlightCompleted)


def test_valid_batch_is_decoded_in_order_with_the_contract_schema(decoder):
    values = [record(i) for i in range(500)]
    out = decoder.decode(values)
    assert out.rejected == []
    assert out.accepted.tolist() == list(range(500))
    assert out.table.schema == contracts.arrow_schema(FlightCompleted)
    assert out.table.column("flight_id").to_pylist() == [f"20130101-UA{1000 + i}-EWR-0515" for i in range(500)]
    first = out.table.slice(0, 1).to_pylist()[0]
    assert first["arr_utc"].isoformat() == "2013-01-01T14:30:00+00:00"
    assert first["wind_gust"] is None and first["distance"] == 1400.0


BAD = [
    (b"not json", ERROR_UNDECODABLE),
    (b"\xff\xfe\x00", ERROR_UNDECODABLE),
    (b"", ERROR_UNDECODABLE),
    (None, ERROR_UNDECODABLE),
    (b'{"flight_id": "x",\n"year": 2013}', ERROR_SCHEMA),  # raw newline: must not split into two rows
    (b"[1, 2, 3]", ERROR_UNDECODABLE),
    (record(year="2013"), ERROR_SCHEMA),  # wrong types (strict: no coercion from strings or floats)
    (record(flight=15.0), ERROR_SCHEMA),
    (record(cancelled="yes"), ERROR_SCHEMA),
    (record(carrier=7), ERROR_SCHEMA),
    (record(flight_id=MISSING), ERROR_SCHEMA),  # missing required field
    (record(arr_utc=None), ERROR_SCHEMA),  # null in a required field
    (record(extra_field=1), ERROR_SCHEMA),
    (record(arr_utc="2013-01-01T14:30:00"), ERROR_SCHEMA),  # no time zone
    (record(arr_utc="yesterday"), ERROR_SCHEMA),
    (record(month=13), ERROR_RANGE),  # out of range, bounds from the contract
    (record(temp=500.0), ERROR_RANGE),
    (record(distance=0), ERROR_RANGE),  # gt, not ge
    (record(dep_delay=5000.0), ERROR_RANGE),  # bound nested in Optional[Annotated[...]]
    (record(flight_id="x" * 65), ERROR_RANGE),
    (record(origin="JF"), ERROR_RANGE),
    (record(schema_version=2), ERROR_RANGE),
    (record().replace(b'"temp":39.02', b'"temp":NaN'), ERROR_RANGE),
]


@pytest.mark.parametrize("value,error_class", BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_record_is_rejected_with_its_class_and_the_rest_of_the_batch_kept(decoder, value, error_class):
    values = [record(0), record(1), value, record(3)]
    out = decoder.decode(values)
    assert out.accepted.tolist() == [0, 1, 3]
    assert out.table.column("flight_id").to_pylist() == [f"20130101-UA{1000 + i}-EWR-0515" for i in (0, 1, 3)]
    assert [(r.index, r.error_class) for r in out.rejected] == [(2, error_class)]
    assert out.rejected[0].reason


def test_many_bad_records_in_one_batch_are_all_counted(decoder):
    values = [record(i) if i % 7 else record(i, month=0) for i in range(100)]
    out = decoder.decode(values)
    assert len(out.rejected) == 15 and out.table.num_rows == 85
    assert {r.error_class for r in out.rejected} == {ERROR_RANGE}
    assert all("month" in r.reason for r in out.rejected)


def test_pydantic_defaults_apply_on_the_fallback_path(decoder):
    out = decoder.decode([record(0), record(1, schema_version=MISSING), record(2, tailnum=MISSING)])
    assert out.rejected == []
    assert out.table.column("schema_version").to_pylist() == [1, 1, 1]
    assert out.table.column("tailnum").to_pylist() == ["N14228", "N14228", None]


def test_fast_and_fallback_paths_give_identical_rows(decoder):
    values = [record(i, temp=float(i), arr_utc=f"2013-01-01T14:{i % 60:02d}:00+00:00") for i in range(50)]
    fast = decoder.decode(values).table
    # One bad record forces the whole batch through the per-record path.
    slow = decoder.decode([*values, b"{broken"]).table
    assert slow.equals(fast)


def test_both_fast_paths_give_identical_tables(monkeypatch):
    values = [record(i, temp=float(i % 100) if i % 3 else None, arr_utc=f"2013-01-01T{i % 24:02d}:15:00-05:00",
                     tailnum=None if i % 5 == 0 else f"N{i}", dep_delay=i - 20) for i in range(300)]
    values[7] = record(7, month=0)  # flagged on one path, refused on the other: rejected either way
    by_record = ContractDecoder(FlightCompleted).decode(values)
    monkeypatch.setattr(decode, "RECORD_BY_RECORD_MAX", 0)
    by_pyarrow = ContractDecoder(FlightCompleted).decode(values)
    assert by_record.table.equals(by_pyarrow.table)
    assert by_record.accepted.tolist() == by_pyarrow.accepted.tolist() == [i for i in range(300) if i != 7]
    assert by_record.rejected == by_pyarrow.rejected


def test_the_record_by_record_path_is_taken_up_to_its_limit_and_needs_no_fallback(monkeypatch):
    calls = []
    monkeypatch.setattr(ContractDecoder, "_validate_each",
                        lambda self, values, idx, skip: calls.append(list(idx)) or ([], [], []))
    decoder = ContractDecoder(FlightCompleted)
    out = decoder.decode([record(i) for i in range(decode.RECORD_BY_RECORD_MAX)])
    assert out.table.num_rows == decode.RECORD_BY_RECORD_MAX and calls == [[]]


def test_offsets_in_other_zones_are_converted_to_utc(decoder):
    out = decoder.decode([record(0, arr_utc="2013-01-01T09:30:00-05:00")])
    assert out.table.column("arr_utc")[0].as_py().isoformat() == "2013-01-01T14:30:00+00:00"


def test_checks_are_derived_from_the_contract_metadata():
    checks = {c.name: c for c in field_checks(FlightCompleted)}
    assert checks["month"].bounds == (("less", 1), ("greater", 12))
    assert checks["distance"].bounds == (("less_equal", 0), ("greater", 6000))
    assert checks["dep_delay"].bounds == (("less", -1440), ("greater", 2880)) and checks["dep_delay"].nullable
    assert (checks["origin"].min_len, checks["origin"].max_len) == (3, 4)
    assert checks["schema_version"].literals == (1,)
    assert not checks["flight_id"].nullable


def test_scheduled_contract_refuses_completed_fields(decoder):
    out = ContractDecoder(FlightScheduled).decode([record(0)])
    assert out.table.num_rows == 0
    assert out.rejected[0].error_class == ERROR_SCHEMA and "Extra inputs" in out.rejected[0].reason
    assert isinstance(out.table, pa.Table)


def test_lines_hold_a_large_batch_in_one_buffer_with_each_values_header_read_and_blanked(monkeypatch):
    monkeypatch.setattr(decode, "RECORD_BY_RECORD_MAX", 2)
    values = [b"\x00\x00\x00\x00\x07" + record(i) for i in range(3)]
    lines = JsonLines.of(values, skip=5)
    assert lines.heads.tolist() == [[0, 0, 0, 0, 7]] * 3 and len(lines) == 3
    assert bytes(lines.buffer) == b"\n".join(b"     " + record(i) for i in range(3))


@pytest.mark.parametrize("values", [[b"12345{}"] * 2, [b"12345{}", None, b"12345{}"],
                                    [b"12345{}", b"12345", b"123456"]],
                         ids=["small", "a null", "no record after the header"])
def test_lines_refuse_a_small_batch_and_one_with_a_value_holding_no_record(monkeypatch, values):
    monkeypatch.setattr(decode, "RECORD_BY_RECORD_MAX", 2)
    assert JsonLines.of(values, skip=5) is None


def test_a_large_batch_read_after_its_headers_decodes_as_the_records_alone(monkeypatch):
    monkeypatch.setattr(decode, "RECORD_BY_RECORD_MAX", 0)
    values = [record(i, month=0) if i == 3 else record(i) for i in range(20)]
    values[5] = record(5).replace(b",", b",\n", 1)  # a raw newline: the whole batch is read record by record
    decoder = ContractDecoder(FlightCompleted)
    alone = decoder.decode(values)
    for batch in (values, values[:5] + values[6:]):
        framed = decoder.decode_lines(JsonLines.of([b"\x00\x00\x00\x00\x01" + v for v in batch], skip=5))
        expected = decoder.decode(batch)
        assert framed.table.equals(expected.table) and framed.rejected == expected.rejected
        assert framed.accepted.tolist() == expected.accepted.tolist()
    assert alone.table.num_rows == 19 and [(r.index, r.error_class) for r in alone.rejected] == [(3, ERROR_RANGE)]


def test_a_decoder_of_batches_at_once_parses_a_large_batch_as_one_block_into_the_same_rows(monkeypatch):
    monkeypatch.setattr(decode, "RECORD_BY_RECORD_MAX", 0)
    values = [record(i, dep_delay=i % 50) for i in range(3000)]  # about 2 MiB: blocks of 1 MiB by default
    by_blocks = ContractDecoder(FlightCompleted).decode(values).table
    at_once = ContractDecoder(FlightCompleted, batches_at_once=True).decode(values).table
    assert at_once.equals(by_blocks)
    assert by_blocks.column("flight_id").num_chunks > 1 and at_once.column("flight_id").num_chunks == 1
