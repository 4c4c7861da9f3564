"""A shortened demo end to end: two months of a few thousand flights through the real broker, a local MLflow
server, standalone Airflow (one REST-triggered DAG run per month) and the scorer; then the report's numbers
are checked against what the topics hold, and nothing the demo started may still run."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from sklearn.metrics import roc_auc_score

from infra.demo import report, run as demo_run
from infra.kafka.broker import free_port
from ml.publish import read_envelopes
from ml.settings import LoopSettings
from ml.wire import TopicReader

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEPT_LOGS = Path(__file__).resolve().parents[2] / ".local" / "test-logs"


def read_values(bootstrap: str, topic: str) -> list[dict]:
    """Every committed record of ``topic``, decoded as JSON (an independent reader, not the live metrics code)."""
    reader = TopicReader(LoopSettings(), topic)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex[:8]}",
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out, left = [], {p for p, end in ends.items() if end > 0}
        while left:
            m = c.poll(10)
            assert m is not None, f"{topic}: stalled before the end offsets {ends}"
            if m.error() is None:
                out.append(reader.loads(m.value()))
            if m.offset() + 1 >= ends[m.partition()] or m.error() is not None:
                left.discard(m.partition())
        return out
    finally:
        c.close()


def processes_using(path: Path) -> list[int]:
    """Pids of our processes whose command line or environment mentions ``path``."""
    needle, found = str(path).encode(), []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if needle in (proc / "cmdline").read_bytes() or needle in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:  # gone, or not ours
                continue
    return found


@pytest.fixture
def demo_env(kafka_bootstrap, monkeypatch, signing_keys):
    u = uuid.uuid4().hex[:8]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TOPIC_PREFIX": f"t{u}.", "MIN_TRAINING_ROWS": "500", "EPOCHS": "3", "HOLDOUT_DAYS": "2",
        "FLIGHT_DELAY_GATE_FLOORS": '{"roc_auc": 0.5}', **signing_keys.env,
        "RETRAIN_TASK_RETRIES": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return LoopSettings(use_case="flight_delay")


def test_a_two_month_demo_reports_what_the_topics_hold(demo_env, tmp_path):
    settings = demo_env
    # February: v1 (January's run) serves its head; then the scripted bad version, until the monitor rolls it
    # back to v1 after 300 of its predictions met their labels. February's run publishes in shadow.
    demo = demo_run.DemoSettings(months="1-2", limit=3000, rate=150, home=tmp_path / "demo",
                                 report_dir=tmp_path / "report", airflow_port=free_port(),
                                 mlflow_port=free_port(), scorer_port=free_port(), monitor_port=free_port(),
                                 monitor_window_events=300, shadow_months="2", bad_model_month=2)
    lines: list[str] = []
    summary = demo_run.run(demo, lines.append)

    # The figure kept for a look (live AUC, the monitor's windows and decisions, throughput).
    KEPT_LOGS.mkdir(parents=True, exist_ok=True)
    shutil.copy(demo.report_dir / report.FIGURE, KEPT_LOGS / "demo-report.png")
    # Nothing the demo started is left running.
    assert processes_using(demo.home) == [], lines
    assert {p.name for p in demo.report_dir.iterdir()} == {report.SUMMARY, report.FIGURE, report.PAGE}
    assert json.loads((demo.report_dir / report.SUMMARY).read_text()) == json.loads(json.dumps(summary, default=str))
    assert sum(line.startswith("DAG run demo-2013-") for line in lines) == 2, lines
    assert any(line.startswith("swap: ") for line in lines), lines

    # One successful DAG run per month; the first one published v1 (no champion to beat).
    assert [(r["month"], r["state"]) for r in summary["runs"]] == [(1, "success"), (2, "success")]
    assert summary["runs"][0]["verdict"] == "promote" and summary["runs"][0]["model_version"] == 1

    # The scripted bad version (v2) was rolled back to v1 by the monitor, once, on its live AUC.
    rollbacks = [d for d in summary["monitor"]["decisions"] if d["action"] == "rollback"]
    assert [(d["model_version"], d["target_version"]) for d in rollbacks] == [(2, 1)], summary["monitor"]
    assert rollbacks[0]["value"] < rollbacks[0]["reference"] and rollbacks[0]["done"].startswith("published v1")
    assert any(line.startswith("monitor: rollback v2") for line in lines), lines
    stages = [(r["status"], r["model_version"]) for r in summary["stages"]]
    assert stages[:3] == [("live", 1), ("live", 2), ("live", 1)], stages
    # February's run went live in shadow beside v1 (nothing streamed after it: no verdict yet).
    assert summary["runs"][1]["model_version"] == 3 and ("shadow", 3) in stages, stages
    assert summary["monitor"]["windows"]["1"]["champion"] >= 2 and summary["monitor"]["windows"]["2"]["champion"] >= 1

    # The report's numbers against the topics, read independently.
    preds = [p for p in read_values(settings.kafka_bootstrap_servers, settings.topic("flights.predictions"))]
    labels = {c["flight_id"]: c for c in read_values(settings.kafka_bootstrap_servers,
                                                     settings.topic("flights.completed"))}
    assert len(labels) == 6000 and summary["prediction_records"] == len(preds)
    first: dict[str, dict] = {}
    for p in sorted(preds, key=lambda p: p["scored_at"]):
        first.setdefault(p["flight_id"], p)
    published = {e.model_version for e in read_envelopes(settings)}
    for month in summary["months"]:
        mine = [p for fid, p in first.items() if labels[fid]["month"] == month["month"]]
        assert month["predictions"] == len(mine) == 3000
        assert month["model_versions"] == sorted({p["model_version"] for p in mine})
        assert set(month["model_versions"]) <= published
        y = [labels[p["flight_id"]]["delayed"] for p in mine]
        assert month["auc_loop"] == pytest.approx(roc_auc_score(y, [p["probability"] for p in mine]), abs=1e-4)
        assert 0.5 < month["auc_frozen"] < 1
    # January's backlog waited for v1, trained on January: in-sample, so not compared.
    assert summary["months"][0]["in_sample"] and summary["months"][0]["model_versions"] == [1]
    # February (its head streamed while v1 trained, the rest once v1 was live) was scored by v1, the version
    # trained on every earlier month, but for the bad version's one stretch; how long that stretch lasts depends on
    # how far the stream got while the monitor gathered its windows, so the share is checked against the topic.
    february = summary["months"][1]
    assert february["previous_month_version"] == 1 and set(february["share_by_version"]) == {"1", "2"}
    scored = [p["model_version"] for p in sorted((p for fid, p in first.items() if labels[fid]["month"] == 2),
                                                  key=lambda p: p["scored_at"])]
    stretches = [v for i, v in enumerate(scored) if i == 0 or v != scored[i - 1]]
    assert stretches in ([1, 2, 1], [2, 1]), stretches
    assert february["share_previous_month_version"] == pytest.approx(scored.count(1) / len(scored), abs=1e-4)
    assert 0 < february["share_previous_month_version"] < 1
    assert 0.5 < february["auc_tree"] < 1 and summary["months"][0]["auc_tree"] is None
    assert any(line.startswith("2013-02: streaming its first 300 events") for line in lines), lines
    assert [s["model_version"] for s in summary["swaps"]][0] == 1
    # A later version that scored anything (v2 goes live after the last month: it may score nothing) has a gap.
    scored = {int(v) for m in summary["months"] for v in m["share_by_version"]}
    assert all(s["gap_ms"] is not None for s in summary["swaps"][1:] if s["model_version"] in scored)
