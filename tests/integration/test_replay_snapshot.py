"""Replay into and snapshot from a real broker: counts, event-time order, exact offset coverage, retries,
rejected records, empty snapshots and an unreachable broker."""

from __future__ import annotations

import base64
import itertools
import logging
import shutil
import time
import uuid
from collections.abc import Iterator

import orjson
import pandas as pd
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from infra.kafka.broker import free_port
from ml.errors import BrokerUnavailable, LoopError
from ml.replay import duplicate_keys
from ml import snapshot_files
from ml.settings import LoopSettings
from ml.snapshot import (list_manifests, load_snapshots, load_window, partition_offsets, take_snapshot,
                         topic_dir)
from ml.topics import ensure_topics, topic_specs
from ml.wire import Framing, header
from use_cases.flight_delay.contracts import FlightCompleted
from use_cases.flight_delay.replay import build_stream, replay_frame
from use_cases.flight_delay.source import load_completed

SCHEDULED, COMPLETED = "flights.scheduled", "flights.completed"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    return load_completed((1, 1), limit=2000)


@pytest.fixture
def settings(kafka_bootstrap: str, kafka_admin: AdminClient, tmp_path) -> Iterator[LoopSettings]:
    """Settings with this test's own topics (a prefix; created by ensure_topics, deleted afterwards) and data
    folder."""
    s = LoopSettings(use_case="flight_delay", kafka_bootstrap_servers=kafka_bootstrap, loop_data_dir=tmp_path,
                     topic_partitions=3, topic_prefix=f"t{uuid.uuid4().hex[:8]}.")
    yield s
    topics = [spec.topic for spec in topic_specs(s)]
    existing = set(kafka_admin.list_topics(timeout=10).topics)
    for fut in kafka_admin.delete_topics([t for t in topics if t in existing]).values():
        fut.result(timeout=30)


def _read_all(bootstrap: str, topic: str, partitions: int) -> dict[int, list]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: dict[int, list] = {p: [] for p in range(partitions)}
    eof: set[int] = set()
    while len(eof) < partitions:
        for m in c.consume(1000, timeout=1.0):
            if m.error() is None:
                out[m.partition()].append(m)
            elif m.error().code() == KafkaError._PARTITION_EOF:
                eof.add(m.partition())
            else:
                raise AssertionError(m.error())
    c.close()
    return out


def test_topics_are_created_once_with_their_settings(settings, kafka_admin):
    created = ensure_topics(settings)
    # Every registered use case's topics (each once: a topic two use cases read is created once) and the loop's.
    assert all(created.values()) and set(created) == {spec.topic for spec in topic_specs(settings)}
    assert {settings.topic(t) for t in ("flights.scheduled", "flights.completed", "flights.predictions",
                                        "flights.dlq", "sensors.readings", "sensors.scores", "sensors.dlq",
                                        "models", "models.status")} <= set(created)
    assert not any(ensure_topics(settings).values())
    meta = kafka_admin.list_topics(timeout=10)
    assert len(meta.topics[settings.topic(COMPLETED)].partitions) == 3
    assert len(meta.topics[settings.models_topic].partitions) == 1
    res = ConfigResource(ResourceType.TOPIC, settings.models_topic)
    config = kafka_admin.describe_configs([res])[res].result(timeout=10)
    assert config["cleanup.policy"].value == "compact"
    assert config["max.message.bytes"].value == str(4 * 1024 * 1024)


def test_replay_writes_each_flight_once_per_topic_in_event_time_order(settings, flights):
    summary = replay_frame(settings, flights)
    assert summary.counts == {settings.topic(SCHEDULED): 2000, settings.topic(COMPLETED): 2000}
    assert summary.events == 4000 and summary.events_per_s > 0
    for topic in (settings.topic(SCHEDULED), settings.topic(COMPLETED)):
        assert sum(high for _, high in partition_offsets(settings, topic).values()) == 2000
        by_partition = _read_all(settings.kafka_bootstrap_servers, topic, 3)
        keys = []
        for msgs in by_partition.values():
            stamps = [m.timestamp()[1] for m in msgs]
            assert stamps == sorted(stamps)
            keys += [m.key().decode() for m in msgs]
        assert sorted(keys) == sorted(flights["flight_id"])
    assert duplicate_keys(settings, settings.topic(COMPLETED)) == {}


def test_replaying_the_same_flights_twice_is_detectable(settings, flights):
    replay_frame(settings, flights.head(100))
    replay_frame(settings, flights.head(100))
    dupes = duplicate_keys(settings, settings.topic(COMPLETED))
    assert dupes == {fid: 2 for fid in flights["flight_id"].head(100)}


def test_consecutive_snapshots_read_every_offset_exactly_once(settings, flights):
    topic = settings.topic(COMPLETED)
    manifests = []
    for part in (flights.iloc[:500], flights.iloc[500:1200], flights.iloc[1200:]):
        replay_frame(settings, part)
        manifests.append(take_snapshot(settings, topic, FlightCompleted))
    assert [m.row_count for m in manifests] == [500, 700, 800]
    assert [m.sequence for m in manifests] == [1, 2, 3]
    for before, after in itertools.pairwise(manifests):
        assert {p.partition: p.start for p in after.partitions} == before.end_offsets
    assert manifests[-1].end_offsets == {p: high for p, (_, high) in partition_offsets(settings, topic).items()}
    assert list_manifests(settings, topic) == manifests

    frame, window = load_window(settings, topic, FlightCompleted, 3)
    assert window == manifests
    assert len(frame) == 2000 and frame["flight_id"].is_unique
    assert set(frame["flight_id"]) == set(flights["flight_id"])
    assert manifests[0].event_time_min == frame["arr_utc"].iloc[:500].min()
    later, chosen = load_snapshots(settings, topic, FlightCompleted,
                                   [manifests[2].snapshot_id, manifests[1].snapshot_id])
    assert chosen == [manifests[2], manifests[1]] and len(later) == 1500
    with pytest.raises(LoopError, match="no-such-id"):
        load_snapshots(settings, topic, FlightCompleted, ["no-such-id"])

    empty = take_snapshot(settings, topic, FlightCompleted)  # nothing new: 0 rows, not a crash
    assert empty.row_count == 0 and empty.rejected_count == 0
    assert all(p.start == p.end for p in empty.partitions)
    assert empty.event_time_min is None
    assert empty.file_names == [] and empty.format_version == 2


def test_a_retried_snapshot_returns_the_same_manifest_and_hash(settings, flights):
    topic = settings.topic(COMPLETED)
    replay_frame(settings, flights.head(300))
    first = take_snapshot(settings, topic, FlightCompleted, snapshot_id="manual__2013-01-01T00:00:00+00:00")

    # The task failed after the snapshot was written: the retry re-reads nothing, even with new records.
    replay_frame(settings, flights.iloc[300:400])
    assert take_snapshot(settings, topic, FlightCompleted, snapshot_id=first.snapshot_id) == first

    # The task died before the manifest was written: the retry reads again, up to the end offsets of now.
    shutil.rmtree(topic_dir(settings, topic) / first.snapshot_id)
    again = take_snapshot(settings, topic, FlightCompleted, snapshot_id=first.snapshot_id)
    assert again.row_count == 400 and again.sequence == 1
    manifests = list_manifests(settings, topic)
    assert [m.snapshot_id for m in manifests] == [first.snapshot_id]


def test_each_use_case_keeps_its_own_snapshot_series_of_a_topic(settings, flights):
    # Two use cases learning from one topic each train on all of it: neither takes the other's offsets.
    topic = settings.topic(COMPLETED)
    replay_frame(settings, flights.head(300))
    other = LoopSettings.model_validate({**settings.model_dump(), "use_case": "sensor_anomaly"})
    mine = take_snapshot(settings, topic, FlightCompleted)
    theirs = take_snapshot(other, topic, FlightCompleted)
    assert mine.row_count == theirs.row_count == 300 and mine.partitions == theirs.partitions
    assert topic_dir(settings, topic) != topic_dir(other, topic)
    assert [m.snapshot_id for m in list_manifests(other, topic)] == [theirs.snapshot_id]


def test_the_same_offset_range_gives_the_same_content_hash(settings, flights):
    topic = settings.topic(COMPLETED)
    replay_frame(settings, flights.head(300))
    first = take_snapshot(settings, topic, FlightCompleted, snapshot_id="run-1")
    shutil.rmtree(topic_dir(settings, topic) / "run-1")
    again = take_snapshot(settings, topic, FlightCompleted, snapshot_id="run-1")
    assert again.partitions == first.partitions
    assert again.content_hash == first.content_hash and again.row_count == 300


def test_malformed_records_are_counted_and_written_aside(settings, flights):
    ensure_topics(settings)
    topic = settings.topic(COMPLETED)
    good = build_stream(settings, flights.head(50))
    completed = [(k, v) for t, k, v in zip(good.topics, good.keys, good.values, strict=True) if t == topic]
    wrong_type = orjson.loads(completed[0][1]) | {"year": "2013"}
    out_of_range = orjson.loads(completed[1][1]) | {"month": 13}
    missing = {k: v for k, v in orjson.loads(completed[2][1]).items() if k != "arr_utc"}
    framing = Framing(settings)
    bad = [framing.frame(topic, v) for v in (b" not json", orjson.dumps(wrong_type), orjson.dumps(out_of_range),
                                             orjson.dumps(missing))]
    # Bad frames: none, an unknown schema id, the id of another topic's schema.
    bad += [None, completed[3][1], header(2**31 - 1) + completed[3][1],
            framing.frame(settings.topic("flights.scheduled"), completed[3][1])]
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "enable.idempotence": True})
    for i, (key, value) in enumerate(completed):
        p.produce(topic, framing.frame(topic, value), key, partition=i % 3)
        if i % 6 == 0 and i // 6 < len(bad):
            p.produce(topic, bad[i // 6], f"bad-{i}", partition=i % 3)
    assert p.flush(30) == 0

    m = take_snapshot(settings, topic, FlightCompleted)
    assert m.row_count == 50 and m.rejected_count == len(bad) == 8
    assert m.rejected_by_class == {"undecodable": 3, "schema": 4, "range": 1}
    lines = [orjson.loads(line) for line in (topic_dir(settings, topic) / m.snapshot_id / "rejected.jsonl")
             .read_bytes().splitlines()]
    assert sorted(base64.b64decode(r["original_b64"]) for r in lines) == sorted(v or b"" for v in bad)
    assert all(r["reason"] and r["key_b64"] for r in lines)
    assert [(r["partition"], r["offset"]) for r in lines] == sorted((r["partition"], r["offset"]) for r in lines)
    frame, _ = load_window(settings, topic, FlightCompleted, 1)
    assert sorted(frame["flight_id"]) == sorted(k for k, _ in completed)


def test_aborted_transactions_are_not_snapshot(settings, flights):
    ensure_topics(settings)
    topic = settings.topic(COMPLETED)
    stream = build_stream(settings, flights.head(20))
    head = Framing(settings).header(topic)
    values = [(k, head + v) for t, k, v in zip(stream.topics, stream.keys, stream.values, strict=True) if t == topic]
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "transactional.id": uuid.uuid4().hex})
    p.init_transactions(30)
    for commit, chunk in ((True, values[:10]), (False, values[10:])):
        p.begin_transaction()
        for k, v in chunk:
            p.produce(topic, v, k)
        if commit:
            p.commit_transaction(30)
        else:
            p.abort_transaction(30)
    _await_transaction_markers(settings, topic)
    m = take_snapshot(settings, topic, FlightCompleted, timeout=10)
    assert m.row_count == 10 and m.rejected_count == 0


def _await_transaction_markers(settings: LoopSettings, topic: str, timeout: float = 30.0) -> None:
    """Wait until every partition's last stable offset (a snapshot's end) is its high watermark: the markers of the
    transactions reach the partitions after commit and abort have returned, and until they do a snapshot ends before
    those transactions' records (they go to the next one)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": uuid.uuid4().hex})
    deadline = time.monotonic() + timeout
    try:
        while any(end != consumer.get_watermark_offsets(TopicPartition(topic, p), timeout)[1]
                  for p, (_, end) in partition_offsets(settings, topic).items()):
            assert time.monotonic() < deadline, f"the transactions' markers did not reach {topic} in {timeout:.0f} s"
            time.sleep(0.05)
    finally:
        consumer.close()


def test_an_unreachable_broker_is_named_in_the_error(tmp_path, flights):
    servers = f"127.0.0.1:{free_port()}"
    s = LoopSettings(kafka_bootstrap_servers=servers, loop_data_dir=tmp_path, use_case="flight_delay")
    with pytest.raises(BrokerUnavailable, match=servers.replace(".", r"\.")):
        ensure_topics(s, timeout=1)
    with pytest.raises(BrokerUnavailable, match=servers.replace(".", r"\.")):
        replay_frame(s, flights.head(10), timeout=1)
    with pytest.raises(BrokerUnavailable, match=servers.replace(".", r"\.")):
        take_snapshot(s, s.topic(COMPLETED), FlightCompleted, timeout=1)
    assert list_manifests(s, s.topic(COMPLETED)) == []


def _small_pieces(monkeypatch, size: int = 64) -> None:
    """Pieces of ``size`` offsets, read in parallel from two of them on: a few thousand records take every path."""
    monkeypatch.setattr(snapshot_files, "PIECE", size)
    monkeypatch.setattr(snapshot_files, "PARALLEL_MIN_OFFSETS", 2 * size)


def test_a_snapshot_read_by_several_processes_equals_one_read_by_one(settings, flights, monkeypatch, caplog):
    topic = settings.topic(COMPLETED)
    replay_frame(settings, flights.head(600))
    bad = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    bad.produce(topic, key=b"bad", value=b"{not json", partition=1)  # a reject inside a worker's piece
    bad.flush(10)
    _small_pieces(monkeypatch)
    alone = take_snapshot(settings.model_copy(update={"snapshot_workers": 1}), topic, FlightCompleted,
                          snapshot_id="alone")
    shutil.rmtree(topic_dir(settings, topic) / "alone")
    own_read = snapshot_files._Reader.read

    def slowly(self, *args):  # this process only: the workers (new interpreters) start and take their share
        time.sleep(0.5)
        return own_read(self, *args)

    monkeypatch.setattr(snapshot_files._Reader, "read", slowly)
    caplog.set_level(logging.INFO, logger="ml.snapshot_files")
    shared = take_snapshot(settings.model_copy(update={"snapshot_workers": 3}), topic, FlightCompleted,
                           snapshot_id="alone")
    assert shared.format_version == 2 and len(shared.files) > 3
    (line,) = [r.getMessage() for r in caplog.records if "pieces read by 3 processes" in r.getMessage()]
    assert int(line.split("(")[1].split()[0]) > 0, line  # some pieces were read by the workers
    assert [f.model_dump() for f in shared.files] == [f.model_dump() for f in alone.files]
    assert shared.content_hash == alone.content_hash and shared.row_count == 600
    assert shared.rejected_count == 1 and shared.rejected_by_class == {"undecodable": 1}
    assert shared.event_time_min == alone.event_time_min and shared.event_time_max == alone.event_time_max
    assert sum(shared.schema_ids.values()) == 600
    rows, _ = load_snapshots(settings, topic, FlightCompleted, ["alone"])
    assert sorted(rows["flight_id"]) == sorted(flights.head(600)["flight_id"])  # every row once


def test_a_worker_that_dies_leaves_its_pieces_to_the_snapshot_process(settings, flights, monkeypatch, caplog):
    topic = settings.topic(COMPLETED)
    replay_frame(settings, flights.head(400))
    _small_pieces(monkeypatch)
    monkeypatch.setattr(snapshot_files.sys, "executable", "/bin/false")  # the worker exits at once
    manifest = take_snapshot(settings.model_copy(update={"snapshot_workers": 2}), topic, FlightCompleted)
    assert manifest.row_count == 400 and len(manifest.files) == len(snapshot_files.pieces(
        {p.partition: (p.start, p.end) for p in manifest.partitions}))
    assert "snapshot worker" in caplog.text and "this process reads the pieces left" in caplog.text


def test_a_reader_started_ahead_reports_pieces_in_order_raises_a_failed_finish_and_is_closed_after(settings, flights,
                                                                                                    tmp_path):
    topic = settings.topic(COMPLETED)
    replay_frame(settings, flights.head(400))
    todo = snapshot_files.pieces({p: (0, high) for p, (_, high) in partition_offsets(settings, topic).items()}, 64)
    for folder in ("whole", "failed"):
        (tmp_path / folder).mkdir()
    reported: list[snapshot_files.PieceResult] = []
    with snapshot_files.reader_ahead(settings, topic, FlightCompleted, 30) as reader:
        decoder = reader().decoder.result()
        assert len(decoder._groups) == 1 and decoder.batches_at_once  # the latest schema looked up before the reading
        reader().read(iter(todo), reported.append, tmp_path / "whole", 30, 50)
    assert [r.piece for r in reported] == todo and sum(r.rows for r in reported) == 400
    with pytest.raises(RuntimeError):  # its consumer is closed
        reader().consumer.assignment()

    def full_after_three(result: snapshot_files.PieceResult) -> None:
        if len(reported) == 3:
            raise OSError("disk full")
        reported.append(result)

    reported = []
    with snapshot_files.reader_ahead(settings, topic, FlightCompleted, 30) as reader, \
            pytest.raises(OSError, match="disk full"):
        reader().read(iter(todo), full_after_three, tmp_path / "failed", 30, 50)
    assert [r.piece for r in reported] == todo[:3]
