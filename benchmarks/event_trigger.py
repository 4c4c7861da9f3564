"""Benchmark: the "retrain every N records" trigger (``ml.airflow_trigger.NewRecordsTrigger``) on a year of flights.

The DAG's trigger class runs here as the triggerer runs it (its ``run()`` in an event loop), against a local
broker. Backlog: a year of flights is replayed and snapshotted, then the trigger polls for ``--backlog-polls``
intervals: ``backlog_runs`` is how many times it fired (goal 0); ``trigger_cpu_s_per_min`` is this process's CPU
per minute meanwhile (the polls: two offset lookups each). Stream: flights.completed grows at ``--rate`` records/s
(a producer in its own process, the year over and over); each time the trigger fires, ``fire_delay_s`` is from
the moment the topic held N records past the last snapshot (sampled from its end offsets every 20 ms), or from
the trigger's start if that is later (the triggerer starts it again after each event), to the event; then a
snapshot covers the announced range, as the run would. The median and largest delay over ``--fires`` events are
reported next to ``poll_interval_s``; goal: at most twice the poll interval. Last stdout line: one JSON object.

    .venv/bin/python benchmarks/event_trigger.py [--rate 20000] [--min-records 15000] [--poll-interval-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.replay_snapshot import bench_settings, kafka_cluster  # noqa: E402
from ml import snapshot  # noqa: E402
from ml.airflow_trigger import NewRecordsTrigger  # noqa: E402
from ml.kafka_ranges import snapshot_consumer  # noqa: E402
from ml.settings import LoopSettings  # noqa: E402
from use_cases.flight_delay.replay import replay_frame  # noqa: E402
from use_cases.flight_delay.source import load_completed  # noqa: E402
from use_cases.flight_delay.use_case import FlightDelay  # noqa: E402

log = logging.getLogger("bench")


def stream(settings: LoopSettings, rate: float) -> None:
    """Completed flights at ``rate`` records/s (scheduled ones beside them: the replay writes both topics), the
    year over and over until terminated."""
    flights = load_completed((1, 12))
    while True:
        replay_frame(settings, flights, rate=2 * rate)


def next_event(trigger_kwargs: dict, within_s: float) -> tuple[dict | None, float]:
    """The trigger's next event (None if none within ``within_s``) and the wall time it came."""
    async def first():
        return (await anext(NewRecordsTrigger(**trigger_kwargs).run())).payload
    try:
        payload = asyncio.run(asyncio.wait_for(first(), within_s))
    except TimeoutError:
        payload = None
    return payload, time.time()


class EndOffsets(threading.Thread):
    """Samples the sum of the topic's end offsets every 20 ms: (wall time, total) pairs."""

    def __init__(self, settings: LoopSettings, topic: str, partitions: list[int]) -> None:
        super().__init__(daemon=True)
        self.consumer = snapshot_consumer(settings)
        self.tps = [TopicPartition(topic, p) for p in partitions]
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            total = sum(self.consumer.get_watermark_offsets(tp, timeout=5)[1] for tp in self.tps)
            self.samples.append((time.time(), total))
        self.consumer.close()

    def crossing(self, snapshot_total: int, n: int) -> float:
        """The first sampled time the topic held ``n`` records past a snapshot ending at ``snapshot_total``."""
        return next(t for t, total in list(self.samples) if total - snapshot_total >= n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20_000.0, help="new flights.completed records per second")
    parser.add_argument("--min-records", type=int, default=FlightDelay().settings.retrain_every_n)
    parser.add_argument("--poll-interval-s", type=float, default=FlightDelay().settings.retrain_poll_interval_s)
    parser.add_argument("--backlog-polls", type=int, default=12)
    parser.add_argument("--fires", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    with kafka_cluster() as bootstrap:
        settings = bench_settings(bootstrap, Path(tempfile.mkdtemp(prefix="event-trigger-")))
        topic = settings.topic("flights.completed")
        uc = FlightDelay()
        # The trigger reads its settings from the environment, as in the triggerer.
        os.environ.update({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "LOOP_DATA_DIR": str(settings.loop_data_dir),
                           "TOPIC_PREFIX": settings.topic_prefix})
        kwargs = {"use_case": uc.name, "min_records": args.min_records, "poll_interval_s": args.poll_interval_s,
                  "kafka_config_id": None}
        replay_frame(settings, load_completed((1, 12)))
        year = snapshot.take_snapshot(settings, topic, uc.label_contract)
        log.info("backlog: %d flights in snapshot %s", year.row_count, year.snapshot_id)

        cpu0, wall0 = time.process_time(), time.monotonic()
        fired, _ = next_event(kwargs, args.backlog_polls * args.poll_interval_s)
        cpu_per_min = (time.process_time() - cpu0) / (time.monotonic() - wall0) * 60
        backlog_runs = int(fired is not None)

        sampler = EndOffsets(settings, topic, sorted(year.end_offsets))
        sampler.start()
        producer = multiprocessing.get_context("spawn").Process(target=stream, args=(settings, args.rate))
        producer.start()
        delays, manifest = [], year
        try:
            for i in range(args.fires):
                started = time.time()
                announced, at = next_event(kwargs, 120)
                assert announced is not None, "the trigger did not fire on a live stream"
                crossed = sampler.crossing(sum(manifest.end_offsets.values()), args.min_records)
                delays.append(at - max(crossed, started))
                manifest = snapshot.take_snapshot(settings, topic, uc.label_contract,
                                                  triggered_by=announced["announcement_id"])
                log.info("fire %d: %d records announced, %.2f s after crossing %d (or the trigger's start); "
                         "snapshot %s read %d", i + 1, announced["records"], delays[-1], args.min_records,
                         manifest.snapshot_id, manifest.row_count)
        finally:
            producer.terminate()
            producer.join(30)
            sampler.stop.set()
            sampler.join(10)
    print(orjson.dumps({"backlog_flights": year.row_count, "backlog_runs": backlog_runs,
                        "trigger_cpu_s_per_min": round(cpu_per_min, 3), "poll_interval_s": args.poll_interval_s,
                        "rate": args.rate, "min_records": args.min_records,
                        "fire_delay_s": round(float(np.median(delays)), 2),
                        "fire_delay_max_s": round(max(delays), 2),
                        "fire_delays_s": [round(d, 2) for d in delays]}).decode())


if __name__ == "__main__":
    main()
