"""The retraining DAG run by ``dag.test()`` against the real broker and MLflow on SQLite, and its Kafka
AssetWatcher trigger against real messages.

There is no scorer process here: a stand-in thread plays the scorer's part on the status topic (it verifies
each envelope on the model topic and reports it live, in the scorer's record format) and records what it
took live, so verify_rollout waits on real Kafka records. The timeout and rejection paths of the rollout
check are covered in test_rollout.py without Airflow.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from infra.airflow.local import AirflowConfig, airflow_env
from ml import new_records, pipeline, snapshot
from ml.airflow_tasks import TASKS as TASK_IDS
from ml.errors import AlreadySnapshotted
from ml.publish import verify_envelope
from ml.registry import Registry
from ml.settings import LoopSettings
from ml.wire import Framing, TopicReader
from use_cases.flight_delay.replay import replay_frame
from use_cases.flight_delay.source import load_completed
from use_cases.sensor_anomaly.generator import generate, replay_readings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "retrain_flight_delay"
TASKS = list(TASK_IDS)


@pytest.fixture(scope="module")
def airflow_home(kafka_bootstrap):
    """A migrated Airflow metadata DB in this process's AIRFLOW_HOME, set before Airflow is first imported here
    (``tests/conftest.py``: its configuration is read once, at import)."""
    home = Path(os.environ["AIRFLOW_HOME"])
    if "airflow.configuration" in sys.modules and sys.modules["airflow.configuration"].AIRFLOW_HOME != str(home):
        pytest.skip("Airflow was imported with another AIRFLOW_HOME before this module configured it")
    # No retries: a failing task fails the test at once instead of after two retry delays.
    env = {**airflow_env(AirflowConfig(home=home, kafka_bootstrap_servers=kafka_bootstrap)),
           "RETRAIN_TASK_RETRIES": "0"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True,
                       capture_output=True)
        yield home


@pytest.fixture(scope="module")
def dag_bag(airflow_home):
    from airflow.dag_processing.dagbag import DagBag

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
    assert bag.import_errors == {}
    assert [str(w.message) for w in caught] == []
    return bag


@pytest.fixture(scope="module")
def dag(dag_bag):
    return dag_bag.get_dag(DAG_ID)


@pytest.fixture(scope="module")
def flights():
    return load_completed((1, 1), limit=16_000)


@pytest.fixture
def settings(airflow_home, kafka_bootstrap, tmp_path, new_topic, monkeypatch, signing_keys) -> LoopSettings:
    """Unique topics and a SQLite MLflow in tmp_path, handed to the task processes through the environment."""
    u = uuid.uuid4().hex[:8]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "LOOP_DATA_DIR": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "AIRFLOW_VAR_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "TOPIC_PREFIX": f"t{u}.", "TOPIC_NAMES": f'{{"models.status": "{new_topic("status")}"}}',
        "MIN_TRAINING_ROWS": "500", "EPOCHS": "3", "HOLDOUT_DAYS": "3",
        "FLIGHT_DELAY_GATE_FLOORS": '{"roc_auc": 0.5}', **signing_keys.env,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return LoopSettings(use_case="flight_delay")


class ScorerStandIn(threading.Thread):
    """Takes every verified envelope on the model topic live and reports it as the scorer does."""

    def __init__(self, settings: LoopSettings) -> None:
        super().__init__(daemon=True)
        self.settings, self.live, self.stop = settings, [], threading.Event()

    def run(self) -> None:
        s = self.settings
        consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers, "group.id": "stand-in",
                             "enable.auto.commit": False})
        producer = Producer({"bootstrap.servers": s.kafka_bootstrap_servers})
        envelopes, framing = TopicReader(s, s.models_topic), Framing(s)
        consumer.assign([TopicPartition(s.models_topic, 0, OFFSET_BEGINNING)])
        try:
            while not self.stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                envelope = verify_envelope(envelopes.payload(msg.value()), s.trust_store().read())
                status = framing.frame(s.status_topic, orjson.dumps({
                    "schema_version": 1, "status": "live", "model_name": envelope.model_name,
                    "model_version": envelope.model_version, "reason_kind": "ok", "reason": "stand-in",
                    "scorer_id": "stand-in", "envelope_topic": msg.topic(), "envelope_partition": msg.partition(),
                    "envelope_offset": msg.offset(), "at": datetime.now(UTC).isoformat()}))
                producer.produce(s.status_topic, key=envelope.model_name.encode(), value=status)
                assert producer.flush(10) == 0
                self.live.append(envelope.model_version)
        finally:
            consumer.close()


@pytest.fixture
def scorer(settings):
    stand_in = ScorerStandIn(settings)
    yield stand_in
    stand_in.stop.set()
    stand_in.join(10)



def _states(dag_run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def _xcom(dag_run, task_id: str, key: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(XComModel.get_many(key=key, run_id=dag_run.run_id, dag_ids=dag_run.dag_id,
                                                 task_ids=task_id).with_only_columns(XComModel.value)).first()
    if row is None:
        return None
    try:  # the column holds JSON text or an already decoded value, depending on the database type
        return orjson.loads(row.value)
    except (orjson.JSONDecodeError, TypeError):
        return row.value


def test_dag_bag_imports_the_dag_with_no_errors_or_warnings(dag):
    assert [t.task_id for t in dag.tasks] == TASKS
    assert dag.max_active_runs == 1 and "every_n_flight_delay_records" in repr(dag.timetable)
    # The gate's margins are Params of the run form, one per criterion with a margin.
    assert {"gate_margin_roc_auc", "gate_margin_log_loss"} <= set(dag.params)


def test_dag_run_publishes_a_live_model_and_a_rerun_publishes_nothing(high_watermark, dag, settings, scorer,
                                                                       flights):
    replay_frame(settings, flights.iloc[:10_000])
    scorer.start()
    when = datetime.now(UTC)  # after the DAG's start_date, or the run would hold no task instances

    run = dag.test(logical_date=when, run_after=when, run_conf={"rollout_timeout_s": 120, "gate_margin_roc_auc": 0.05})
    assert _states(run) == dict.fromkeys(TASKS, "success")
    assert run.state == "success"
    # The run's margin from the form, the floor from the environment, the rest the use case's defaults.
    criteria = {c["metric"]: (c["floor"], c["margin"]) for c in _xcom(run, "evaluate", "return_value")["criteria"]}
    assert criteria == {"roc_auc": (0.5, 0.05), "log_loss": (0.69, 0.02)}
    registry = Registry(settings)
    champion = registry.champion()
    assert champion.version == 1 and scorer.live == [1]
    assert high_watermark(settings.models_topic) == 1
    # One MLflow run tagged with the Airflow run id: the loop run id is the Airflow run id.
    assert registry.find_run("loop_run_id", run.run_id) == champion.run_id
    assert _xcom(run, "verify_rollout", "return_value")["model_version"] == 1
    assert _xcom(run, "train", "mlflow_run_url").endswith(f"/runs/{champion.run_id}")
    assert _xcom(run, "validate", "data_docs_url").startswith("/retrain-loop/data-docs/")

    # The same run again (same run id, every task re-executed, as after clearing it): nothing new.
    rerun = dag.test(logical_date=when, run_after=when, run_conf={"rollout_timeout_s": 120})
    assert rerun.run_id == run.run_id and rerun.state == "success"
    assert _xcom(rerun, "publish", "return_value")["published"] is False
    assert high_watermark(settings.models_topic) == 1
    assert len(snapshot.list_manifests(settings, settings.topic("flights.completed"))) == 1
    assert registry.champion().version == 1
    assert len(registry.client().search_runs([registry.experiment_id])) == 1


def test_corrupted_snapshot_stops_at_validation_with_publish_skipped(high_watermark, dag, settings, flights):
    replay_frame(settings, flights.iloc[:10_000])
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for i in range(300):  # 2.3% records with an unknown schema id: above the 1% the suite allows
        producer.produce(settings.topic("flights.completed"), key=f"bad-{i}".encode(), value=b"\x00not json")
    assert producer.flush(30) == 0

    run = dag.test(logical_date=datetime.now(UTC), run_conf={"rollout_timeout_s": 5})
    assert _states(run) == {"snapshot": "success", **dict.fromkeys(TASKS[1:], "skipped")}
    assert _xcom(run, "validate", "data_docs_url").endswith("/index.html")
    assert high_watermark(settings.models_topic) == 0
    assert Registry(settings).champion() is None


def test_a_lost_gate_skips_register_and_publish_with_the_decision_recorded(high_watermark, dag, settings, flights,
                                                                          monkeypatch):
    # No model of a few January days reaches this floor.
    monkeypatch.setenv("FLIGHT_DELAY_GATE_FLOORS", '{"roc_auc": 0.99}')
    replay_frame(settings, flights.iloc[:10_000])

    run = dag.test(logical_date=datetime.now(UTC), run_conf={"rollout_timeout_s": 5})
    assert run.state == "success"
    assert _states(run) == {**dict.fromkeys(TASKS[:4], "success"), **dict.fromkeys(TASKS[4:], "skipped")}
    decision = _xcom(run, "evaluate", "return_value")
    assert decision["verdict"] == "reject" and "below the floor 0.9900" in decision["reasons"][0]
    assert high_watermark(settings.models_topic) == 0
    assert Registry(settings).champion() is None


def test_force_promote_without_a_reason_fails_before_the_snapshot(dag, settings, flights):
    replay_frame(settings, flights.iloc[:2_000])

    run = dag.test(logical_date=datetime.now(UTC), run_conf={"force_promote": True})
    assert run.state == "failed"
    assert _states(run)["snapshot"] == "failed"
    assert snapshot.list_manifests(settings, settings.topic("flights.completed")) == []


def test_the_asset_watcher_counts_new_records_from_offsets_and_announces_each_range_once(dag, settings, flights):
    from ml.airflow_trigger import NewRecordsTrigger

    # The DAG's own trigger as the triggerer rebuilds it, with a smaller N and a fast poll.
    (watcher,) = dag.timetable.asset_condition.watchers
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath == "ml.airflow_trigger.NewRecordsTrigger" and kwargs["use_case"] == "flight_delay"
    kwargs = {**kwargs, "min_records": 1000, "poll_interval_s": 0.2}
    topic = settings.topic("flights.completed")

    def event(within: float = 20.0) -> dict | None:
        async def first():
            return (await anext(NewRecordsTrigger(**kwargs).run())).payload
        try:
            return asyncio.run(asyncio.wait_for(first(), within))
        except TimeoutError:
            return None

    replay_frame(settings, flights.iloc[:900])
    assert event(within=2) is None  # 900 new records: fewer than N
    replay_frame(settings, flights.iloc[900:1500])
    announced = event()
    assert announced["records"] == 1500 and announced["topic"] == topic
    assert sum(end - start for start, end in announced["ranges"].values()) == 1500
    # Announced and not yet snapshotted: a restarted trigger does not announce it again, even with more records.
    replay_frame(settings, flights.iloc[1500:2600])
    assert event(within=2) is None

    announcement = new_records.Announcement.model_validate(announced)
    manifest = pipeline.snapshot_step(settings, "run-1", announcement)
    assert manifest.triggered_by == announced["announcement_id"] and manifest.row_count == 2600
    assert pipeline.snapshot_step(settings, "run-1", announcement) == manifest  # a retry of the task
    with pytest.raises(AlreadySnapshotted):  # another run started by the same event finds its records read
        pipeline.snapshot_step(settings, "run-2", announcement)
    assert event(within=2) is None  # everything is in a snapshot: nothing to announce
    replay_frame(settings, flights.iloc[2600:3700])
    again = event()
    assert again["records"] == 1100 and again["announcement_id"] != announced["announcement_id"]
    assert all(start == manifest.end_offsets[int(p)] for p, (start, _) in again["ranges"].items())


def test_the_sensor_dag_runs_the_same_tasks_for_its_own_use_case(high_watermark, dag_bag, settings, scorer,
                                                                  monkeypatch):
    sensor_dag = dag_bag.get_dag("retrain_sensor_anomaly")
    assert [t.task_id for t in sensor_dag.tasks] == TASKS
    # The environment is the flight DAG's (USE_CASE unset): the DAG itself selects the sensor use case.
    for k, v in {"HOLDOUT_DAYS": "0.25", "EPOCHS": "15"}.items():
        monkeypatch.setenv(k, v)
    sensors = LoopSettings(use_case="sensor_anomaly")
    readings_topic = sensors.topic("sensors.readings")
    replay_readings(sensors, generate(4, 2000, seed=1, anomaly_rate=0.08))
    scorer.start()
    when = datetime.now(UTC)

    run = sensor_dag.test(logical_date=when, run_after=when, run_conf={"rollout_timeout_s": 120})
    assert _states(run) == dict.fromkeys(TASKS, "success")
    registry = Registry(sensors)
    champion = registry.champion()
    assert (champion.version, champion.preprocessing["use_case"]) == (1, "sensor_anomaly")
    assert registry.find_run("loop_run_id", run.run_id) == champion.run_id
    assert _xcom(run, "verify_rollout", "return_value")["model_name"] == "sensor_anomaly"
    assert scorer.live == [1] and high_watermark(settings.models_topic) == 1
    (manifest,) = snapshot.list_manifests(sensors, readings_topic)
    assert manifest.row_count == 8000
    # Nothing of the flight use case was touched.
    assert Registry(settings).champion() is None
    assert snapshot.list_manifests(settings, settings.topic("flights.completed")) == []
