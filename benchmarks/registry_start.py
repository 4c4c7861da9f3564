"""Schema registry start-to-ready: the local Apicurio Registry on its kafkasql storage, first start and restarts.

    .venv/bin/python benchmarks/registry_start.py [--restarts 3] [--subjects 50] [--poll-timeout-ms 1000] [--c2]

Starts a broker of its own (or uses $KAFKA_BOOTSTRAP_SERVERS) and a registry with Kafka topics of its own; times
`Registry.start()` (port checks, JVM launch, the storage reading its topics) until the server is ready and the
Confluent API answers: once on empty topics, then after registering ``--subjects`` JSON schemas, ``--restarts``
times on the journal that holds them (each restart checks they are all there). ``--poll-timeout-ms`` and ``--c2``
(no ``-XX:TieredStopAtLevel=1``) measure the alternatives to the server's defaults. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient  # noqa: E402

from infra.kafka import broker, distribution  # noqa: E402
from infra.registry import distribution as registry_distribution, server  # noqa: E402


def _exit_on_sigterm(signum: int, _frame) -> None:
    # The broker and the registry run in process groups of their own: unwind to stop them.
    raise SystemExit(128 + signum)


def timed_start(registry: server.Registry) -> float:
    t0 = time.monotonic()
    registry.start()
    return time.monotonic() - t0


def register(url: str, subjects: int) -> list[str]:
    client = SchemaRegistryClient({"url": url, "timeout": 30})
    names = [f"bench-{i}-value" for i in range(subjects)]
    for i, name in enumerate(names):
        schema = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                  "properties": {f"field_{j}": {"type": "number"} for j in range(i % 10 + 1)}}
        client.register_schema(name, Schema(json.dumps(schema), "JSON"))
    return names


def measure(bootstrap: str, restarts: int, subjects: int, poll_timeout_ms: int, c2: bool) -> dict:
    if c2:
        server.JVM_FLAGS = ()
    cfg = server.scratch_config(bootstrap, "bench",
                                **{"apicurio.kafkasql.consumer.poll.timeout": str(poll_timeout_ms)})
    registry = server.Registry(cfg, registry_distribution.fetch(cfg.dist_cache, cfg.version))
    java, release = server.find_java(cfg)
    try:
        first = timed_start(registry)
        names = register(cfg.ccompat_url, subjects)
        runs = []
        for _ in range(restarts):
            registry.stop()
            runs.append(timed_start(registry))
            client = SchemaRegistryClient({"url": cfg.ccompat_url, "timeout": 30})
            assert set(names) <= set(client.get_subjects())
        rss_mb = psutil.Process(registry.running_pid()).memory_info().rss / 2**20
    finally:
        registry.stop()
        shutil.rmtree(cfg.data_dir, ignore_errors=True)
        futures.wait(AdminClient({"bootstrap.servers": bootstrap}).delete_topics(server.topics_of(cfg)).values(),
                     timeout=30)
    return {
        "registry_first_start_s": round(first, 2),
        "registry_restart_s": round(statistics.median(runs), 2) if runs else None,
        "registry_restart_runs": [round(r, 2) for r in runs],
        "subjects": subjects,
        "rss_mb": round(rss_mb),
        "heap": cfg.heap,
        "jvm_flags": list(server.JVM_FLAGS),
        "poll_timeout_ms": poll_timeout_ms,
        "java": release,
        "java_path": java,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--subjects", type=int, default=50)
    ap.add_argument("--poll-timeout-ms", type=int, default=server.POLL_TIMEOUT_MS)
    ap.add_argument("--c2", action="store_true", help="run without -XX:TieredStopAtLevel=1")
    args = ap.parse_args()

    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    node, data_dir = None, None
    try:
        if external:
            bootstrap = external
        else:
            data_dir = Path(tempfile.mkdtemp(prefix="kafka-bench-"))
            cfg = broker.BrokerConfig(data_dir=data_dir, port=broker.free_port(), controller_port=broker.free_port(),
                                      security="plaintext")
            node = broker.Broker(cfg, distribution.fetch())
            node.start()
            bootstrap = cfg.bootstrap_servers
        result = measure(bootstrap, args.restarts, args.subjects, args.poll_timeout_ms, args.c2)
    finally:
        if node is not None:
            node.stop()  # after the registry, which keeps its schemas in it
            shutil.rmtree(data_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
