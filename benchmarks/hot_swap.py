"""Benchmark: hot swap under a steady stream. Produces `flights.scheduled` at a fixed rate while the scorer
runs (``python -m scoring_service`` in its own process, as deployed; its log in .local/). The stream first runs
for a warm-up (default 40 s, not measured: a freshly started broker JVM compiles its hot paths and an idle
consumer and producer wake up; docs/performance.md has the gaps after shorter warm-ups), then for the measured
part, a third of the way into which a new model version is published, and a bad one (a NaN
output layer) two thirds in.

Fields: events_in, predictions_out, lost and duplicated (input positions with zero / several predictions,
over the whole stream), max_gap_ms (longest pause between consecutive predictions, by record timestamp, from
1 s before each publication to 1 s after the scorer took it live or refused it), max_input_gap_ms (the same
for the input records in those windows: the scorer cannot beat its input), max_gap_baseline_ms (the same
for as long a stretch before each window, without a publication: the machine's own noise),
max_gap_anywhere_ms (the whole measured stream), p99_latency_ms / p50 (input record timestamp to prediction
record timestamp, both broker LogAppendTime, measured part), swap_latency_ms (publication to live, from the
status record), bad_model_rejected, versions (predictions per model version). Uses KAFKA_BOOTSTRAP_SERVERS if
set, else starts a local broker (``--nodes 3``: a three-node cluster, topics replicated three times, acks=all).
Last stdout line: one JSON object.

    .venv/bin/python benchmarks/hot_swap.py [--rate 5000] [--seconds 30] [--warm-up-seconds 40] [--nodes 3]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from confluent_kafka import Consumer, Producer  # noqa: E402

from benchmarks.replay_snapshot import kafka_cluster  # noqa: E402
from benchmarks.scorer_throughput import (  # noqa: E402
    MODEL, PARTITIONS, SIGNER, bench_settings, flight_events, loop_settings, model_envelope)
from ml.keras_models import to_bytes  # noqa: E402
from ml.publish import build_envelope, publish  # noqa: E402
from ml.wire import Framing, TopicReader  # noqa: E402
from scoring_service.config import ScorerSettings  # noqa: E402
from use_cases.flight_delay import preprocessing as features  # noqa: E402

log = logging.getLogger("bench")
REPO = Path(__file__).resolve().parents[1]
LOG = REPO / ".local" / "bench-hot-swap-scorer.log"


def paced_produce(bootstrap: str, topic: str, events, rate: float, conn: Connection) -> None:
    """Produce at ``rate`` events/s, paced every millisecond and sent at least every 5 ms (a steady stream,
    far finer than a batch interval); sends "started", then, per partition, the timestamp (ms) of each
    delivered input by offset (0: not delivered), over ``conn``.

    Runs in a process and session of its own, as an upstream producer would: in this one, the publications'
    CPU work (reading and verifying the models topic) held the GIL and paused the stream, and in this
    process's session it shared the CPU share Linux gives a session (autogroup) with them.
    """
    os.setsid()
    # Not idempotent: librdkafka's idempotent producer waits for a partition's request to be answered before
    # sending the next, spinning its broker thread meanwhile (see scoring_service.sink), which took a core
    # from a broker that was slow for a moment. This one does not wait; a retried input would be a new
    # offset, scored and counted like any other.
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    # Nothing here makes reference cycles; a collection pass over the events and delivery records would
    # pause the stream. The delivery timestamps go to arrays sized up front: a dict growing to a few hundred
    # thousand entries pauses the stream while it resizes.
    gc.disable()
    step = max(1, round(rate / 1000))  # events per millisecond
    sent = np.zeros((PARTITIONS, len(events)), dtype=np.int64)  # a fresh topic: offsets count from 0

    def on_delivery(err, msg) -> None:
        if err is None:
            sent[msg.partition(), msg.offset()] = msg.timestamp()[1]

    conn.send("started")
    started = time.monotonic()
    for i, (key, value) in enumerate(events):
        if i % step == 0:
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
        p.produce(topic, key=key, value=value, on_delivery=on_delivery)
        p.poll(0)
    if p.flush(60):
        raise RuntimeError("input not delivered")
    conn.send(sent)


def read_all(s: ScorerSettings, topic: str, until, timeout: float) -> list:
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers, "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    c.subscribe([topic])
    reader = TopicReader(s, topic)
    out, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(out):
            for m in c.consume(5000, 0.2):
                if m.error() is None:
                    out.append((reader.loads(m.value()), m.timestamp()[1]))
    finally:
        c.close()
    return out


def bad_envelope(contract: features.FlightPreprocessing):
    """A correctly signed model whose output layer is NaN: it must fail the canary."""
    import keras

    from use_cases.flight_delay.model import untrained

    keras.utils.set_random_seed(9)
    model = untrained(contract)
    layer = model.get_layer("p_delayed")
    layer.set_weights([np.full_like(w, np.nan) for w in layer.get_weights()])
    return build_envelope(model_name=MODEL, model_version=3, run_id="bench-bad", model_uri=f"models:/{MODEL}/3",
                          preprocessing=contract.to_dict(), metrics={"auc": 0.7}, decision_id="bench-bad",
                          artifact=to_bytes(model), signer=SIGNER)


def max_gap(stamps: np.ndarray, lo: float, hi: float) -> int | None:
    """The longest pause (ms) between consecutive prediction timestamps within [lo, hi]."""
    inside = stamps[(stamps >= lo) & (stamps <= hi)]
    return int(np.max(np.diff(inside))) if len(inside) > 1 else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scorer_env(s: ScorerSettings) -> dict[str, str]:
    """The scorer's settings as the environment variables it reads."""
    env = {k.upper(): v.get_secret_value() if hasattr(v, "get_secret_value") else
           orjson.dumps(v).decode() if isinstance(v, dict | list) else str(v)
           for k, v in s.model_dump().items() if v is not None}
    return {**os.environ, **env}


@contextlib.contextmanager
def scorer_process(s: ScorerSettings, log_path: Path) -> Iterator[subprocess.Popen]:
    """A scorer process on ``s``, ready (``wait_ready``), logging to ``log_path``; stopped with SIGTERM at exit.
    Its own process and session, as deployed (own container): it shares no GIL with the benchmark's producer, and
    Linux's scheduler gives its session a share of the CPU of its own (autogroup)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log_file:
        scorer = subprocess.Popen([sys.executable, "-m", "scoring_service"], env=scorer_env(s), cwd=REPO,
                                  stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(s, scorer, log_path=log_path)
        yield scorer
    finally:
        scorer.send_signal(signal.SIGTERM)
        scorer.wait(60)


def wait_ready(s: ScorerSettings, scorer: subprocess.Popen, timeout: float = 120.0, log_path: Path = LOG) -> None:
    """Until /readyz answers 200 (a model is live, partitions assigned); raises if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scorer.poll() is not None:
            raise RuntimeError(f"scorer exited with {scorer.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{s.http_port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"scorer not ready within {timeout:.0f} s; see {log_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="input events per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the measured stream")
    parser.add_argument("--warm-up-seconds", type=float, default=40.0, help="stream before the measured part")
    defaults = ScorerSettings.model_fields
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"].default)
    parser.add_argument("--batch-max-wait-ms", type=int, default=defaults["batch_max_wait_ms"].default)
    parser.add_argument("--nodes", type=int, default=1,
                        help="nodes of the local Kafka cluster started (topics replicated 3 times from 3 nodes)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    events, flights = flight_events(int(args.rate * (args.warm_up_seconds + args.seconds)))
    contract = features.fit(flights)
    v1, _ = model_envelope(contract, 1, seed=1)
    v2, _ = model_envelope(contract, 2, seed=2)
    bad = bad_envelope(contract)
    # Building the models imported TensorFlow here: a full collection over its objects held the GIL for
    # 50-100 ms and paused the paced producer. Nothing made so far is garbage.
    gc.freeze()
    with kafka_cluster(args.nodes) as bootstrap:
        s = bench_settings(bootstrap, batch_size=args.batch_size, batch_max_wait_ms=args.batch_max_wait_ms,
                           http_port=free_port())
        publish(loop_settings(s), v1)
        with scorer_process(s, LOG):
            head = Framing(s).header(s.input_topic)
            framed = [(key, head + value) for key, value in events]
            # Spawned, not forked: this process has imported TensorFlow.
            ctx = multiprocessing.get_context("spawn")
            results, to_us = ctx.Pipe(duplex=False)
            producer = ctx.Process(target=paced_produce, daemon=True,
                                   args=(s.kafka_bootstrap_servers, s.input_topic, framed, args.rate,
                                         to_us))
            producer.start()
            to_us.close()  # the child's copy stays open: a child that dies ends our recv() with EOFError
            if results.recv() != "started":
                raise RuntimeError("input producer did not start")
            time.sleep(args.warm_up_seconds)
            measured_from = time.time() * 1000
            log.info("warm-up over: measuring")
            time.sleep(args.seconds / 3)
            published = {2: time.time() * 1000}
            publish(loop_settings(s), v2)
            time.sleep(args.seconds / 3)
            published[3] = time.time() * 1000
            publish(loop_settings(s), bad)
            by_offset = results.recv()
            producer.join()
            predictions = read_all(s, s.output_topic, lambda out: len(out) >= len(events),
                                   timeout=120)
            status = read_all(s, s.status_topic, lambda out: len(out) >= 3, timeout=60)
    sent = {(int(p), int(o)): int(by_offset[p, o]) for p, o in zip(*np.nonzero(by_offset), strict=True)}
    positions = Counter((p["source_partition"], p["source_offset"]) for p, _ in predictions)
    latency = [ts - sent[(p["source_partition"], p["source_offset"])] for p, ts in predictions
               if sent.get((p["source_partition"], p["source_offset"]), 0) >= measured_from]
    stamps = np.sort([ts for _, ts in predictions])
    inputs = np.sort(list(sent.values()))
    live = [r for r, _ in status if r["status"] == "live"]
    rejected = [r for r, _ in status if r["status"] == "rejected"]
    # Around each publication: from 1 s before it to 1 s after the scorer settled it (live or refused).
    settled = {r["model_version"]: ts for r, ts in status}
    windows = [(published[v] - 1000, settled.get(v, published[v] + 10_000) + 1000) for v in (2, 3)]
    # As long a stretch of stream, ending 1 s before each of those windows: no publication in sight. Gaps
    # there are what the machine does to the stream without any swap.
    baselines = [(lo - 1000 - (hi - lo), lo - 1000) for lo, hi in windows]
    print(orjson.dumps({
        "events_in": len(events), "predictions_out": len(predictions),
        "lost": len(set(sent) - set(positions)), "duplicated": sum(n - 1 for n in positions.values() if n > 1),
        "max_gap_ms": max(max_gap(stamps, lo, hi) for lo, hi in windows),
        "max_input_gap_ms": max(max_gap(inputs, lo, hi) for lo, hi in windows),
        "max_gap_baseline_ms": max(max_gap(stamps, lo, hi) for lo, hi in baselines),
        "max_gap_anywhere_ms": max_gap(stamps, measured_from, np.inf),
        "p99_latency_ms": round(float(np.percentile(latency, 99)), 1),
        "p50_latency_ms": round(float(np.percentile(latency, 50)), 1),
        "swap_latency_ms": next((r["swap_ms"] for r in live if r["model_version"] == 2), None),
        "swap_load_ms": next((r["load_ms"] for r in live if r["model_version"] == 2), None),
        "bad_model_rejected": bool(rejected) and rejected[0]["serving_version"] == 2,
        "bad_model_reason": rejected[0]["reason_kind"] if rejected else None,
        "versions": dict(Counter(str(p["model_version"]) for p, _ in predictions)),
        "rate": args.rate, "batch_size": args.batch_size, "batch_max_wait_ms": args.batch_max_wait_ms,
        "warm_up_seconds": args.warm_up_seconds, "nodes": args.nodes,
    }).decode())


if __name__ == "__main__":
    main()
