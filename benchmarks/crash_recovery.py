"""Benchmark: how long scoring stops when a scorer replica crashes or is redeployed.

Crash, in each delivery mode: the only replica scores a paced stream of `flights.scheduled` (the scorer as
deployed: ``python -m scoring_service`` in its own process), is killed with SIGKILL, and a replacement under the
same replica name is started at once. ``silence_s``: per input partition, from the last committed prediction
before the kill to the first after it, the largest; ``restart_to_first_prediction_s``: from starting the
replacement to its first prediction (it loads its model first); ``lost`` / ``duplicated``: input positions with
no / several committed predictions over the whole stream.

Rolling redeploy: two replicas share the stream; each in turn is stopped with SIGTERM (it hands its partitions
over) and started again (it takes its share back), ``--rolling-rounds`` times. ``rolling_gap_ms``: the longest
pause between consecutive predictions of a partition during a redeploy (the median over rounds; each round's in
``rolling_gaps_ms``), next to ``rolling_baseline_gap_ms``, the same over as long a stretch before the first.
Times are broker append times. Uses KAFKA_BOOTSTRAP_SERVERS if set, else starts a local broker. Last stdout
line: one JSON object.

    .venv/bin/python benchmarks/crash_recovery.py [--rate 5000] [--warm-up-seconds 15] [--rolling-rounds 3]
        [--heartbeat-interval-ms 50] [--only crash|rolling]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.hot_swap import free_port, paced_produce, read_all, scorer_env, wait_ready  # noqa: E402
from benchmarks.replay_snapshot import kafka_cluster  # noqa: E402
from benchmarks.scorer_throughput import bench_settings, flight_events, loop_settings, model_envelope  # noqa: E402
from ml.publish import publish  # noqa: E402
from scoring_service.config import ScorerSettings  # noqa: E402
from use_cases.flight_delay import preprocessing as features  # noqa: E402

log = logging.getLogger("bench")
REPO = Path(__file__).resolve().parents[1]
LOGS = REPO / ".local" / "bench-crash-recovery"


def start_scorer(s: ScorerSettings, name: str) -> subprocess.Popen:
    LOGS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / f"{name}.log", "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "scoring_service"], env=scorer_env(s), cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stream(s: ScorerSettings, events: list, rate: float) -> tuple[multiprocessing.Process, object]:
    """The paced input in a process of its own (see ``hot_swap.paced_produce``), once it has started."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    producer = ctx.Process(target=paced_produce, args=(s.kafka_bootstrap_servers, s.input_topic, events, rate,
                                                      theirs))
    producer.start()
    assert ours.recv() == "started"
    return producer, ours


def predictions_by_partition(s: ScorerSettings, sent: np.ndarray) -> tuple[dict[int, np.ndarray], dict[str, int]]:
    """Committed predictions' append times (ms) per source partition, sorted; and the input positions
    ``sent`` (partition x offset: delivered when non-zero) with no prediction (lost) and with several."""
    inputs = {(p, int(o)) for p in range(sent.shape[0]) for o in np.flatnonzero(sent[p])}
    records = read_all(s, s.output_topic, lambda out: len(out) >= len(inputs), timeout=180)
    per_input = Counter((r["source_partition"], r["source_offset"]) for r, _ in records)
    stamps: dict[int, list[int]] = defaultdict(list)
    for r, ts in records:
        stamps[r["source_partition"]].append(ts)
    counts = {"inputs": len(inputs), "lost": len(inputs - set(per_input)),
              "duplicated": sum(n > 1 for n in per_input.values())}
    return {p: np.sort(np.asarray(v)) for p, v in stamps.items()}, counts


def crash(bootstrap: str, mode: str, events: list, fitted, rate: float, warm_up_s: float, heartbeat_ms: int) -> dict:
    s = bench_settings(bootstrap, delivery_mode=mode, http_port=free_port(), replica_name="bench-replica",
                       heartbeat_interval_ms=heartbeat_ms)
    publish(loop_settings(s), model_envelope(fitted, 1, seed=1)[0])
    first = start_scorer(s, f"{mode}-first")
    replacement = None
    try:
        wait_ready(s, first)
        producer, conn = stream(s, events, rate)
        time.sleep(warm_up_s)
        kill_ms = time.time() * 1000
        os.killpg(first.pid, signal.SIGKILL)
        started_ms = time.time() * 1000
        replacement = start_scorer(s, f"{mode}-replacement")  # the same replica name: the same static member
        sent = conn.recv()
        producer.join()
        by_partition, counts = predictions_by_partition(s, sent)
    finally:
        for proc in (first, replacement):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
    silence, first_after = [], []
    for stamps in by_partition.values():
        before, after = stamps[stamps < kill_ms], stamps[stamps >= kill_ms]
        if len(before) and len(after):
            silence.append(int(after[0] - before[-1]))
            first_after.append(int(after[0]))
    return {"silence_s": round(max(silence) / 1000, 2) if silence else None,
            "restart_to_first_prediction_s": round((min(first_after) - started_ms) / 1000, 2) if first_after else None,
            **counts}


def rolling(bootstrap: str, events: list, fitted, rate: float, warm_up_s: float, heartbeat_ms: int,
            rounds: int) -> dict:
    """Two replicas; each in turn stopped with SIGTERM and started again under its name, ``rounds`` times."""
    s = bench_settings(bootstrap, http_port=0, heartbeat_interval_ms=heartbeat_ms)
    publish(loop_settings(s), model_envelope(fitted, 1, seed=1)[0])
    replicas = {}
    for name in ("bench-a", "bench-b"):
        settings = s.model_copy(update={"replica_name": name, "http_port": free_port()})
        replicas[name] = (settings, start_scorer(settings, f"rolling-{name}"))
    try:
        for settings, proc in replicas.values():
            wait_ready(settings, proc)
        producer, conn = stream(s, events, rate)
        time.sleep(warm_up_s)
        spans = []
        for _ in range(rounds):
            began_ms = time.time() * 1000
            for name, (settings, proc) in list(replicas.items()):
                os.killpg(proc.pid, signal.SIGTERM)  # hands its partitions over, then exits
                proc.wait(60)
                restarted = start_scorer(settings, f"rolling-{name}")
                replicas[name] = (settings, restarted)
                wait_ready(settings, restarted)
            spans.append((began_ms, time.time() * 1000))
            time.sleep(1)
        sent = conn.recv()
        producer.join()
        by_partition, counts = predictions_by_partition(s, sent)
    finally:
        for _, proc in replicas.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)

    def gap(lo: float, hi: float) -> int:
        return max(int(np.max(np.diff(t[(t >= lo) & (t <= hi)]))) for t in by_partition.values())

    gaps = [gap(began, ended + 1000) for began, ended in spans]
    span = spans[0][1] - spans[0][0]
    first = spans[0][0]
    return {"rolling_gap_ms": int(np.median(gaps)), "rolling_gaps_ms": gaps,
            "rolling_baseline_gap_ms": gap(first - min(span, warm_up_s * 1000 - 2000), first),
            "rolling_lost": counts["lost"], "rolling_duplicated": counts["duplicated"],
            "rolling_span_s": round(span / 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="input events per second")
    parser.add_argument("--warm-up-seconds", type=float, default=15.0, help="stream before the crash or redeploy")
    parser.add_argument("--after-seconds", type=float, default=25.0, help="stream after it")
    parser.add_argument("--rolling-rounds", type=int, default=3, help="rolling redeploys of both replicas")
    parser.add_argument("--heartbeat-interval-ms", type=int, default=ScorerSettings.model_fields[
        "heartbeat_interval_ms"].default, help="the scorers' HEARTBEAT_INTERVAL_MS")
    parser.add_argument("--only", choices=("crash", "rolling"), help="run one of the two scenarios")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    # A rolling round takes about 13 s (two model loads): the stream lasts until the last round has ended.
    seconds = args.warm_up_seconds + max(args.after_seconds, 15 * args.rolling_rounds + 5)
    events, flights = flight_events(int(args.rate * seconds))
    fitted = features.fit(flights)
    hb = args.heartbeat_interval_ms
    result: dict = {"rate": args.rate, "warm_up_seconds": args.warm_up_seconds, "heartbeat_interval_ms": hb}
    with kafka_cluster() as bootstrap:
        if args.only in (None, "crash"):
            for mode in ("exactly_once", "at_least_once"):
                result[mode] = crash(bootstrap, mode, events, fitted, args.rate, args.warm_up_seconds, hb)
                log.info("%s: %s", mode, result[mode])
        if args.only in (None, "rolling"):
            result |= rolling(bootstrap, events, fitted, args.rate, args.warm_up_seconds, hb, args.rolling_rounds)
            log.info("rolling: %s", {k: v for k, v in result.items() if k.startswith("rolling")})
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
