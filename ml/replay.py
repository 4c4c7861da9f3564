"""Replay of recorded events into Kafka: runs of encoded events produced in event-time order, paced or as
fast as the broker takes them, every record acknowledged before the replay returns.

A use case turns its source data into ``EventStream`` runs (keys, JSON values, timestamps); ``replay`` produces
them, each value framed with its topic's schema id (``ml.wire``). The Kafka timestamp of a record is its event
time, so a replayed history keeps its time line.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from confluent_kafka import KafkaError, Producer
from pydantic import BaseModel

from ml.errors import DeliveryFailed
from ml.kafka_ranges import read_ranges, snapshot_consumer
from ml.settings import LoopSettings
from ml.snapshot import partition_offsets
from ml.wire import Framing

log = logging.getLogger(__name__)

CHUNK = 5_000  # events produced between two polls / progress updates / pacing checks


class ReplaySummary(BaseModel):
    """What a replay wrote: records per topic and how fast (encoding, producing and flushing, overlapped)."""

    counts: dict[str, int]
    events: int
    first_event_time: str | None
    last_event_time: str | None
    seconds: float
    events_per_s: float


@dataclass(frozen=True)
class EventStream:
    """A run of a time-ordered replay: parallel lists of topic, key, value and timestamp (ms).

    ``first`` is the position of its first event in the whole replay and ``origin_ms`` the time of the
    replay's first event, so a run can be paced on its own.
    """

    topics: list[str]
    keys: list[str]
    values: list[bytes]
    timestamps: np.ndarray
    first: int = 0
    origin_ms: int = 0


def prefetched(runs: Iterator[EventStream]) -> Iterator[EventStream]:
    """Encode the next run in a worker thread while the caller produces the current one (Arrow compute
    releases the GIL)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-encode") as pool:
        fut = pool.submit(next, runs, None)
        while (run := fut.result()) is not None:
            fut = pool.submit(next, runs, None)
            yield run


def check_pacing(speed: float | None, rate: float | None) -> None:
    """Raises ValueError unless at most one of a positive ``speed`` or ``rate`` is given."""
    if speed is not None and rate is not None:
        raise ValueError("give either a speed factor or a target rate, not both")
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive (event-time seconds per wall second)")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive (events per second)")


def due_times(run: EventStream, speed: float | None, rate: float | None) -> np.ndarray | None:
    """Seconds after the start of the replay at which each event of ``run`` is due; None = no pacing."""
    check_pacing(speed, rate)
    if speed is not None:
        return (run.timestamps - run.origin_ms) / 1000.0 / speed
    if rate is not None:
        return (run.first + np.arange(len(run.timestamps))) / rate
    return None


def _producer(settings: LoopSettings, failures: list[KafkaError]) -> Producer:
    def on_error(err: KafkaError | None, _msg) -> None:
        if err is not None:
            failures.append(err)

    return Producer(settings.kafka_config({
        # Every in-sync replica has each record (min.insync.replicas 2 of 3 on a cluster); idempotence: per-partition
        # order with no duplicates when librdkafka retries.
        "acks": "all",
        "enable.idempotence": True,
        # Java's partitioner, so every client (Kafka Streams, Connect, ...) maps a key to the same partition.
        "partitioner": "murmur2_random",
        "linger.ms": 20,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000,
        # The callback fires only for failed records: checking successes one by one costs a Python call
        # per record; flush() returning 0 with no failure recorded means every record was acknowledged.
        "delivery.report.only.error": True,
        "on_delivery": on_error,
        "log_level": 3,
    }))


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
    framing = Framing(settings)
    producer = _producer(settings, failures)
    produce, poll = producer.produce, producer.poll
    counts: Counter[str] = Counter()
    start = time.monotonic()
    with _progress(progress, total) as bar:
        for run in runs:
            due = due_times(run, speed, rate)
            topics, keys, stamps = run.topics, run.keys, run.timestamps.tolist()
            heads = {t: framing.header(t) for t in set(topics)}
            values = [heads[t] + v for t, v in zip(topics, run.values, strict=True)]
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


def replay(settings: LoopSettings, runs: Iterable[EventStream], *, topics: Iterable[str], total: int | None = None,
           speed: float | None = None, rate: float | None = None, progress: bool = False) -> ReplaySummary:
    """Produce ``runs`` (see ``produce_stream``; the topics must exist) and summarise what was written to each
    of ``topics``. Pacing: ``speed`` = event-time seconds per wall second, or ``rate`` = events per second, or
    neither for as fast as possible. Raises DeliveryFailed, or ValueError for bad pacing.
    """
    check_pacing(speed, rate)  # before any work
    first_ms: list[int] = []
    last_ms: list[int] = []

    def observed(stream: Iterable[EventStream]) -> Iterator[EventStream]:
        for run in stream:
            if len(run.timestamps):
                first_ms.append(int(run.timestamps.min()))
                last_ms.append(int(run.timestamps.max()))
            yield run

    t0 = time.monotonic()
    counts = produce_stream(settings, observed(runs), speed=speed, rate=rate, progress=progress, total=total)
    seconds = time.monotonic() - t0
    events = sum(counts.values())

    def iso(ms: list[int], pick) -> str | None:
        return datetime.fromtimestamp(pick(ms) / 1000, UTC).isoformat() if ms else None

    summary = ReplaySummary(counts={t: counts.get(t, 0) for t in topics}, events=events,
                            first_event_time=iso(first_ms, min), last_event_time=iso(last_ms, max),
                            seconds=round(seconds, 3), events_per_s=round(events / seconds, 1) if seconds > 0 else 0.0)
    log.info("replay: %d events (%s) from %s to %s in %.2f s (%.0f events/s) to %s", events, summary.counts,
             summary.first_event_time, summary.last_event_time, seconds, summary.events_per_s,
             settings.kafka_bootstrap_servers)
    return summary


def duplicate_keys(settings: LoopSettings, topic: str, timeout: float = 30.0) -> dict[str, int]:
    """Keys written more than once to ``topic`` (key -> count), e.g. after the same events were replayed twice.

    Reads the whole topic up to its current end; where a key is derived from the event itself, a repeated key
    is a repeated event.
    """
    counts: Counter[bytes] = Counter()
    consumer = snapshot_consumer(settings)
    try:
        for batch in read_ranges(consumer, topic, partition_offsets(settings, topic, timeout), timeout):
            counts.update(m.key() for m in batch.messages)
    finally:
        consumer.close()
    return {k.decode(): c for k, c in counts.items() if c > 1}
