"""A use case that lives in its own package, outside the platform's (examples/arrival_delay_minutes: the arrival
delay in minutes, a regression gated on MAE), runs the whole loop with no edit to the shared code.

It is installed as another team's package would be (into a folder on the path, its entry point registering it),
then: its topics are created, its DAG ``retrain_arrival_delay_minutes`` appears in a real Airflow (standalone)
and runs snapshot -> validate -> train -> gate -> register -> publish -> verify rollout twice through the REST
API, a scorer serving it takes v1 live, then swaps to v2 while flights stream in (exactly one committed
prediction per input), and the loop's page lists its versions with its own metrics, seen in a real browser.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from infra.airflow import local
from infra.demo.airflow_api import AirflowApi
from infra.kafka.broker import free_port
from ml import use_cases
from ml.airflow_tasks import TASKS, dag_id
from ml.settings import LoopSettings
from ml.topics import ensure_topics
from ml.wire import TopicReader
from use_cases.flight_delay.replay import replay_frame
from use_cases.flight_delay.source import load_completed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "arrival_delay_minutes"
NAME = "arrival_delay_minutes"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example installed with pip into a folder of its own (no edit to the environment's packages)."""
    source = tmp_path_factory.mktemp("source") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True)
    return target


@pytest.fixture
def registered(site, monkeypatch):
    """The folder on this process's path and on every child's (Airflow, its tasks, the scorer)."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    assert NAME in use_cases.names()
    uc = use_cases.get(NAME)
    assert use_cases.problems(uc) == []
    return uc


def _committed_predictions(bootstrap: str, topic: str) -> list[dict]:
    """Every committed record of ``topic`` (read_committed), decoded."""
    reader = TopicReader(LoopSettings(), topic)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex[:8]}",
                  "isolation.level": "read_committed", "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out, done = [], set()
        while len(done) < len(parts):
            m = c.poll(10)
            assert m is not None, f"{topic}: no end of partition seen"
            if m.error() is None:
                out.append(reader.loads(m.value()))
            else:
                done.add(m.partition())
        return out
    finally:
        c.close()


def _scored_up_to_the_end(bootstrap: str, topic: str, group: str) -> bool:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        committed = c.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        ends = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts]
        return [max(tp.offset, 0) for tp in committed] == ends
    finally:
        c.close()


def test_a_use_case_package_runs_the_whole_loop_without_an_edit_to_the_platform(
        registered, kafka_bootstrap, tmp_path, browser, until, signing_keys):
    u = uuid.uuid4().hex[:8]
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    loop_env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_PREFIX": f"t{u}.", "LOOP_DATA_DIR": str(tmp_path / "data"),
        "AIRFLOW_VAR_MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "MIN_TRAINING_ROWS": "500", "EPOCHS": "4", "HOLDOUT_DAYS": "2", **signing_keys.env,
        "RETRAIN_TASK_RETRIES": "0",
        # A few days of January make a weak model: it only has to come near predicting the median here. The
        # variable is the use case's own (ARRIVAL_DELAY_MINUTES_*), read by its package in each task.
        "ARRIVAL_DELAY_MINUTES_GATE_FLOORS": '{"mae_skill": -0.2}',
        # Only the REST calls start runs: every DAG's schedule and Kafka watcher off.
        **{f"{name.upper()}_{knob}": off for name in use_cases.names()
           for knob, off in (("RETRAIN_SCHEDULE", "none"), ("RETRAIN_EVERY_N", "0"))},
    }
    settings = LoopSettings(use_case=NAME, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{u}.",
                            loop_data_dir=tmp_path / "data", mlflow_tracking_uri=mlflow_uri,
                            mlflow_artifact_root=tmp_path / "artifacts", **signing_keys.loop)
    topics = registered.topics.resolved(settings)
    created = ensure_topics(settings, [registered])
    assert created[topics.predictions] and created[topics.dlq]  # its own topics, beside the flights' it reads
    flights = load_completed((1, 1), limit=12_000)
    replay_frame(settings, flights.iloc[:8_000])

    group = f"adm-scorer-{u}"
    scorer_port = free_port()
    with open(tmp_path / "scorer.log", "wb") as scorer_log:
        scorer = subprocess.Popen(
            [sys.executable, "-m", "scoring_service"], cwd=REPO, stdout=scorer_log, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, **loop_env, "USE_CASE": NAME, "GROUP_ID": group,
                                         "HTTP_PORT": str(scorer_port), "DELIVERY_MODE": "exactly_once",
                                         "TF_CPP_MIN_LOG_LEVEL": "2"})
    cfg = local.AirflowConfig(home=tmp_path / "airflow", port=free_port(), kafka_bootstrap_servers=kafka_bootstrap)
    airflow = local.Airflow(cfg, loop_env=loop_env)
    airflow.start()
    streaming: threading.Thread | None = None
    try:
        api = AirflowApi(cfg, dag_id(NAME))
        api.wait_parsed_and_unpause()  # the DAG exists: built for the newly registered use case
        details = api.call("GET", f"/dags/{dag_id(NAME)}/details")[1]
        assert "gate_margin_mae" in details["params"]  # the run form's Param for its own metric

        first = api.trigger(f"adm-{u}-1", {"rollout_timeout_s": 300})
        run = api.wait_run(first, 900)
        assert (run["state"], api.task_states(first)) == ("success", dict.fromkeys(TASKS, "success")), (
            airflow.log_tail())

        # The next days, then more flights streaming in while the second run trains: the scorer swaps to v2 as
        # they are scored.
        replay_frame(settings, flights.iloc[8_000:10_000])
        streaming = threading.Thread(target=replay_frame, args=(settings, flights.iloc[10_000:11_500]),
                                     kwargs={"rate": 100.0})
        second = api.trigger(f"adm-{u}-2", {"rollout_timeout_s": 300, "gate_margin_mae": 15.0})
        streaming.start()
        run = api.wait_run(second, 900)
        assert (run["state"], api.task_states(second)) == ("success", dict.fromkeys(TASKS, "success")), (
            airflow.log_tail())
        streaming.join(120)
        replay_frame(settings, flights.iloc[11_500:])  # scored by v2 only

        until("the scorer to commit every input", lambda: _scored_up_to_the_end(
            kafka_bootstrap, topics.input, group), 180)
        predictions = _committed_predictions(kafka_bootstrap, topics.predictions)
        per_input = Counter((p["source_partition"], p["source_offset"]) for p in predictions)
        assert len(per_input) == len(flights) and set(per_input.values()) == {1}
        assert {p["model_name"] for p in predictions} == {NAME}
        assert {p["model_version"] for p in predictions} == {1, 2}
        for p in predictions[:100]:
            registered.prediction_contract.model_validate(p)

        # The loop's page lists its versions with its own metrics: as JSON, and as a user sees it.
        signed_in = {"Authorization": f"Bearer {local.token(cfg)}"}  # the plugin's pages take Airflow's login
        with urllib.request.urlopen(urllib.request.Request(f"{cfg.url}/retrain-loop/api/models?use_case={NAME}",
                                                           headers=signed_in), timeout=60) as r:
            rows = json.loads(r.read())
        assert [(row["model_version"], row["verdict"]) for row in rows] == [(2, "promote"), (1, "promote")]
        assert all({"mae", "rmse", "mae_skill"} <= set(row["metrics"]) for row in rows)
        text = browser(f"{cfg.url}/retrain-loop/", "use-case-package-loop-page.png", airflow_url=cfg.url,
                       login=(local.ADMIN_USER, local.admin_password(cfg)), wait_for=f"section#{NAME}")
        section = text[text.index(registered.title):]
        assert "mae_skill" in section and "v2" in section and "v1" in section and "promote" in section
    finally:
        if streaming is not None:
            streaming.join(120)
        os.killpg(scorer.pid, signal.SIGTERM)
        try:
            scorer.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(scorer.pid, signal.SIGKILL)
        airflow.stop()
