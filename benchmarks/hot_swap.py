"""Benchmark: hot swap under a steady stream. Produces `flights.scheduled` at a fixed rate while the scorer
runs, publishes a new model version a third of the way in and a bad one (a NaN output layer) two thirds in,
and checks what came out.

Fields: events_in, predictions_out, lost and duplicated (input positions with zero / several predictions),
max_gap_ms (longest pause between consecutive predictions, by record timestamp), p99_latency_ms (input
record timestamp to prediction record timestamp), swap_latency_ms (publication to live, from the status
record), bad_model_rejected, versions (predictions per model version). Uses KAFKA_BOOTSTRAP_SERVERS if set,
else starts a local broker. Last stdout line: one JSON object.

    .venv/bin/python benchmarks/hot_swap.py [--rate 5000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from confluent_kafka import Consumer, Producer  # noqa: E402

from benchmarks.replay_snapshot import kafka_cluster  # noqa: E402
from benchmarks.scorer_throughput import (  # noqa: E402
    KEY, MODEL, bench_settings, flight_events, loop_settings, model_envelope)
from ml import features  # noqa: E402
from ml.publish import build_envelope, publish  # noqa: E402
from scoring_service.app import Scorer  # noqa: E402
from scoring_service.config import ScorerSettings  # noqa: E402

log = logging.getLogger("bench")


def paced_produce(s: ScorerSettings, events, rate: float, sent: dict) -> None:
    """Produce at ``rate`` events/s; records (partition, offset) -> timestamp ms of each delivered input."""
    p = Producer({"bootstrap.servers": s.kafka_bootstrap_servers, "enable.idempotence": True, "linger.ms": 5})

    def on_delivery(err, msg) -> None:
        if err is None:
            sent[(msg.partition(), msg.offset())] = msg.timestamp()[1]

    started = time.monotonic()
    for i, (key, value) in enumerate(events):
        if i % 100 == 0:
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
        p.produce(s.topic_flights_scheduled, key=key, value=value, on_delivery=on_delivery)
        p.poll(0)
    if p.flush(60):
        raise RuntimeError("input not delivered")
    log.info("produced %d events in %.1f s", len(events), time.monotonic() - started)


def read_all(s: ScorerSettings, topic: str, until, timeout: float) -> list:
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers, "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    c.subscribe([topic])
    out, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(out):
            for m in c.consume(5000, 0.2):
                if m.error() is None:
                    out.append((orjson.loads(m.value()), m.timestamp()[1]))
    finally:
        c.close()
    return out


def bad_envelope(contract: features.FeatureContract):
    """A correctly signed model whose output layer is NaN: it must fail the canary."""
    import keras

    from ml import model as model_lib

    keras.utils.set_random_seed(9)
    model = model_lib.build(contract)
    layer = model.get_layer("p_delayed")
    layer.set_weights([np.full_like(w, np.nan) for w in layer.get_weights()])
    return build_envelope(model_name=MODEL, model_version=3, run_id="bench-bad", model_uri=f"models:/{MODEL}/3",
                          feature_contract=contract.to_dict(), metrics={"auc": 0.7}, decision_id="bench-bad",
                          artifact=model_lib.to_bytes(model), key=KEY.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="input events per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the stream")
    defaults = ScorerSettings.model_fields
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"].default)
    parser.add_argument("--batch-max-wait-ms", type=int, default=defaults["batch_max_wait_ms"].default)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    events, flights = flight_events(int(args.rate * args.seconds))
    contract = features.fit(flights)
    v1, _ = model_envelope(contract, 1, seed=1)
    v2, _ = model_envelope(contract, 2, seed=2)
    bad = bad_envelope(contract)
    with kafka_cluster() as bootstrap:
        s = bench_settings(bootstrap, batch_size=args.batch_size, batch_max_wait_ms=args.batch_max_wait_ms)
        publish(loop_settings(s), v1)
        scorer = Scorer(s, scorer_id="bench")
        thread = threading.Thread(target=scorer.run, name="bench-scorer")
        thread.start()
        try:
            while not scorer.ready()[0]:
                time.sleep(0.1)
            sent: dict = {}
            producer = threading.Thread(target=paced_produce, args=(s, events, args.rate, sent))
            producer.start()
            time.sleep(args.seconds / 3)
            publish(loop_settings(s), v2)
            time.sleep(args.seconds / 3)
            publish(loop_settings(s), bad)
            producer.join()
            predictions = read_all(s, s.topic_flights_predictions, lambda out: len(out) >= len(events),
                                   timeout=120)
            status = read_all(s, s.topic_models_status, lambda out: len(out) >= 3, timeout=60)
            serving_after = scorer.slot.current.version
        finally:
            scorer.stop()
            thread.join(60)
    positions = Counter((p["source_partition"], p["source_offset"]) for p, _ in predictions)
    latency = [ts - sent[(p["source_partition"], p["source_offset"])] for p, ts in predictions
               if (p["source_partition"], p["source_offset"]) in sent]
    stamps = np.sort([ts for _, ts in predictions])
    live = [r for r, _ in status if r["status"] == "live"]
    rejected = [r for r, _ in status if r["status"] == "rejected"]
    print(orjson.dumps({
        "events_in": len(events), "predictions_out": len(predictions),
        "lost": len(set(sent) - set(positions)), "duplicated": sum(n - 1 for n in positions.values() if n > 1),
        "max_gap_ms": int(np.max(np.diff(stamps))) if len(stamps) > 1 else None,
        "p99_latency_ms": round(float(np.percentile(latency, 99)), 1),
        "p50_latency_ms": round(float(np.percentile(latency, 50)), 1),
        "swap_latency_ms": next((r["swap_ms"] for r in live if r["model_version"] == 2), None),
        "swap_load_ms": next((r["load_ms"] for r in live if r["model_version"] == 2), None),
        "bad_model_rejected": bool(rejected) and serving_after == 2,
        "bad_model_reason": rejected[0]["reason_kind"] if rejected else None,
        "versions": dict(Counter(str(p["model_version"]) for p, _ in predictions)),
        "rate": args.rate, "batch_size": args.batch_size, "batch_max_wait_ms": args.batch_max_wait_ms,
    }).decode())


if __name__ == "__main__":
    main()
