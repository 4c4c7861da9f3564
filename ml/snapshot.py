"""Exact, offset-recorded snapshots of a topic into Parquet, one manifest per snapshot.

A snapshot reads every partition from where the previous snapshot of the topic ended (the beginning if
there is none) up to the end offsets fixed when it starts, so consecutive snapshots cover each offset exactly
once. The manifests under ``settings.snapshot_dir/<use case>/<topic>/<snapshot_id>/`` are the offset record: no
consumer group offsets are committed. Each use case keeps its own series, so two use cases reading one topic
each see all of it. Records that break the topic's contract are written aside with a reason and
counted; whether that many rejections are acceptable is the validation step's decision.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import OffsetSpec
from pydantic import BaseModel, Field

from ml.client_ids import SNAPSHOT_GROUP
from ml.contracts import Contract, arrow_schema
from ml.decode import Decoded
from ml.errors import LoopError, TopicMissing
from ml.settings import LoopSettings
from ml.topics import admin_client, require_broker
from ml.wire import TopicDecoder

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DATA = "data.parquet"
REJECTED = "rejected.jsonl"
BATCH = 10_000
ROW_GROUP = 65_536  # fixed row-group size: the file's bytes depend only on the rows
READ_AHEAD = 4  # batches read ahead of the decoder: bounds memory to a few batches of raw values
_SNAPSHOT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,199}$")

class PartitionRange(BaseModel):
    """Offsets ``[start, end)`` of one partition read by a snapshot."""

    partition: int = Field(ge=0)
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class SnapshotManifest(BaseModel):
    """What a snapshot read and wrote; the small reference tasks pass on instead of data."""

    snapshot_id: str
    sequence: int = Field(ge=1, description="1 for the topic's first snapshot, then +1 each")
    topic: str
    contract: str
    schema_version: int
    partitions: list[PartitionRange]
    row_count: int
    rejected_count: int
    rejected_by_class: dict[str, int]
    content_hash: str = Field(description="sha256 of data.parquet (rows in partition, offset order)")
    event_time_column: str
    event_time_min: datetime | None
    event_time_max: datetime | None
    created_at: datetime
    read_seconds: float
    data_file: str = DATA
    rejected_file: str | None = None
    triggered_by: str | None = Field(None, description="the announcement (ml.new_records) whose asset event "
                                                       "started the run that took it; None: a scheduled or "
                                                       "manual run")
    schema_ids: dict[int, int] = Field(default_factory=dict, description="rows by the registry schema id they "
                                       "were written with (empty in manifests from before the registry)")

    @property
    def end_offsets(self) -> dict[int, int]:
        return {p.partition: p.end for p in self.partitions}


def snapshot_consumer(settings: LoopSettings) -> Consumer:
    """A consumer for reading explicit offset ranges with ``assign``; it never commits."""
    return Consumer(settings.kafka_config({
        # Required by librdkafka even with assign(); nothing is committed under it (the manifests are the
        # offset record), so sharing the id between snapshots is harmless.
        "group.id": SNAPSHOT_GROUP,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # EOF events tell us a partition is caught up even when its last offsets are transaction markers.
        "enable.partition.eof": True,
        # Never snapshot records of open or aborted transactions.
        "isolation.level": "read_committed",
        # An offset that vanished (retention) between planning and reading must fail, not silently jump.
        "auto.offset.reset": "error",
        # Larger fetches: snapshots read whole ranges, latency does not matter.
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "fetch.wait.max.ms": 100,
        "queued.min.messages": 1_000_000,
        "log_level": 3,
    }))


def partition_offsets(settings: LoopSettings, topic: str, timeout: float = 30.0) -> dict[int, tuple[int, int]]:
    """partition -> (earliest, end) offsets of ``topic`` as a read_committed consumer sees them now.

    The end is the last stable offset, so an open transaction does not hold a snapshot back.
    Raises BrokerUnavailable or TopicMissing.
    """
    admin = admin_client(settings)
    meta = require_broker(admin, settings, timeout)
    if topic not in meta.topics or meta.topics[topic].error is not None:
        raise TopicMissing(topic, settings.kafka_bootstrap_servers)
    parts = sorted(meta.topics[topic].partitions)
    out: dict[int, list[int]] = {p: [0, 0] for p in parts}
    for slot, spec in ((0, OffsetSpec.earliest()), (1, OffsetSpec.latest())):
        futures = admin.list_offsets({TopicPartition(topic, p): spec for p in parts},
                                     isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=timeout)
        for tp, fut in futures.items():
            out[tp.partition][slot] = fut.result().offset
    return {p: (low, high) for p, (low, high) in out.items()}


@dataclass(frozen=True)
class Batch:
    """The data messages of one consume call and their values (pulled out once)."""

    messages: list[Message]
    values: list[bytes | None]


def read_ranges(consumer: Consumer, topic: str, ranges: dict[int, tuple[int, int]], timeout: float = 30.0,
                batch_size: int = BATCH) -> Iterator[Batch]:
    """Yield batches of the data messages in ``[start, end)`` of each partition, partition by partition, so
    the records come in (partition, offset) order.

    A partition is done at its last offset, at a message beyond the end (written after the end was fixed),
    or at an EOF at or past the end (the last offsets may be transaction markers, which are never delivered).
    Raises LoopError if a partition makes no progress for ``timeout`` seconds.
    """
    for p, (start, end) in sorted(ranges.items()):
        if start < end:
            yield from _read_partition(consumer, TopicPartition(topic, p, start), end, timeout, batch_size)


def _read_partition(consumer: Consumer, tp: TopicPartition, end: int, timeout: float, batch_size: int
                    ) -> Iterator[Batch]:
    consumer.assign([tp])
    try:
        idle_since, reading = time.monotonic(), True
        while reading:
            msgs = consumer.consume(batch_size, timeout=0.1)
            # Comprehensions rather than one loop with appends: this runs once per record.
            data = [m for m in msgs if m.error() is None]
            if len(data) != len(msgs):
                for m in msgs:
                    err = m.error()
                    if err is not None and err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(err)
                    if err is not None and m.offset() >= end:
                        reading = False
            if data and data[-1].offset() >= end - 1:
                reading = False
                if data[-1].offset() >= end:  # written after the end was fixed: the next snapshot's
                    data = [m for m in data if m.offset() < end]
            if data:
                idle_since = time.monotonic()
                yield Batch(data, [m.value() for m in data])
            elif reading and time.monotonic() - idle_since > timeout:
                (pos,) = consumer.position([tp])
                raise LoopError(f"reading {tp.topic}[{tp.partition}]: no progress for {timeout:.0f} s at "
                                f"offset {pos.offset}, short of the end offset {end}")
    finally:
        consumer.unassign()


def topic_dir(settings: LoopSettings, topic: str) -> Path:
    """Where the snapshots of ``topic`` taken for the settings' use case live; ValueError without one."""
    if settings.use_case is None:
        raise ValueError("a snapshot series belongs to a use case: set USE_CASE")
    return settings.snapshot_dir / settings.use_case / topic


def list_manifests(settings: LoopSettings, topic: str) -> list[SnapshotManifest]:
    """The complete snapshots of ``topic`` in the order they were taken (a folder without a manifest is an
    interrupted attempt and does not count)."""
    manifests = [SnapshotManifest.model_validate_json(p.read_bytes())
                 for p in topic_dir(settings, topic).glob(f"*/{MANIFEST}")]
    return sorted(manifests, key=lambda m: m.sequence)


@contextlib.contextmanager
def _topic_lock(settings: LoopSettings, topic: str) -> Iterator[None]:
    """An exclusive lock per topic: two snapshots running at once would read the same offsets twice."""
    folder = topic_dir(settings, topic)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _plan(previous: SnapshotManifest | None, offsets: dict[int, tuple[int, int]], topic: str
          ) -> dict[int, tuple[int, int]]:
    """partition -> (start, end): the previous snapshot's end (or the earliest offset) up to the end now."""
    ends = previous.end_offsets if previous else {}
    ranges = {}
    for p, (low, high) in offsets.items():
        start = ends.get(p, low)
        if start > high:
            raise LoopError(f"{topic}[{p}] ends at offset {high} but the previous snapshot "
                            f"{previous.snapshot_id} read up to {start}: was the topic deleted and recreated?")
        if start < low:
            log.warning("%s[%d]: offsets %d-%d were deleted (retention) before any snapshot read them",
                        topic, p, start, low - 1)
            start = low
        ranges[p] = (start, high)
    return ranges


def take_snapshot(settings: LoopSettings, topic: str, contract: type[Contract], *, snapshot_id: str | None = None,
                  timeout: float = 30.0, batch_size: int = BATCH, triggered_by: str | None = None) -> SnapshotManifest:
    """Snapshot ``topic`` (records of ``contract``) from the last snapshot's end offsets to its end offsets
    now; return the manifest.

    With ``snapshot_id`` (e.g. the Airflow run id) a retry returns the existing manifest of that id without
    reading anything. An empty range gives a manifest with 0 rows. Raises BrokerUnavailable, TopicMissing,
    LoopError (no progress within ``timeout``, or offsets going backwards), ValueError (a malformed snapshot
    id, or no use case in ``settings``).
    """
    if snapshot_id is not None and not _SNAPSHOT_ID.match(snapshot_id):
        raise ValueError(f"snapshot id {snapshot_id!r} must match {_SNAPSHOT_ID.pattern}")
    with _topic_lock(settings, topic):
        done = list_manifests(settings, topic)
        for m in done:
            if m.snapshot_id == snapshot_id:
                log.info("snapshot %s of %s exists (offsets %s): reusing it", snapshot_id, topic,
                         _fmt(m.partitions))
                return m
        previous = done[-1] if done else None
        started = time.monotonic()
        created_at = datetime.now(UTC)
        ranges = _plan(previous, partition_offsets(settings, topic, timeout), topic)
        sequence = previous.sequence + 1 if previous else 1
        snapshot_id = snapshot_id or f"{sequence:06d}-{created_at:%Y%m%dT%H%M%SZ}"
        log.info("snapshot %s of %s: reading partitions %s", snapshot_id, topic, _fmt(ranges))
        folder = topic_dir(settings, topic) / snapshot_id
        folder.mkdir(parents=True, exist_ok=True)
        event_times, rejected, schema_ids = _read(settings, topic, contract, ranges, timeout, batch_size,
                                                  folder / (DATA + ".tmp"))
        manifest = _finish(folder, topic, contract, snapshot_id, sequence, ranges, event_times, rejected,
                           created_at, time.monotonic() - started, triggered_by, schema_ids)
    log.info("snapshot %s of %s: %d rows, %d rejected, offsets %s, event time %s to %s, %.2f s (%.0f rows/s)",
             manifest.snapshot_id, topic, manifest.row_count, manifest.rejected_count, _fmt(manifest.partitions),
             manifest.event_time_min, manifest.event_time_max, manifest.read_seconds,
             manifest.row_count / max(manifest.read_seconds, 1e-9))
    return manifest


def _read(settings: LoopSettings, topic: str, contract: type[Contract], ranges: dict[int, tuple[int, int]],
          timeout: float, batch_size: int, path: Path) -> tuple[pa.ChunkedArray, list[dict], dict[int, int]]:
    """Decode the ranges into the Parquet file ``path``; return the event-time column, the rejects and the rows
    by schema id.

    Rows arrive in (partition, offset) order (read_ranges reads partition by partition and batches are
    decoded in order) and row groups have a fixed size, so the file, and its hash, do not depend on how the
    fetches happened to be batched.
    """
    decoder = TopicDecoder(settings, topic, contract)
    column = contract.EVENT_TIME
    event_times: list[pa.ChunkedArray] = []
    rejected: list[dict] = []
    pending: list[pa.Table] = []
    writer = pq.ParquetWriter(path, decoder.schema, compression="zstd")

    def decode_and_write(values: list[bytes | None], last: bool = False) -> Decoded | None:
        # Runs in the worker thread, one batch after another: the only writer of the file.
        decoded = decoder.decode(values) if values else None
        if decoded is not None:
            pending.append(decoded.table)
            event_times.append(decoded.table.column(column))
        table = pa.concat_tables(pending) if pending else decoder.schema.empty_table()
        cut = table.num_rows if last else table.num_rows - table.num_rows % ROW_GROUP
        for a in range(0, cut, ROW_GROUP):
            writer.write_table(table.slice(a, ROW_GROUP), row_group_size=ROW_GROUP)
        pending[:] = [table.slice(cut)] if cut < table.num_rows else []
        return decoded

    def collect(batch: Batch, decoded: Decoded) -> None:
        for r in decoded.rejected:
            m = batch.messages[r.index]
            rejected.append({"partition": m.partition(), "offset": m.offset(), "timestamp_ms": m.timestamp()[1],
                             "error_class": r.error_class, "reason": r.reason,
                             "key_b64": base64.b64encode(m.key()).decode() if m.key() else None,
                             "original_b64": base64.b64encode(m.value() or b"").decode()})

    consumer = snapshot_consumer(settings)
    # Decoding and writing run in a second thread: pyarrow parses and compresses without the GIL while
    # this one keeps consuming.
    in_flight: deque[tuple[Batch, Future]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-decode") as pool:
        try:
            for batch in read_ranges(consumer, topic, ranges, timeout, batch_size):
                in_flight.append((batch, pool.submit(decode_and_write, batch.values)))
                while len(in_flight) > READ_AHEAD or (in_flight and in_flight[0][1].done()):
                    done_batch, fut = in_flight.popleft()
                    collect(done_batch, fut.result())
            while in_flight:
                done_batch, fut = in_flight.popleft()
                collect(done_batch, fut.result())
            pool.submit(decode_and_write, [], True).result()
        finally:
            consumer.close()
            writer.close()
    chunks = [c for times in event_times for c in times.chunks]
    return pa.chunked_array(chunks, decoder.schema.field(column).type), rejected, dict(decoder.rows_by_schema_id)


def _finish(folder: Path, topic: str, contract: type[Contract], snapshot_id: str, sequence: int,
            ranges: dict[int, tuple[int, int]], event_times: pa.ChunkedArray, rejected: list[dict],
            created_at: datetime, seconds: float, triggered_by: str | None,
            schema_ids: dict[int, int]) -> SnapshotManifest:
    """Hash the data, write the rejects and, last, the manifest: a folder without manifest.json is an
    unfinished attempt."""
    tmp = folder / (DATA + ".tmp")
    content_hash = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, folder / DATA)
    (folder / REJECTED).unlink(missing_ok=True)
    if rejected:
        rejected.sort(key=lambda r: (r["partition"], r["offset"]))
        _atomic_write(folder / REJECTED, b"".join(orjson.dumps(r) + b"\n" for r in rejected))
    by_class: dict[str, int] = {}
    for r in rejected:
        by_class[r["error_class"]] = by_class.get(r["error_class"], 0) + 1
    rows = len(event_times)
    low, high = pc.min_max(event_times).values() if rows else (None, None)
    manifest = SnapshotManifest(
        snapshot_id=snapshot_id, sequence=sequence, topic=topic, contract=contract.__name__,
        schema_version=contract.model_fields["schema_version"].default,
        partitions=[PartitionRange(partition=p, start=s, end=e) for p, (s, e) in sorted(ranges.items())],
        row_count=rows, rejected_count=len(rejected), rejected_by_class=by_class,
        content_hash=content_hash, event_time_column=contract.EVENT_TIME,
        event_time_min=low.as_py() if low is not None else None,
        event_time_max=high.as_py() if high is not None else None,
        created_at=created_at, read_seconds=round(seconds, 3),
        rejected_file=REJECTED if rejected else None, triggered_by=triggered_by, schema_ids=schema_ids,
    )
    _atomic_write(folder / MANIFEST, manifest.model_dump_json(indent=2).encode())
    return manifest


def load_snapshots(settings: LoopSettings, topic: str, contract: type[Contract], snapshot_ids: list[str]
                   ) -> tuple[pd.DataFrame, list[SnapshotManifest]]:
    """The rows of the named snapshots of ``topic`` (as ``contract`` columns), in the order given, and their
    manifests.

    Raises LoopError naming the ids that have no complete snapshot.
    """
    by_id = {m.snapshot_id: m for m in list_manifests(settings, topic)}
    missing = [i for i in snapshot_ids if i not in by_id]
    if missing:
        raise LoopError(f"no complete snapshot of {topic} with id {missing} under {topic_dir(settings, topic)}")
    manifests = [by_id[i] for i in snapshot_ids]
    schema = arrow_schema(contract)
    tables = [pq.read_table(topic_dir(settings, topic) / m.snapshot_id / m.data_file, schema=schema)
              for m in manifests]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    # Nullable integers stay integers (pandas' default turns an int column with nulls into float64), so
    # the frame has the dtypes of the contract, as the source data had.
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get), manifests


def load_window(settings: LoopSettings, topic: str, contract: type[Contract], n: int | None = None
                ) -> tuple[pd.DataFrame, list[SnapshotManifest]]:
    """The rows of the last ``n`` snapshots of ``topic`` (default ``settings.snapshot_window``), oldest
    first, and their manifests: the training set window."""
    window = list_manifests(settings, topic)[-(n or settings.snapshot_window):]
    return load_snapshots(settings, topic, contract, [m.snapshot_id for m in window])


def _fmt(ranges: dict[int, tuple[int, int]] | list[PartitionRange]) -> str:
    """Offset ranges for logs: ``partition:[start,end)``."""
    if isinstance(ranges, list):
        ranges = {p.partition: (p.start, p.end) for p in ranges}
    return ", ".join(f"{p}:[{s},{e})" for p, (s, e) in sorted(ranges.items()))
