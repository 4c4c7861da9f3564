"""Benchmark: the scorer's events/s against a Kafka pass-through and naive per-message model.predict.

In one run, on the same input topic: (1) pass-through: consume and produce the same bytes through the scorer's
own batching and delivery code (``collect``, ``Sink``: flush, then synchronous commit, per batch); (2) the scorer (in
process, default settings but the topics); (3) naive: the flight preprocessing + ``model.predict`` per record
on a small sample, no Kafka. Rates are counted from the end of the first batch to the last record, so the
consumer-group join is not counted; pass-through is the median of three reads after an untimed one. Uses
KAFKA_BOOTSTRAP_SERVERS if set, else starts a local broker (``--nodes 3``: a three-node cluster, topics replicated
three times). Last stdout line: JSON with passthrough_eps, scorer_eps, naive_eps, ratio_to_passthrough, events,
nodes.

    .venv/bin/python benchmarks/scorer_throughput.py [--events 100000] [--batch-size 10000] [--nodes 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from functools import cache
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from benchmarks.replay_snapshot import kafka_cluster  # noqa: E402
from ml.keras_models import to_bytes  # noqa: E402
from ml.publish import build_envelope, publish  # noqa: E402
from ml.settings import LoopSettings  # noqa: E402
from ml.signing import Signer  # noqa: E402
from ml.topics import replication, wait_until_served  # noqa: E402
from ml.wire import Framing  # noqa: E402
from scoring_service.app import IDLE_WAIT_S, Scorer, consumer_config  # noqa: E402
from scoring_service.batching import collect  # noqa: E402
from scoring_service.config import ScorerSettings  # noqa: E402
from scoring_service.sink import Sink  # noqa: E402
from use_cases.flight_delay import preprocessing as features  # noqa: E402
from use_cases.flight_delay.replay import build_stream  # noqa: E402
from use_cases.flight_delay.source import load_completed  # noqa: E402

log = logging.getLogger("bench")
# The loop's key of this run; the scorer trusts its public key (trusted_dir).
SIGNER = Signer.generate()
MODEL = "flight_delay_bench"
PARTITIONS = 3
PASSTHROUGH_RUNS = 3


@cache
def trusted_dir() -> Path:
    """A trust folder of this run holding SIGNER's public key (left in the temp folder: public, a few bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-trusted-"))
    (folder / f"{SIGNER.key_id}.pem").write_bytes(SIGNER.public_pem())
    return folder


def bench_settings(bootstrap: str, **overrides) -> ScorerSettings:
    """Scorer settings with topics unique to this run (created here), so runs against one cluster do not mix."""
    u = uuid.uuid4().hex[:8]
    s = ScorerSettings(use_case="flight_delay", kafka_bootstrap_servers=bootstrap, model_name=MODEL,
                       model_trusted_keys_dir=trusted_dir(),
                       **{"topic_prefix": f"bench-{u}.", "group_id": f"bench-scorer-{u}", "http_port": 0, **overrides})
    admin = AdminClient(s.kafka_config())
    # Replicated as the loop's own topics are on a cluster of this size (ml.topics.replication).
    factor, min_isr = replication(len(admin.list_topics(timeout=30).brokers))

    def topic(name: str, partitions: int, **config: str) -> NewTopic:
        return NewTopic(name, partitions, factor, config={"min.insync.replicas": str(min_isr), **config})

    # Broker-side timestamps: a latency from them is input appended -> prediction appended, which leaves out
    # the benchmark producer's own client-side queueing.
    topics = [topic(t, PARTITIONS, **{"message.timestamp.type": "LogAppendTime"})
              for t in (s.input_topic, s.output_topic)]
    topics += [topic(t, 1) for t in (s.dlq_topic, s.status_topic)]
    topics.append(topic(s.models_topic, 1, **{"cleanup.policy": "compact", "max.message.bytes": str(4 << 20)}))
    for fut in admin.create_topics(topics).values():
        fut.result(30)
    wait_until_served(loop_settings(s), {s.models_topic: 1}, timeout=30)
    return s


def flight_events(n: int) -> tuple[list[tuple[bytes, bytes]], object]:
    """(key, value) of ``n`` `flights.scheduled` records (repeating Jan-Feb 2013 if needed), and the flights."""
    flights = load_completed((1, 2), limit=min(n, 50_000))
    stream = build_stream(LoopSettings(), flights)
    one = [(k.encode(), v) for t, k, v in zip(stream.topics, stream.keys, stream.values, strict=True)
           if t == "flights.scheduled"]
    return [one[i % len(one)] for i in range(n)], flights


def model_envelope(contract: features.FlightPreprocessing, version: int, seed: int):
    """A real flight delay model of the served architecture (untrained: scoring costs the same) as a signed
    envelope, and the model."""
    import keras

    from use_cases.flight_delay.model import untrained

    keras.utils.set_random_seed(seed)
    model = untrained(contract)
    envelope = build_envelope(model_name=MODEL, model_version=version, run_id=f"bench-{version}",
                              model_uri=f"models:/{MODEL}/{version}", preprocessing=contract.to_dict(),
                              metrics={"auc": 0.7}, decision_id=f"bench-{version}",
                              artifact=to_bytes(model), signer=SIGNER)
    return envelope, model


def loop_settings(s: ScorerSettings) -> LoopSettings:
    return LoopSettings(kafka_bootstrap_servers=s.kafka_bootstrap_servers, topic_prefix=s.topic_prefix,
                        kafka_client_config=s.kafka_client_config,
                        model_signing_key=SecretStr(SIGNER.private_pem().decode()),
                        model_trusted_keys_dir=s.model_trusted_keys_dir, model_name=MODEL)


def produce_all(s: ScorerSettings, events: list[tuple[bytes, bytes]]) -> None:
    """The events on ``s``'s input topic, framed with its schema id as a replay writes them."""
    topic = s.input_topic
    head = Framing(s).header(topic)
    p = Producer(s.kafka_config({"enable.idempotence": True, "linger.ms": 20}))
    for key, value in events:
        while True:
            try:
                p.produce(topic, key=key, value=head + value)
                break
            except BufferError:
                p.poll(0.05)
    if p.flush(60):
        raise RuntimeError("input not delivered")


def warm_passthrough(s: ScorerSettings, total: int) -> float:
    """The median pass-through rate of PASSTHROUGH_RUNS reads of the whole input (each in a group of its own),
    after one untimed read: the first read of a fresh broker's topic ran at 0.7 to 1.4 times the later ones from
    run to run (docs/performance.md), and the scorer, measured after it, reads from a broker that has served it."""
    runs = [passthrough(s.model_copy(update={"group_id": f"{s.group_id}-{i}"}), total)
            for i in range(PASSTHROUGH_RUNS + 1)]
    log.info("pass-through runs: %s events/s (the first is the warm-up)", [round(r) for r in runs])
    return statistics.median(runs[1:])


def rate(start: float, end: float, first_batch: int, total: int) -> float:
    return (total - first_batch) / max(end - start, 1e-9)


def passthrough(s: ScorerSettings, total: int) -> float:
    """Consume + produce the same bytes through the scorer's own consumer settings, batching and delivery
    path (``collect``, ``Sink.send``/``settle``: produce, commit delivered offsets), no scoring; events/s."""
    out = f"{s.output_topic}-passthrough"
    consumer = Consumer({**consumer_config(s, "passthrough"), "group.id": f"{s.group_id}-pt"})
    sink = Sink(s)
    consumer.subscribe([s.input_topic])
    done, first_batch, start = 0, 0, None
    try:
        while done < total:
            msgs = collect(consumer.consume, consumer.poll, s.batch_size, s.batch_max_wait_ms / 1000, IDLE_WAIT_S)
            if not msgs:
                continue
            last = {}
            for m in msgs:
                last[m.partition()] = m.offset()
            offsets = [TopicPartition(s.input_topic, p, o + 1) for p, o in sorted(last.items())]
            sink.settle(consumer)
            sink.send([(out, m.key(), m.value()) for m in msgs], offsets, consumer)
            done += len(msgs)
            if start is None:
                start, first_batch = time.perf_counter(), len(msgs)
        sink.settle(consumer, handover=True)
        return rate(start, time.perf_counter(), first_batch, total)
    finally:
        consumer.close()
        sink.close()


def scorer_rate(s: ScorerSettings, total: int) -> tuple[float, Scorer]:
    """Run the scorer until it has scored ``total`` events; events/s and the (stopped) scorer."""
    scorer = Scorer(s, scorer_id="bench")
    thread = threading.Thread(target=scorer.run, name="bench-scorer")
    thread.start()
    start = first_batch = None
    try:
        while (done := scorer.metrics.registry.get_sample_value("scorer_events_in_total") or 0) < total:
            if start is None and done > 0:
                start, first_batch = time.perf_counter(), done
            if not thread.is_alive():
                raise RuntimeError("scorer stopped")
            time.sleep(0.005)
        return rate(start, time.perf_counter(), first_batch, total), scorer
    finally:
        scorer.stop()
        thread.join(60)


def naive_rate(contract: features.FlightPreprocessing, model, events: list[tuple[bytes, bytes]]) -> float:
    """Per record: transform one record and call model.predict on it (what the scorer never does)."""
    records = [orjson.loads(v) for _, v in events]
    model.predict(features.transform(contract, records[:1]), verbose=0)  # trace once, like a warm scorer
    started = time.perf_counter()
    for record in records:
        model.predict(features.transform(contract, [record]), verbose=0)
    return len(records) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    defaults = ScorerSettings.model_fields
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"].default)
    parser.add_argument("--batch-max-wait-ms", type=int, default=defaults["batch_max_wait_ms"].default)
    parser.add_argument("--naive-sample", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=1,
                        help="nodes of the local Kafka cluster started (topics replicated 3 times from 3 nodes)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    events, flights = flight_events(args.events)
    contract = features.fit(flights)
    envelope, model = model_envelope(contract, 1, seed=1)
    with kafka_cluster(args.nodes) as bootstrap:
        s = bench_settings(bootstrap, batch_size=args.batch_size, batch_max_wait_ms=args.batch_max_wait_ms)
        produce_all(s, events)
        log.info("%d events on %s", len(events), s.input_topic)
        passthrough_eps = warm_passthrough(s, len(events))
        log.info("pass-through: %.0f events/s", passthrough_eps)
        publish(loop_settings(s), envelope)
        scorer_eps, _ = scorer_rate(s, len(events))
        log.info("scorer: %.0f events/s", scorer_eps)
    naive_eps = naive_rate(contract, model, events[:args.naive_sample])
    print(orjson.dumps({
        "passthrough_eps": round(passthrough_eps), "scorer_eps": round(scorer_eps), "naive_eps": round(naive_eps, 1),
        "ratio_to_passthrough": round(scorer_eps / passthrough_eps, 3), "events": len(events),
        "batch_size": args.batch_size, "batch_max_wait_ms": args.batch_max_wait_ms,
        "naive_sample": args.naive_sample, "nodes": args.nodes,
    }).decode())


if __name__ == "__main__":
    main()
