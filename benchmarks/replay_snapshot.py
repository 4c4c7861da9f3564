"""Benchmark: replay a whole year of flights as fast as possible, then snapshot flights.completed and read its keys.

Uses the cluster in KAFKA_BOOTSTRAP_SERVERS if set, otherwise starts a local broker (infra.kafka) on free
ports and stops it afterwards. Topics are unique per run. Logs go to stderr; the last stdout line is one
JSON object: replay_eps, snapshot_eps, keys_read_eps, events, snapshot_rows (plus the seconds behind them).

    .venv/bin/python benchmarks/replay_snapshot.py [--months 1-12]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.replay import duplicate_keys  # noqa: E402
from ml.settings import LoopSettings  # noqa: E402
from ml.snapshot import take_snapshot  # noqa: E402
from use_cases.flight_delay.contracts import FlightCompleted  # noqa: E402
from use_cases.flight_delay.replay import replay_frame  # noqa: E402
from use_cases.flight_delay.source import load_completed  # noqa: E402


@contextlib.contextmanager
def kafka_cluster(nodes: int = 1) -> Iterator[str]:
    """Bootstrap servers: $KAFKA_BOOTSTRAP_SERVERS, or a local broker (a cluster of ``nodes``) started for the
    duration; with a schema registry (``schema_registry``) beside it."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        with schema_registry(external):
            yield external
        return
    with local_broker("plaintext", nodes) as kafka, schema_registry(kafka.bootstrap_servers):
        yield kafka.bootstrap_servers


@contextlib.contextmanager
def local_broker(security: str, nodes: int = 1) -> Iterator[object]:
    """A local broker of ``security`` (plaintext, sasl_ssl: its client files by role), a cluster of ``nodes``, on
    free ports with its own folder for the duration; yields its ``Cluster`` (``bootstrap_servers``,
    ``client_settings(role)``, ``nodes``)."""
    from infra.kafka import broker, cluster, distribution

    data_dir = Path(tempfile.mkdtemp(prefix="kafka-bench-"))
    cfg = broker.BrokerConfig(data_dir=data_dir, port=broker.free_port(), controller_port=broker.free_port(),
                              security=security)
    ports = [(broker.free_port(), broker.free_port()) for _ in range(nodes)] if nodes > 1 else None
    # The broker runs in its own process group: a SIGTERM (e.g. from `timeout`) must unwind this block to
    # stop it, which Python's default SIGTERM does not do.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    kafka = cluster.Cluster(cfg, distribution.fetch(), ports)
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def schema_registry(bootstrap: str) -> Iterator[str]:
    """$SCHEMA_REGISTRY_URL, or a local Apicurio Registry on free ports storing in topics of its own on
    ``bootstrap``'s cluster,
    started for the duration with SCHEMA_REGISTRY_URL pointing every client of this process at it."""
    external = os.environ.get("SCHEMA_REGISTRY_URL")
    if external:
        yield external
        return
    from infra.registry.server import Registry, scratch_config

    registry = Registry(scratch_config(bootstrap, "bench"))
    registry.start()
    os.environ["SCHEMA_REGISTRY_URL"] = registry.cfg.ccompat_url
    try:
        yield registry.cfg.ccompat_url
    finally:
        del os.environ["SCHEMA_REGISTRY_URL"]
        registry.stop()
        shutil.rmtree(registry.cfg.data_dir, ignore_errors=True)


def _exit_on_sigterm(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def bench_settings(bootstrap: str, data_dir: Path) -> LoopSettings:
    """Settings with topics unique to this run, so repeated runs against one cluster do not mix."""
    return LoopSettings(use_case="flight_delay", kafka_bootstrap_servers=bootstrap, loop_data_dir=data_dir,
                        topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.")


def run(settings: LoopSettings, months: tuple[int, int] = (1, 12)) -> dict:
    """Replay ``months`` as fast as possible, snapshot the completed topic, then read its keys alone (``ml.replay.
    duplicate_keys``: the exact-range reader with nothing to decode); return the figures."""
    flights = load_completed(months)
    summary = replay_frame(settings, flights)
    topic = settings.topic("flights.completed")
    t0 = time.monotonic()
    manifest = take_snapshot(settings, topic, FlightCompleted)
    snapshot_s = time.monotonic() - t0
    t0 = time.monotonic()
    duplicates = duplicate_keys(settings, topic)
    keys_s = time.monotonic() - t0
    if duplicates:
        raise RuntimeError(f"{len(duplicates)} keys were written twice")
    return {
        "replay_eps": round(summary.events_per_s),
        "replay_s": summary.seconds,
        "snapshot_eps": round(manifest.row_count / snapshot_s),
        "snapshot_s": round(snapshot_s, 3),
        "events": summary.events,
        "snapshot_rows": manifest.row_count,
        "snapshot_rejected": manifest.rejected_count,
        "keys_read_eps": round(manifest.row_count / keys_s),
        "keys_read_s": round(keys_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--months", default="1-12", help="month range, e.g. 1-12")
    args = parser.parse_args()
    first, _, last = args.months.partition("-")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    with kafka_cluster() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-data-") as data_dir:
        result = run(bench_settings(bootstrap, Path(data_dir)), (int(first), int(last or first)))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
