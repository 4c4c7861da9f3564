"""The "retrain every N records" AssetWatcher through a real triggerer and scheduler (``airflow standalone``)
against the real broker: a snapshotted year fires nothing, N new records fire one run whose snapshot covers
them, a stream is followed while it runs, and a triggerer killed and started again fires no second run.

Runs stop after their snapshot (MIN_TRAINING_ROWS is out of reach: validate skips the rest), so a run costs
seconds and the test counts runs and reads the manifests they leave.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from infra.airflow import local
from infra.kafka.broker import free_port
from ml import new_records, snapshot, use_cases
from ml.settings import LoopSettings
from use_cases.flight_delay.replay import replay, replay_frame
from use_cases.flight_delay.source import load_completed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "retrain_flight_delay"
N = 5000
POLL_S = 1.0


class Stack:
    """Airflow standalone with the flight DAG's AssetWatcher on (N records, 1 s polls) and no schedule."""

    def __init__(self, cfg: local.AirflowConfig, env: dict[str, str], settings: LoopSettings, until) -> None:
        self.cfg, self.env, self.settings, self.until = cfg, env, settings, until
        self.topic = settings.topic("flights.completed")
        self.triggerer: subprocess.Popen | None = None

    def runs(self) -> list[dict]:
        status, body = local.api(self.cfg, "GET", f"/api/v2/dags/{DAG_ID}/dagRuns?order_by=run_after&limit=100")
        assert status == 200, body
        return body["dag_runs"]

    def announcements(self) -> list[dict]:
        """The payloads of the asset events the watcher fired, oldest first."""
        status, body = local.api(self.cfg, "GET", "/api/v2/assets/events?order_by=timestamp&limit=100")
        assert status == 200, body
        return [e["extra"]["payload"] for e in body["asset_events"]
                if (e.get("extra") or {}).get("payload", {}).get("topic") == self.topic]

    def manifests(self) -> list[snapshot.SnapshotManifest]:
        return snapshot.list_manifests(self.settings, self.topic)

    def settled(self, runs: int) -> list[dict]:
        """Once ``runs`` runs exist and all have ended (each stops after its snapshot)."""
        return self.until(f"{runs} finished run(s)", lambda: (r := self.runs()) and len(r) == runs and all(
            x["state"] in ("success", "failed") for x in r) and r, 240)

    def quiet(self) -> list[dict]:
        """The runs once the watcher has nothing left to announce: every run ended, the last announcement in a
        snapshot, and no new run for five polls."""
        def idle() -> int | None:
            runs = self.runs()
            covered = new_records.last_announcement(self.settings, self.topic).covered_by(
                self.manifests()[-1].end_offsets)
            return len(runs) if covered and all(r["state"] in ("success", "failed") for r in runs) else None

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (count := idle()) is not None:
                time.sleep(5 * POLL_S)
                if idle() == count:
                    return self.runs()
            time.sleep(POLL_S)
        raise AssertionError("the watcher and its runs did not settle within 300 s")

    def triggerer_pids(self) -> list[int]:
        """The triggerer processes of this Airflow home (standalone's child, or ours)."""
        pids = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes().split(b"\0")
                env = (cmdline.parent / "environ").read_bytes()
            except OSError:
                continue
            if b"triggerer" in argv and f"AIRFLOW_HOME={self.cfg.home}".encode() in env:
                pids.append(int(cmdline.parent.name))
        return pids

    def restart_triggerer(self) -> None:
        """SIGKILL the running triggerer, then start another, as an orchestrator restarting a crashed one."""
        for pid in self.triggerer_pids():
            os.kill(pid, signal.SIGKILL)
        self.until("the triggerer to die", lambda: not self.triggerer_pids(), 30)
        log = self.cfg.home / "triggerer-restarted.log"
        with open(log, "ab") as out:
            self.triggerer = subprocess.Popen([str(Path(sys.executable).with_name("airflow")), "triggerer"],
                                              env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True)
        # It takes the dead triggerer's trigger once that one's heartbeat is older than the health threshold.
        self.until("the new triggerer to run the watcher",
                   lambda: f"counting new records on {self.topic}" in log.read_text(errors="replace"), 120)


@pytest.fixture(scope="module")
def stack(kafka_bootstrap, tmp_path_factory, until):
    tmp = tmp_path_factory.mktemp("event-trigger")
    loop_env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "LOOP_DATA_DIR": str(tmp / "data"),
        "AIRFLOW_VAR_MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(tmp / "artifacts"), "TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}.",
        "MIN_TRAINING_ROWS": "100000000", "RETRAIN_TASK_RETRIES": "0",
        "FLIGHT_DELAY_RETRAIN_SCHEDULE": "none", "FLIGHT_DELAY_RETRAIN_EVERY_N": str(N),
        "FLIGHT_DELAY_RETRAIN_POLL_INTERVAL_S": str(POLL_S),
        "SENSOR_ANOMALY_RETRAIN_SCHEDULE": "none", "SENSOR_ANOMALY_RETRAIN_EVERY_N": "0",
        # A killed triggerer's triggers move to a new one once its heartbeat is this old.
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1", "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "5",
    }
    settings = LoopSettings(kafka_bootstrap_servers=kafka_bootstrap, loop_data_dir=tmp / "data",
                            topic_prefix=loop_env["TOPIC_PREFIX"], use_case="flight_delay")
    # (a) A year of flights, all of it already in a snapshot before Airflow starts.
    replay(settings, (1, 12))
    snapshot.take_snapshot(settings, settings.topic("flights.completed"),
                           use_cases.get("flight_delay").label_contract)
    cfg = local.AirflowConfig(home=tmp / "airflow", port=free_port(), kafka_bootstrap_servers=kafka_bootstrap)
    local.Airflow(cfg, loop_env=loop_env).start()
    s = Stack(cfg, local.airflow_env(cfg, loop_env), settings, until)
    try:
        until("the DAG to be parsed", lambda: local.api(cfg, "GET", f"/api/v2/dags/{DAG_ID}")[0] == 200, 180)
        assert local.api(cfg, "PATCH", f"/api/v2/dags/{DAG_ID}", body={"is_paused": False})[0] == 200
        until("the triggerer to run the watcher", lambda: s.triggerer_pids() and f"counting new records on {s.topic}"
              in cfg.log_file.read_text(errors="replace"), 120)
        yield s
    finally:
        if s.triggerer is not None and s.triggerer.poll() is None:
            os.killpg(s.triggerer.pid, signal.SIGKILL)
        local.Airflow(cfg).stop()


def test_the_watcher_follows_the_topic_one_run_per_announced_range(stack):
    flights = load_completed((1, 12))  # distinct keys from the replayed year are not needed: offsets count
    # (a) The snapshotted year: ten polls and nothing fires.
    time.sleep(10 * POLL_S + 5)
    assert stack.runs() == [], "a backlog already in a snapshot started a run"

    # (b) N new records: exactly one run, whose snapshot covers the announced range and names it.
    replay_frame(stack.settings, flights.iloc[:N])
    (run,) = stack.settled(1)
    time.sleep(5 * POLL_S)
    assert len(stack.runs()) == 1
    last = stack.manifests()[-1]
    assert last.triggered_by and last.row_count == N
    announced = new_records.last_announcement(stack.settings, stack.topic)
    assert announced.announcement_id == last.triggered_by and announced.covered_by(last.end_offsets)

    # (c) A stream of 20,000 events/s (10,000 completed flights/s) for 6 s: the watcher fires while it runs,
    # each run's snapshot covers its announcement, and no announced range is announced twice.
    replay_frame(stack.settings, flights.iloc[N:N + 60_000], rate=20_000)
    runs = stack.quiet()
    streamed, events = stack.manifests()[2:], stack.announcements()[1:]
    assert len(runs) >= 2 and len(streamed) == len(events) == len(runs) - 1
    assert [m.triggered_by for m in streamed] == [e["announcement_id"] for e in events]
    assert all(e["records"] >= N for e in events)
    assert events[0]["records"] < 60_000, "the first announcement waited for the end of the stream"
    ends = snapshot.partition_offsets(stack.settings, stack.topic)
    left = sum(end - streamed[-1].end_offsets[p] for p, (_, end) in ends.items())
    assert left < N and sum(m.row_count for m in streamed) + left == 60_000

    # (d) The triggerer killed (SIGKILL) with N - 1 records waiting and another started, then more records: one
    # run for all of them (the new triggerer counts from the snapshots, not from where the old one was).
    before, at = len(runs), N + 60_000
    waiting = N - 1 - left
    replay_frame(stack.settings, flights.iloc[at:at + waiting])
    time.sleep(3 * POLL_S)
    stack.restart_triggerer()
    replay_frame(stack.settings, flights.iloc[at + waiting:at + waiting + N // 2])
    runs = stack.quiet()
    assert len(runs) == before + 1, "the restarted triggerer fired twice, or not at all"
    assert stack.manifests()[-1].row_count == left + waiting + N // 2
