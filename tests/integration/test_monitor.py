"""The live monitor against a real broker, MLflow and scorer: a bad-but-valid version (trained on shuffled labels,
force-promoted) goes live, the monitor joins its predictions with the labels as they arrive, and rolls it back to
the previous version by itself; live metrics land in MLflow and on /metrics, the decision in the decision log.

With ROLLBACK_REPORT set, the rollback test appends its figures to that file as one JSON line
(benchmarks/rollback.py runs it and prints them).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
import uuid

import numpy as np
import pytest
from pydantic import SecretStr

from ml.gate import decide
from ml.monitoring.live_view import read_series, svg
from ml.monitoring.service import Monitor
from ml.monitoring.settings import MonitorSettings
from ml.pipeline import republish_step, version_envelope
from ml.publish import publish
from ml.registry import Registry
from ml.topics import ensure_topics
from ml.use_cases import get
from ml.settings import LoopSettings
from scoring_service.config import ScorerSettings
from tests.integration.test_scorer import SIGNER, Running, produce, read, trust, wait_for
from use_cases.flight_delay.replay import build_stream
from use_cases.flight_delay.source import load_completed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "flight_delay_monitor_it"
WINDOW = 500


@pytest.fixture(scope="module")
def months():
    """January's flights train the models; February's are scored and labelled live."""
    return load_completed((1, 1), limit=8000), load_completed((2, 2), limit=5000)


@pytest.fixture
def monitor_settings(kafka_bootstrap, tmp_path) -> MonitorSettings:
    """The flight use case's topics under a prefix of this test, created by the loop's own code (the shadow
    predictions topic with them), MLflow on SQLite, and the monitor's settings on them."""
    prefix = f"monitor-{uuid.uuid4().hex[:8]}."
    ensure_topics(LoopSettings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix), [get("flight_delay")],
                  timeout=30)
    return MonitorSettings(
        use_case="flight_delay", model_name=MODEL, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix,
        mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", mlflow_artifact_root=tmp_path / "artifacts",
        loop_data_dir=tmp_path / "data", model_signing_key=SecretStr(SIGNER.private_pem().decode()),
        model_trusted_keys_dir=trust(tmp_path / "trusted", SIGNER), epochs=4, min_training_rows=500,
        monitor_window_events=WINDOW, monitor_shadow_window_events=WINDOW, monitor_rollback_margin=0.05,
        monitor_retrain_margin=0.5, monitor_drift_threshold=5.0, monitor_start="latest", monitor_http_port=0)


def snapshot_january(settings: MonitorSettings, scorer_settings: ScorerSettings, rows):
    """January's flights on the labels topic, snapshotted: the training data the versions' lineage names (the
    monitor's drift reference). Returns the manifest and the rows as the snapshot holds them."""
    from ml.snapshot import load_snapshots, take_snapshot
    from use_cases.flight_delay.contracts import FlightCompleted

    stream = build_stream(LoopSettings(), rows)
    topic = settings.topic("flights.completed")
    produce(scorer_settings, topic, [(k.encode(), v) for t, k, v in zip(stream.topics, stream.keys, stream.values,
                                                                        strict=True) if t == "flights.completed"])
    manifest = take_snapshot(settings, topic, FlightCompleted, snapshot_id="january")
    return manifest, load_snapshots(settings, topic, FlightCompleted, ["january"])[0]


@pytest.fixture(scope="module")
def trained(months) -> dict:
    """Flight models trained once on January by the use case's own training: "good" (seed 42), "bad" (labels
    shuffled: a bad-but-valid model), "good2" (seed 7); with January's last 2,000 flights to judge them."""
    from use_cases.flight_delay.use_case import FlightDelay

    rows = months[0]
    shuffled = rows.assign(delayed=np.random.default_rng(0).permutation(rows["delayed"].to_numpy()))
    train = LoopSettings(epochs=4, min_training_rows=500)
    uc = FlightDelay()
    return {"good": uc.train(rows, train), "bad": uc.train(shuffled, train),
            "good2": uc.train(rows, train.model_copy(update={"seed": 7})), "holdout": rows.tail(2000)}


def register(settings: LoopSettings, manifest, trained: dict, name: str) -> int:
    """Judge the ``trained`` model ``name`` on the holdout (the bad one force-promoted: the gate records that it
    refused it), log it with its lineage in MLflow and register it; returns its version."""
    from use_cases.flight_delay.use_case import FlightDelay

    uc, result = FlightDelay(), trained[name]
    metrics = uc.evaluate(result.model, result.preprocessing, trained["holdout"])
    decision = decide(uc.name, uc.gate, metrics, None,
                      force_reason="scripted bad model" if name == "bad" else None)
    registry = Registry(settings)
    with registry.start_run(f"it-{name}-{uuid.uuid4().hex[:6]}") as run_id:
        registry.log_decision(run_id, decision)
        registry.log_lineage(run_id, [manifest])
        registry.log_metrics(run_id, {f"holdout_{k}": v for k, v in metrics.items()})
        model_uri = registry.log_model(run_id, result.model, result.preprocessing.to_dict())
    return registry.register(run_id, model_uri)


def decision_log(s: MonitorSettings, *actions: str) -> list[dict]:
    """The decision log once it records ``actions`` (other than retraining requests) in that order: a decision is
    written once it has been acted on, which the scorer may show first."""
    def read() -> list[dict] | None:
        logged = [json.loads(line) for line in s.decision_log.read_text().splitlines()] \
            if s.decision_log.exists() else []
        return logged if [d["action"] for d in logged if d["action"] != "retrain"] == list(actions) else None
    return wait_for(read, 30, f"decisions {actions} in the log")


def publish_shadow(settings: LoopSettings, version: int) -> None:
    """Publish the registered ``version`` in shadow, as a DAG run with the Param ``shadow`` does."""
    registry = Registry(settings)
    run_id = registry.client().get_model_version(registry.name, str(version)).run_id
    decision = registry.decision(run_id)
    publish(settings, version_envelope(settings, registry, version, run_id, decision["challenger"],
                                       decision["decision_id"], stage="shadow"))
    registry.mark_shadow(version)


def scorer_settings_for(s: MonitorSettings, mode: str = "at_least_once") -> ScorerSettings:
    return ScorerSettings(
        use_case="flight_delay", kafka_bootstrap_servers=s.kafka_bootstrap_servers, topic_prefix=s.topic_prefix,
        group_id=f"scorer-{uuid.uuid4().hex[:8]}", model_name=MODEL, batch_size=200, batch_max_wait_ms=50,
        http_port=0, model_trusted_keys_dir=s.model_trusted_keys_dir, session_timeout_ms=6000, delivery_mode=mode)


def flights_of(rows) -> tuple[list, list]:
    """(scheduled, completed) records of ``rows`` as the replay writes them."""
    stream = build_stream(LoopSettings(), rows)
    pairs = list(zip(stream.topics, stream.keys, stream.values, strict=True))
    return ([(k.encode(), v) for t, k, v in pairs if t == "flights.scheduled"],
            [(k.encode(), v) for t, k, v in pairs if t == "flights.completed"])


class Background:
    """The monitor on a thread of this process."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor, self.error = monitor, None
        self.thread = threading.Thread(target=self._run, name="monitor-under-test")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.monitor.run()
        except BaseException as e:
            self.error = e

    def stop(self) -> None:
        self.monitor.stop()
        self.thread.join(30)
        assert self.error is None, self.error


def test_a_bad_version_is_rolled_back_by_the_monitor_and_its_live_metrics_are_recorded(
        monitor_settings, months, trained, tmp_path, browser):
    s = monitor_settings
    train_rows, live_rows = months
    scorer_settings = scorer_settings_for(s)
    manifest, _ = snapshot_january(s, scorer_settings, train_rows)
    good, bad = register(s, manifest, trained, "good"), register(s, manifest, trained, "bad")
    assert (good, bad) == (1, 2)
    registry = Registry(s)
    republish_step(s, good)
    scorer = Running(scorer_settings)
    monitor = Background(Monitor(s))
    try:
        wait_for(lambda: scorer.metric("scorer_model_version", {"model_name": MODEL}) == good, 120, "v1 live")
        scheduled, completed = flights_of(live_rows)
        n1 = 2 * WINDOW + 100
        produce(scorer_settings, s.topic("flights.scheduled"), scheduled[:n1])
        produce(scorer_settings, s.topic("flights.completed"), completed[:n1])
        wait_for(lambda: len(monitor.monitor._live.get(good, [])) >= 2, 120, "two live windows of v1")

        republish_step(s, bad)
        wait_for(lambda: scorer.metric("scorer_model_version", {"model_name": MODEL}) == bad, 120, "v2 live")
        bad_live = time.monotonic()
        # Labels follow their flights, as they would a few hours later; the monitor sees v2's predictions meet them.
        rest = len(scheduled) - n1
        feeder = threading.Thread(target=lambda: [
            (produce(scorer_settings, s.topic("flights.scheduled"), scheduled[i:i + 250]),
             produce(scorer_settings, s.topic("flights.completed"), completed[i:i + 250]), time.sleep(0.2))
            for i in range(n1, n1 + rest, 250)])
        feeder.start()
        decision = wait_for(lambda: next((d for d in monitor.monitor.decisions if d.action == "rollback"), None), 180,
                            "the rollback decision")
        detected = time.monotonic()
        wait_for(lambda: scorer.metric("scorer_model_version", {"model_name": MODEL}) == good, 120, "v1 live again")
        restored = time.monotonic()
        feeder.join()
        fed = time.monotonic()
        wait_for(lambda: monitor.monitor.labels_read >= len(completed), 60, "every label read by the monitor")
        label_lag_s = time.monotonic() - fed

        assert decision.model_version == bad and decision.target_version == good
        assert decision.value < decision.reference - 0.05, decision
        assert decision.events == WINDOW
        logged = decision_log(s, "rollback")
        # (January's training data against February's flights may also have drifted enough to ask for a
        # retraining, which without an Airflow API is recorded only.)
        assert [(d["action"], d["model_version"], d["target_version"]) for d in logged
                if d["action"] != "retrain"] == [("rollback", bad, good)]
        assert all("not started" in d["done"] for d in logged if d["action"] == "retrain")
        assert decision.drift and all(v >= 0 for v in decision.drift.values())  # February against January
        assert next(d for d in logged if d["action"] == "rollback")["done"].startswith(f"published v{good} again")
        client = registry.client()
        assert "monitor.rollback" in client.get_model_version(MODEL, str(bad)).tags
        assert int(client.get_model_version_by_alias(MODEL, "champion").version) == good
        good_run = client.get_model_version(MODEL, str(good)).run_id
        history = client.get_metric_history(good_run, "live_roc_auc")
        assert [h.step for h in history][:2] == [0, 1] and all(0.5 < h.value < 1 for h in history)
        assert client.get_metric_history(client.get_model_version(MODEL, str(bad)).run_id, "live_roc_auc")
        assert client.get_metric_history(good_run, "live_psi_distance")
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor.monitor.http_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert f'monitor_live_metric{{metric="roc_auc",stage="champion",use_case="flight_delay",version="{bad}"}}' \
            in text
        assert 'monitor_feature_psi{feature="distance"' in text
        assert 'monitor_decisions_total{action="rollback",use_case="flight_delay"}' in text
        series = {v.version: v for v in read_series(registry, "roc_auc")}
        assert [a for _, a, _ in series[bad].decisions] == ["rollback"] and len(series[good].champion) >= 2
        figure = svg(list(series.values()), "roc_auc")
        (tmp_path / "live.html").write_text(f"<!doctype html><html><body>{figure}</body></html>")
        shown = browser((tmp_path / "live.html").as_uri(), "monitor-live-metric.png", wait_for="svg polyline")
        assert "v1" in shown and "v2 rolled back" in shown
        # The scorer's status topic shows the round trip: v1, v2, v1 again.
        status = read(scorer_settings, scorer_settings.status_topic, 3, timeout=30, settle=0.5)
        assert [r["model_version"] for r in status if r["status"] == "live"] == [good, bad, good]
        _report(detect_events=decision.events, detect_s=round(detected - bad_live, 2),
                restore_s=round(restored - bad_live, 2), label_lag_s=round(label_lag_s, 3), live_bad=decision.value,
                previous=decision.reference)
    finally:
        monitor.stop()
        scorer.stop()


def _report(**figures) -> None:
    path = os.environ.get("ROLLBACK_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"rolled_back": True, **figures}) + "\n")


def test_a_shadow_worse_on_the_same_events_is_retired_and_one_as_good_is_promoted(monitor_settings, months, trained):
    s = monitor_settings.model_copy(update={"monitor_shadow_margin": 0.05})
    train_rows, live_rows = months
    scorer_settings = scorer_settings_for(s, "exactly_once")
    manifest, _ = snapshot_january(s, scorer_settings, train_rows)
    good, bad, good2 = (register(s, manifest, trained, name) for name in ("good", "bad", "good2"))
    republish_step(s, good)
    publish_shadow(s, bad)
    scorer = Running(scorer_settings)
    monitor = Background(Monitor(s))
    try:
        wait_for(lambda: scorer.metric("scorer_model_version", {"model_name": MODEL}) == good, 120, "v1 live")
        wait_for(lambda: scorer.metric("scorer_shadow_model_version", {"model_name": MODEL}) == bad, 60,
                 "v2 in shadow")
        scheduled, completed = flights_of(live_rows)
        sent = 0

        def stream_until(what: str, done) -> None:
            nonlocal sent
            deadline = time.monotonic() + 180
            while not done():
                assert sent < len(scheduled) and time.monotonic() < deadline, f"no {what} after {sent} flights"
                produce(scorer_settings, s.topic("flights.scheduled"), scheduled[sent:sent + 250])
                produce(scorer_settings, s.topic("flights.completed"), completed[sent:sent + 250])
                sent += 250
                time.sleep(0.3)

        def decided(action: str, version: int):
            return lambda: any(d.action == action and d.model_version == version for d in monitor.monitor.decisions)

        stream_until("verdict on the shuffled shadow", decided("retire_shadow", bad))
        wait_for(lambda: scorer.metric("scorer_shadow_model_version", {"model_name": MODEL}) == 0, 60,
                 "the shadow retired on the scorer")
        assert scorer.metric("scorer_model_version", {"model_name": MODEL}) == good  # the champion untouched
        publish_shadow(s, good2)
        wait_for(lambda: scorer.metric("scorer_shadow_model_version", {"model_name": MODEL}) == good2, 60,
                 "v3 in shadow")
        stream_until("verdict on the good shadow", decided("promote_shadow", good2))
        wait_for(lambda: scorer.metric("scorer_model_version", {"model_name": MODEL}) == good2, 60, "v3 live")

        retired, promoted = (next(d for d in monitor.monitor.decisions if d.action == a)
                             for a in ("retire_shadow", "promote_shadow"))
        assert retired.value < retired.reference - 0.05 and retired.events == WINDOW
        assert promoted.value >= promoted.reference - 0.05 and promoted.events == WINDOW
        logged = decision_log(s, "retire_shadow", "promote_shadow")
        assert [(d["action"], d["model_version"]) for d in logged if d["action"] != "retrain"] == [
            ("retire_shadow", bad), ("promote_shadow", good2)]
        client = Registry(s).client()
        assert "monitor.retire_shadow" in client.get_model_version(MODEL, str(bad)).tags
        assert int(client.get_model_version_by_alias(MODEL, "champion").version) == good2
        assert client.get_metric_history(client.get_model_version(MODEL, str(bad)).run_id, "shadow_live_roc_auc")
        status = read(scorer_settings, scorer_settings.status_topic, 6, timeout=30, settle=0.5)
        assert [(r["status"], r["model_version"]) for r in status if r["status"] != "rejected"][:5] == [
            ("live", good), ("shadow", bad), ("retired", bad), ("shadow", good2), ("live", good2)]
        shadowed = read(scorer_settings, s.topic("flights.predictions") + ".shadow", 2 * WINDOW, timeout=30)
        assert {p["model_version"] for p in shadowed} == {bad, good2}
    finally:
        monitor.stop()
        scorer.stop()
