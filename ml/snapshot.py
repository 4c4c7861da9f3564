"""Exact, offset-recorded snapshots of a topic into Parquet, one manifest per snapshot.

A snapshot reads every partition from where the previous snapshot of the topic ended (the beginning if
there is none) up to the end offsets fixed when it starts, so consecutive snapshots cover each offset exactly
once. The manifests under ``settings.snapshot_dir/<use case>/<topic>/<snapshot_id>/`` are the offset record: no
consumer group offsets are committed. Each use case keeps its own series, so two use cases reading one topic
each see all of it. Records that break the topic's contract are written aside with a reason and
counted; whether that many rejections are acceptable is the validation step's decision.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from confluent_kafka import IsolationLevel, TopicPartition
from confluent_kafka.admin import OffsetSpec
from pydantic import BaseModel, Field, field_validator

from ml.contracts import Contract, arrow_schema
from ml.errors import LoopError, TopicMissing
from ml.kafka_ranges import BATCH
from ml.row_scan import one_chunk
from ml.settings import LoopSettings
from ml.snapshot_files import PieceResult, pieces, read_pieces, reader_ahead
from ml.topics import admin_client, require_broker

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DATA = "data.parquet"  # the one data file of a format 1 snapshot
REJECTED = "rejected.jsonl"
# 1: one data file (data_file); 2: a file per piece of at most ml.snapshot_files.PIECE offsets (files), read in
# parallel. This code reads both and writes 2.
MANIFEST_FORMAT = 2
_SNAPSHOT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,199}$")

class PartitionRange(BaseModel):
    """Offsets ``[start, end)`` of one partition read by a snapshot."""

    partition: int = Field(ge=0)
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class SnapshotFile(BaseModel):
    """One data file of a snapshot: the rows of offsets ``[start, end)`` of a partition, in offset order."""

    file: str
    partition: int = Field(ge=0)
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    rows: int = Field(ge=0)
    sha256: str


class SnapshotManifest(BaseModel):
    """What a snapshot read and wrote; the small reference tasks pass on instead of data."""

    format_version: int = Field(1, ge=1, description="1 (absent) in manifests from before the parallel snapshot")
    snapshot_id: str
    sequence: int = Field(ge=1, description="1 for the topic's first snapshot, then +1 each")
    topic: str
    contract: str
    schema_version: int
    partitions: list[PartitionRange]
    row_count: int
    rejected_count: int
    rejected_by_class: dict[str, int]
    content_hash: str = Field(description="format 1: sha256 of data.parquet (rows in partition, offset order); "
                                          "2: sha256 of the files' sha256 digests (hex, in files order)")
    event_time_column: str
    event_time_min: datetime | None
    event_time_max: datetime | None
    created_at: datetime
    read_seconds: float
    data_file: str | None = DATA
    files: list[SnapshotFile] = Field(default_factory=list, description="format 2: the data files in (partition, "
                                      "offset) order; none when no row was read")
    rejected_file: str | None = None
    triggered_by: str | None = Field(None, description="the announcement (ml.new_records) whose asset event "
                                                       "started the run that took it; None: a scheduled or "
                                                       "manual run")
    schema_ids: dict[int, int] = Field(default_factory=dict, description="rows by the registry schema id they "
                                       "were written with (empty in manifests from before the registry)")

    @field_validator("format_version")
    @classmethod
    def _readable(cls, version: int) -> int:
        if version > MANIFEST_FORMAT:
            raise ValueError(f"snapshot manifest format {version} is newer than this code reads "
                             f"({MANIFEST_FORMAT}): upgrade the loop to read it")
        return version

    @property
    def end_offsets(self) -> dict[int, int]:
        return {p.partition: p.end for p in self.partitions}

    @property
    def file_names(self) -> list[str]:
        """The data files, relative to the snapshot's folder, in (partition, offset) order."""
        if self.format_version == 1:
            return [self.data_file or DATA]
        return [f.file for f in self.files]


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
        with reader_ahead(settings, topic, contract, timeout) as reader:
            ranges = _plan(previous, partition_offsets(settings, topic, timeout), topic)
            sequence = previous.sequence + 1 if previous else 1
            snapshot_id = snapshot_id or f"{sequence:06d}-{created_at:%Y%m%dT%H%M%SZ}"
            log.info("snapshot %s of %s: reading partitions %s", snapshot_id, topic, _fmt(ranges))
            folder = topic_dir(settings, topic) / snapshot_id
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob("part-*"):  # an interrupted attempt's files
                stale.unlink()
            read = read_pieces(settings, topic, contract, pieces(ranges), folder, timeout, batch_size, reader())
        manifest = _finish(folder, topic, contract, snapshot_id, sequence, ranges, read, created_at,
                           time.monotonic() - started, triggered_by)
    log.info("snapshot %s of %s: %d rows, %d rejected, offsets %s, event time %s to %s, %.2f s (%.0f rows/s)",
             manifest.snapshot_id, topic, manifest.row_count, manifest.rejected_count, _fmt(manifest.partitions),
             manifest.event_time_min, manifest.event_time_max, manifest.read_seconds,
             manifest.row_count / max(manifest.read_seconds, 1e-9))
    return manifest


def _finish(folder: Path, topic: str, contract: type[Contract], snapshot_id: str, sequence: int,
            ranges: dict[int, tuple[int, int]], read: list[PieceResult], created_at: datetime, seconds: float,
            triggered_by: str | None) -> SnapshotManifest:
    """Write the rejects and, last, the manifest: a folder without manifest.json is an unfinished attempt."""
    rejected = sorted((r for piece in read for r in piece.rejected), key=lambda r: (r["partition"], r["offset"]))
    (folder / REJECTED).unlink(missing_ok=True)
    if rejected:
        _atomic_write(folder / REJECTED, b"".join(orjson.dumps(r) + b"\n" for r in rejected))
    by_class: dict[str, int] = {}
    for r in rejected:
        by_class[r["error_class"]] = by_class.get(r["error_class"], 0) + 1
    schema_ids: dict[int, int] = {}
    for piece in read:
        for schema_id, rows in piece.schema_ids.items():
            schema_ids[schema_id] = schema_ids.get(schema_id, 0) + rows
    lows = [r.event_time_min for r in read if r.event_time_min is not None]
    highs = [r.event_time_max for r in read if r.event_time_max is not None]
    manifest = SnapshotManifest(
        format_version=MANIFEST_FORMAT, snapshot_id=snapshot_id, sequence=sequence, topic=topic,
        contract=contract.__name__, schema_version=contract.model_fields["schema_version"].default,
        partitions=[PartitionRange(partition=p, start=s, end=e) for p, (s, e) in sorted(ranges.items())],
        row_count=sum(r.rows for r in read), rejected_count=len(rejected), rejected_by_class=by_class,
        content_hash=hashlib.sha256("".join(r.sha256 for r in read).encode()).hexdigest(),
        event_time_column=contract.EVENT_TIME, event_time_min=min(lows, default=None),
        event_time_max=max(highs, default=None), created_at=created_at, read_seconds=round(seconds, 3),
        data_file=None, files=[SnapshotFile(file=r.piece.file, partition=r.piece.partition, start=r.piece.start,
                                            end=r.piece.end, rows=r.rows, sha256=r.sha256) for r in read],
        rejected_file=REJECTED if rejected else None, triggered_by=triggered_by, schema_ids=schema_ids,
    )
    _atomic_write(folder / MANIFEST, manifest.model_dump_json(indent=2).encode())
    return manifest


def load_snapshots(settings: LoopSettings, topic: str, contract: type[Contract], snapshot_ids: list[str], *,
                   columns: list[str] | None = None, filters: pc.Expression | None = None
                   ) -> tuple[pd.DataFrame, list[SnapshotManifest]]:
    """The rows of the named snapshots of ``topic`` (as ``contract`` columns, or only ``columns``), in the order
    given, and their manifests. ``filters``: only the rows it keeps (row groups whose statistics exclude it are
    not read).

    Raises LoopError naming the ids that have no complete snapshot.
    """
    manifests = manifests_of(settings, topic, snapshot_ids)
    return _read(data_paths(settings, topic, manifests), arrow_schema(contract), columns, filters), manifests


def manifests_of(settings: LoopSettings, topic: str, snapshot_ids: list[str]) -> list[SnapshotManifest]:
    """The manifests of the named snapshots, in the order given; LoopError naming the ids without one."""
    by_id = {m.snapshot_id: m for m in list_manifests(settings, topic)}
    missing = [i for i in snapshot_ids if i not in by_id]
    if missing:
        raise LoopError(f"no complete snapshot of {topic} with id {missing} under {topic_dir(settings, topic)}")
    return [by_id[i] for i in snapshot_ids]


def data_paths(settings: LoopSettings, topic: str, manifests: list[SnapshotManifest]) -> list[Path]:
    """The Parquet files of ``manifests``, in their order then (partition, offset) order."""
    return [topic_dir(settings, topic) / m.snapshot_id / name for m in manifests for name in m.file_names]


def load_window(settings: LoopSettings, topic: str, contract: type[Contract], n: int | None = None
                ) -> tuple[pd.DataFrame, list[SnapshotManifest]]:
    """The rows of the last ``n`` snapshots of ``topic`` (default ``settings.snapshot_window``), oldest
    first, and their manifests: the training set window."""
    window = list_manifests(settings, topic)[-(n or settings.snapshot_window):]
    return load_snapshots(settings, topic, contract, [m.snapshot_id for m in window])


class SnapshotRows:
    """The rows of snapshots read from their Parquet files on demand, in batches, by column, a row group at a time
    or as Arrow (a ``ml.validation.RowSource``, and what a use case trains from): a large snapshot is never in
    memory whole.

    ``filters``: only the rows it keeps (row groups whose statistics exclude it are not read); ``count`` must then
    be given, the number of rows it keeps.
    """

    def __init__(self, settings: LoopSettings, topic: str, contract: type[Contract],
                 manifests: list[SnapshotManifest], *, filters: pc.Expression | None = None,
                 count: int | None = None) -> None:
        if filters is not None and count is None:
            raise ValueError("filtered snapshot rows need their count")
        self.schema = arrow_schema(contract)
        self.paths = data_paths(settings, topic, manifests)
        self.filters = filters
        self.count = sum(m.row_count for m in manifests) if count is None else count
        self.column_names = self.schema.names
        self.scratch_dir = settings.scratch_dir

    def batches(self, size: int, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        """Frames of ``size`` rows (the last one fewer), in file order; only ``columns`` when given."""
        schema = self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
        # The filter may read other columns than those asked for: then whole batches are read and cut after it.
        read = columns if self.filters is None else None
        pending: list[pa.RecordBatch] = []
        held = 0
        for path in self.paths:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=min(size, 65_536), columns=read):
                if self.filters is not None:
                    batch = batch.filter(self.filters)
                    if not batch.num_rows:
                        continue
                    if columns is not None:
                        batch = batch.select(columns)
                pending.append(batch)
                held += batch.num_rows
                while held >= size:
                    table = pa.Table.from_batches(pending, schema=schema)
                    yield _frame(table.slice(0, size))
                    rest = table.slice(size)
                    pending, held = rest.to_batches(), rest.num_rows
        if held:
            yield _frame(pa.Table.from_batches(pending, schema=schema))

    def sample(self, n: int, seed: int, columns: list[str] | None = None, batch_rows: int = 500_000
               ) -> pd.DataFrame:
        """About ``n`` of the rows, each kept with probability ``n / count`` drawn from ``seed`` (all of them when
        there are no more), only ``columns`` when given, read ``batch_rows`` at a time: a uniform sample of rows
        too many to hold whole, such as a drift reference of years of flights."""
        if self.count <= n:
            return self.columns(columns)
        draw, share = np.random.default_rng(seed), n / self.count
        kept = [batch[draw.random(len(batch)) < share] for batch in self.batches(batch_rows, columns)]
        return pd.concat(kept, ignore_index=True)

    def columns(self, names: list[str] | None) -> pd.DataFrame:
        """These columns (None: all) of every row, as one frame."""
        return _read(self.paths, self.schema, names, self.filters)

    def table(self, names: list[str], *, types: Mapping[str, pa.DataType] | None = None, mapped: bool = True
              ) -> pa.Table:
        """These columns of every row as one Arrow table, in file order, each column a single chunk, the columns
        named in ``types`` read as that type: a string column as a dictionary (``pa.dictionary(pa.int32(),
        pa.string())``: 4 bytes a row for a few distinct values), an integer column the contract bounds as a
        narrower integer. No pandas objects, no copy.

        ``mapped`` (the default): the columns are read one at a time, each written to an Arrow file under
        ``scratch_dir`` and memory-mapped, the file unlinked once mapped. The table then lives in the kernel's page
        cache, not in this process's memory: read rows are paged in, and paged out again under memory pressure, so
        a history larger than the machine's memory can still be trained on, and reading it holds one column. A
        file is unlinked as soon as it is mapped: a process that dies while training leaves none behind (one killed
        while writing a column may). Otherwise the table is read into memory.
        Raises ``pyarrow.ArrowInvalid`` when a value does not fit its type."""
        full = self._typed(types)
        schema = pa.schema([full.field(name) for name in names])
        if not mapped:
            table = self._read_table(full, names)
            table = pa.Table.from_arrays([one_chunk(column) for column in table.columns], schema=schema)
        else:
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
            columns = []
            for field in schema:
                column = one_chunk(self._read_table(full, [field.name]).column(0))
                columns.append(_mapped(column, field, self.scratch_dir))
                del column
            table = pa.Table.from_arrays(columns, schema=schema)
        pa.default_memory_pool().release_unused()
        return table

    def scan(self, names: list[str], *, types: Mapping[str, pa.DataType] | None = None) -> Iterator[pa.Table]:
        """These columns of the rows ``filters`` keeps, in file order, typed as ``table`` types them, one Parquet
        row group at a time (``ml.row_scan``): a pass over a long history holds one row group of it, and nothing is
        written or mapped. Raises ``pyarrow.ArrowInvalid`` when a value does not fit its type."""
        full = self._typed(types)
        for path in self.paths:
            for group in next(ds.dataset(path, schema=full, format="parquet").get_fragments()).split_by_row_group():
                part = group.to_table(schema=full, columns=names, filter=self.filters)
                if part.num_rows:
                    yield part

    def _typed(self, types: Mapping[str, pa.DataType] | None) -> pa.Schema:
        """Every field (the filter may read any), those named in ``types`` as that type."""
        types = types or {}
        return pa.schema([f.with_type(types[f.name]) if f.name in types else f for f in self.schema])

    def _read_table(self, schema: pa.Schema, names: list[str]) -> pa.Table:
        """The columns ``names`` of ``schema``, as typed there, of every row ``filters`` keeps, in file order."""
        tables = [pq.read_table(path, schema=schema, columns=names, filters=self.filters) for path in self.paths]
        return pa.concat_tables(tables) if tables else pa.schema([schema.field(n) for n in names]).empty_table()


def _mapped(array: pa.Array, field: pa.Field, folder: Path) -> pa.Array:
    """``array`` written to an Arrow file in ``folder`` and read back memory-mapped (no copy in memory); the file
    is unlinked at once, and its pages stay readable until the array's buffers are released."""
    fd, name = tempfile.mkstemp(prefix=f"{field.name}-", suffix=".arrow", dir=folder)
    os.close(fd)
    try:
        schema = pa.schema([field])
        with pa.OSFile(name, "wb") as out, pa.ipc.new_file(out, schema) as writer:
            writer.write_batch(pa.record_batch([array], schema=schema))
        with pa.memory_map(name) as source:
            return pa.ipc.open_file(source).get_batch(0).column(0)
    finally:
        os.unlink(name)


def _read(paths: list[Path], schema: pa.Schema, columns: list[str] | None = None,
          filters: pc.Expression | None = None) -> pd.DataFrame:
    """``columns`` (None: all of ``schema``) of the rows of the Parquet files at ``paths`` that ``filters`` keeps,
    in file order, as one frame. Each column's Arrow memory is released once converted: the rows are held about
    once, not twice."""
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    tables = [pq.read_table(path, schema=schema, columns=columns, filters=filters) for path in paths]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    del tables
    frame = _frame(table, consume=True)
    # Arrow's allocator keeps the freed buffers for reuse; the rows now live in the frame, so give them back.
    pa.default_memory_pool().release_unused()
    return frame


def _frame(table: pa.Table, *, consume: bool = False) -> pd.DataFrame:
    """``table`` as a frame with the contract's dtypes. ``consume``: the caller hands ``table`` over (it must not be
    used again), and each column's Arrow buffers are freed as it is converted."""
    # Nullable integers stay integers (pandas' default turns an int column with nulls into float64), so
    # the frame has the dtypes of the contract, as the source data had.
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get, split_blocks=consume, self_destruct=consume)


def _fmt(ranges: dict[int, tuple[int, int]] | list[PartitionRange]) -> str:
    """Offset ranges for logs: ``partition:[start,end)``."""
    if isinstance(ranges, list):
        ranges = {p.partition: (p.start, p.end) for p in ranges}
    return ", ".join(f"{p}:[{s},{e})" for p, (s, e) in sorted(ranges.items()))
