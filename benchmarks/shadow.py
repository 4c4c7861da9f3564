"""Benchmark: what a shadow model costs the champion's stream. In one run, on one broker:

1. Throughput (measured second): the same input topic (``--events`` flight events) scored from the beginning in
   alternating rounds without and with a shadow model (``--pairs`` pairs; a fresh group per round, the scorer in this
   process as in ``benchmarks/scorer_throughput.py``; the shadow published before a "with" round and retired before a
   "without" one, so each round's scorer finds it on the models topic at start). Rates count from the end of the
   first batch to the last record; each "with" round must have written one shadow prediction per event.
2. Gap (measured first, on a fresh broker): a steady stream at ``--rate`` events/s to a scorer in its own process
   (``benchmarks/hot_swap.py``'s paced producer and helpers), after a warm-up (40 s, as there); half-way through the
   measured part a shadow model is published. ``gap_ms_with_admission``: the longest pause between consecutive
   champion predictions (broker timestamps) from 1 s before the publication to the end of the stream (the shadow
   loaded and checked in the loader child, then scoring beside the champion); ``gap_ms_baseline``: the same over the
   measured stream before that, without a shadow. ``gap_ms_admission_only``: up to 1 s after the scorer reported the
   shadow live; ``input_gap_ms_*``: the same windows of the input stream (the scorer cannot beat its input).

Prints a table, then one JSON line (last): events_per_s_without, events_per_s_with (medians of the rounds),
shadow_ratio (with / without), gap_ms_with_admission, gap_ms_baseline and what they were measured on. Uses
KAFKA_BOOTSTRAP_SERVERS if set, else starts a local broker.

    .venv/bin/python benchmarks/shadow.py [--events 200000] [--pairs 3] [--rate 5000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import gc
import logging
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from benchmarks.hot_swap import free_port, max_gap, paced_produce, read_all, scorer_process  # noqa: E402
from benchmarks.replay_snapshot import kafka_cluster  # noqa: E402
from benchmarks.scorer_throughput import (  # noqa: E402
    MODEL, PARTITIONS, SIGNER, bench_settings, flight_events, loop_settings, model_envelope, produce_all, scorer_rate)
from ml.publish import SHADOW, ModelEnvelope, build_envelope, publish, retire_shadow  # noqa: E402
from ml.topics import replication, wait_until_served  # noqa: E402
from ml.wire import Framing  # noqa: E402
from scoring_service.config import ScorerSettings  # noqa: E402
from use_cases.flight_delay import preprocessing as features  # noqa: E402

log = logging.getLogger("bench")
REPO = Path(__file__).resolve().parents[1]
LOG = REPO / ".local" / "bench-shadow-scorer.log"


def in_shadow(envelope: ModelEnvelope) -> ModelEnvelope:
    """``envelope``'s version signed as a shadow."""
    return build_envelope(model_name=envelope.model_name, model_version=envelope.model_version,
                          run_id=envelope.run_id, model_uri=envelope.model_uri, preprocessing=envelope.preprocessing,
                          metrics=envelope.metrics, decision_id=envelope.decision_id, artifact=envelope.artifact(),
                          signer=SIGNER, stage=SHADOW)


def with_shadow_topic(s: ScorerSettings) -> ScorerSettings:
    """Create ``s``'s shadow predictions topic as bench_settings creates its predictions topic."""
    admin = AdminClient(s.kafka_config())
    factor, min_isr = replication(len(admin.list_topics(timeout=30).brokers))
    topic = NewTopic(s.shadow_topic, PARTITIONS, factor, config={"min.insync.replicas": str(min_isr),
                                                                 "message.timestamp.type": "LogAppendTime"})
    for fut in admin.create_topics([topic]).values():
        fut.result(30)
    wait_until_served(loop_settings(s), {s.shadow_topic: PARTITIONS}, timeout=30)
    return s


def throughput_rounds(s: ScorerSettings, champion: ModelEnvelope, shadow: ModelEnvelope, total: int,
                      pairs: int) -> list[dict]:
    """Alternating rounds without and with the shadow over the same ``total`` events; one row per round."""
    loop = loop_settings(s)
    publish(loop, champion)
    rows = []
    for i in range(2 * pairs):
        with_shadow = i % 2 == 1
        if with_shadow:
            publish(loop, shadow)
        elif i:
            retire_shadow(loop, MODEL, reason="benchmark round without a shadow")
        eps, scorer = scorer_rate(s.model_copy(update={"group_id": f"{s.group_id}-{i}"}), total)
        shadowed = scorer.metrics.registry.get_sample_value("scorer_shadow_predictions_out_total") or 0
        if shadowed != (total if with_shadow else 0):
            raise RuntimeError(f"round {i}: {shadowed:.0f} shadow predictions for {total} events")
        rows.append({"round": i + 1, "shadow": with_shadow, "events_per_s": round(eps),
                     "shadow_predictions": int(shadowed)})
        log.info("round %d (%s shadow): %.0f events/s", i + 1, "with" if with_shadow else "without", eps)
    return rows


def gap_run(bootstrap: str, champion: ModelEnvelope, shadow: ModelEnvelope, events, rate: float,
            warm_up_s: float, seconds: float) -> dict:
    """A paced stream to a scorer process; the shadow published half-way through the measured part."""
    s = with_shadow_topic(bench_settings(bootstrap, http_port=free_port()))
    publish(loop_settings(s), champion)
    with scorer_process(s, LOG):
        head = Framing(s).header(s.input_topic)
        ctx = multiprocessing.get_context("spawn")  # this process has imported TensorFlow
        results, to_us = ctx.Pipe(duplex=False)
        producer = ctx.Process(target=paced_produce, daemon=True,
                               args=(s.kafka_bootstrap_servers, s.input_topic,
                                     [(k, head + v) for k, v in events], rate, to_us))
        producer.start()
        to_us.close()
        if results.recv() != "started":
            raise RuntimeError("input producer did not start")
        time.sleep(warm_up_s)
        measured_from = time.time() * 1000
        time.sleep(seconds / 2)
        published = time.time() * 1000
        publish(loop_settings(s), shadow)
        by_offset = results.recv()
        producer.join()
        predictions = read_all(s, s.output_topic, lambda out: len(out) >= len(events), timeout=120)
        shadowed = read_all(s, s.shadow_topic, lambda out: False, timeout=5)
        status = read_all(s, s.status_topic, lambda out: any(r["status"] == "shadow" for r, _ in out), timeout=60)
    stamps = np.sort([ts for _, ts in predictions])
    inputs = np.sort(by_offset[by_offset > 0])  # append times of the delivered inputs
    live = next(ts for r, ts in status if r["status"] == "shadow")
    # From 1 s before the publication to the end of the stream: the admission, then the shadow scoring beside the
    # champion. The baseline: the measured stream before it, ending 1 s before.
    lo, hi = published - 1000, published + seconds * 500
    baseline = (measured_from, lo - 1000)
    inside = stamps[(stamps >= lo) & (stamps <= hi)]
    widest = int(np.argmax(np.diff(inside))) if len(inside) > 1 else 0
    return {"gap_ms_with_admission": max_gap(stamps, lo, hi), "gap_ms_baseline": max_gap(stamps, *baseline),
            # where that gap began, from the scorer's "shadow" status record (negative: before it)
            "gap_at_ms_from_shadow_live": round(float(inside[widest]) - live) if len(inside) > 1 else None,
            "gap_ms_admission_only": max_gap(stamps, lo, live + 1000),
            "input_gap_ms_with_admission": max_gap(inputs, lo, hi), "input_gap_ms_baseline": max_gap(inputs, *baseline),
            "gap_window_ms": round(hi - lo), "baseline_window_ms": round(baseline[1] - baseline[0]),
            "admission_ms": round(live - published), "gap_predictions": len(predictions),
            "gap_shadow_predictions": len(shadowed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per throughput round")
    parser.add_argument("--pairs", type=int, default=3, help="pairs of rounds (without, with)")
    parser.add_argument("--rate", type=float, default=5000.0, help="events/s of the paced stream (gap part)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured part of the paced stream")
    parser.add_argument("--warm-up-seconds", type=float, default=40.0, help="paced stream before the measured part")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    n_paced = int(args.rate * (args.warm_up_seconds + args.seconds))
    every, flights = flight_events(max(args.events, n_paced))
    events, paced = every[:args.events], every[:n_paced]
    contract = features.fit(flights)
    champion, _ = model_envelope(contract, 1, seed=1)
    shadow = in_shadow(model_envelope(contract, 2, seed=2)[0])
    gc.freeze()  # the models built above imported TensorFlow: no full collection over its objects mid-stream
    with kafka_cluster() as bootstrap:
        # The paced stream first, on a broker that has not just absorbed the rounds' millions of records (run
        # after them, the champion's largest gap was 105 ms once, where a fresh broker's was 19 ms).
        gaps = gap_run(bootstrap, champion, shadow, paced, args.rate, args.warm_up_seconds, args.seconds)
        s = with_shadow_topic(bench_settings(bootstrap))
        produce_all(s, events)
        rows = throughput_rounds(s, champion, shadow, len(events), args.pairs) if args.pairs else []
    without = statistics.median([r["events_per_s"] for r in rows if not r["shadow"]] or [float("nan")])
    with_ = statistics.median([r["events_per_s"] for r in rows if r["shadow"]] or [float("nan")])
    print(f"{'round':>5} {'shadow':>6} {'events/s':>9} {'shadow predictions':>18}")
    for r in rows:
        print(f"{r['round']:>5} {'yes' if r['shadow'] else 'no':>6} {r['events_per_s']:>9} "
              f"{r['shadow_predictions']:>18}")
    print(f"paced {args.rate:.0f}/s: longest champion gap {gaps['gap_ms_with_admission']} ms around and after the "
          f"shadow's admission ({gaps['admission_ms']} ms from publication), {gaps['gap_ms_baseline']} ms before")
    print(orjson.dumps({
        "events_per_s_without": round(without) if rows else None, "events_per_s_with": round(with_) if rows else None,
        "shadow_ratio": round(with_ / without, 3) if rows else None, **gaps, "events": len(events), "pairs": args.pairs,
        "rate": args.rate, "seconds": args.seconds, "warm_up_seconds": args.warm_up_seconds,
        "batch_size": ScorerSettings.model_fields["batch_size"].default, "run": uuid.uuid4().hex[:8],
    }).decode())


if __name__ == "__main__":
    main()
