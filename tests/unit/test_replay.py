"""Replay encoding and ordering: values follow the contracts exactly, keys are stable, time order holds."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

from ml.json_columns import json_column
from ml.replay import EventStream, due_times as _due_times
from ml.settings import LoopSettings
from use_cases.flight_delay import contracts
from use_cases.flight_delay.replay import build_stream, replay, stream_chunks
from use_cases.flight_delay.source import load_completed

SETTINGS = LoopSettings(topic_names={"flights.scheduled": "sched", "flights.completed": "done"})


@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    return load_completed((1, 1), limit=2000)


@pytest.fixture(scope="module")
def stream(flights):
    return build_stream(SETTINGS, flights)


def _expected(row: pd.Series, contract: type) -> dict:
    """The contract's JSON object for one source row, built the slow, obvious way."""
    out = {}
    for name in contract.model_fields:
        v = row[name]
        if isinstance(v, pd.Timestamp):
            v = v.strftime("%Y-%m-%dT%H:%M:%SZ")
        elif v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            v = None
        elif isinstance(v, np.generic):
            v = v.item()
        out[name] = v
    return out


def test_values_are_the_contract_fields_in_order_with_iso_utc_times_and_nulls(flights, stream):
    by_key = {}
    for topic, key, value in zip(stream.topics, stream.keys, stream.values, strict=True):
        by_key[(topic, key)] = value
    for _, row in flights.iterrows():
        sched = orjson.loads(by_key[("sched", row["flight_id"])])
        done = orjson.loads(by_key[("done", row["flight_id"])])
        assert list(sched) == list(contracts.FlightScheduled.model_fields)
        assert list(done) == list(contracts.FlightCompleted.model_fields)
        assert sched == _expected(row, contracts.FlightScheduled)
        assert done == _expected(row, contracts.FlightCompleted)


def test_every_value_validates_against_its_contract(stream):
    contract = {"sched": contracts.FlightScheduled, "done": contracts.FlightCompleted}
    for topic, value in zip(stream.topics, stream.values, strict=True):
        contract[topic].model_validate_json(value, strict=True)


def test_stream_is_in_event_time_order_with_both_events_of_every_flight(flights, stream):
    assert len(stream.values) == 2 * len(flights)
    assert stream.topics.count("sched") == stream.topics.count("done") == len(flights)
    assert np.all(np.diff(stream.timestamps) >= 0)
    for topic, value, ts in zip(stream.topics[:200], stream.values[:200], stream.timestamps[:200], strict=True):
        column = "sched_dep_utc" if topic == "sched" else "arr_utc"
        assert pd.Timestamp(orjson.loads(value)[column]).value // 1_000_000 == ts
    first_seen: dict[str, str] = {}
    for topic, key in zip(stream.topics, stream.keys, strict=True):
        first_seen.setdefault(key, topic)
    assert set(first_seen.values()) == {"sched"}  # a flight is scheduled before it completes


def test_keys_and_values_are_stable_across_replays(flights, stream):
    again = build_stream(SETTINGS, load_completed((1, 1), limit=2000))
    assert again.keys == stream.keys and again.values == stream.values
    assert len(set(stream.keys)) == len(flights)


def test_strings_needing_escapes_are_encoded_like_orjson():
    arr = pa.array(['plain', 'a "quote"', "back\\slash", "new\nline", "tab\t", "ünïcode ✈", None])
    encoded = json_column(arr).to_pylist()
    assert encoded == [orjson.dumps(v).decode() for v in arr.to_pylist()]


def test_floats_ints_bools_and_timestamps_encode_as_json_literals():
    assert json_column(pa.array([1.5, float("nan"), None, 1e-7, 1400.0])).to_pylist() == \
        ["1.5", "null", "null", "1e-7", "1400"]
    assert [orjson.loads(v) for v in json_column(pa.array([1.5, 1e-7, 1400.0])).to_pylist()] == [1.5, 1e-7, 1400]
    assert json_column(pa.array([True, False, None])).to_pylist() == ["true", "false", "null"]
    assert json_column(pa.array([3, None], pa.int64())).to_pylist() == ["3", "null"]
    ts = pa.array([pd.Timestamp("2013-01-01T10:15:00Z"), None], pa.timestamp("us", tz="UTC"))
    assert json_column(ts).to_pylist() == ['"2013-01-01T10:15:00Z"', "null"]
    ms = pa.array([pd.Timestamp("2013-01-01T10:15:00.250Z")], pa.timestamp("ms", tz="UTC"))
    assert json_column(ms).to_pylist() == ['"2013-01-01T10:15:00.250Z"']
    with pytest.raises(ValueError, match="infinite"):
        json_column(pa.array([float("inf")]))


def test_pacing_by_speed_or_rate_but_not_both():
    # The second run of a replay that started at t=0 ms: due times count from the replay's start.
    run = EventStream([], [], [], np.array([60_000, 120_000, 180_000], dtype=np.int64), first=4, origin_ms=0)
    assert _due_times(run, None, None) is None
    assert _due_times(run, 60.0, None).tolist() == [1.0, 2.0, 3.0]
    assert _due_times(run, None, 2.0).tolist() == [2.0, 2.5, 3.0]
    with pytest.raises(ValueError, match="not both"):
        _due_times(run, 1.0, 1.0)
    with pytest.raises(ValueError, match="positive"):
        _due_times(run, 0.0, None)


def test_runs_join_into_the_same_stream_as_one_run(flights, stream):
    runs = list(stream_chunks(SETTINGS, flights, chunk=333))
    assert [r.first for r in runs] == list(range(0, 4000, 333))
    assert [v for r in runs for v in r.values] == stream.values
    assert [k for r in runs for k in r.keys] == stream.keys


def test_month_range_is_checked_before_anything_runs():
    with pytest.raises(ValueError, match="months"):
        replay(SETTINGS, (5, 3))
