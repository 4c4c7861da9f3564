"""Retrain the flight-delay model from Kafka: snapshot -> validate -> train -> evaluate -> register -> publish
-> verify rollout. Wiring only: each task calls one function of ``ml.airflow_tasks``.

Triggers: a cron schedule (env ``RETRAIN_SCHEDULE``, default ``@daily``; ``none`` turns it off), manual runs
with the Params below, and every ``RETRAIN_EVERY_N_FLIGHTS`` completed flights per partition of
flights.completed (a Kafka AssetWatcher; 0 turns it off). Kafka comes from the ``kafka_default`` connection,
MLflow from the Variables ``mlflow_tracking_uri`` / ``mlflow_ui_url``; unset, the loop's env defaults apply.
The Airflow run id is the loop run id, so a retried task (``RETRAIN_TASK_RETRIES``, default 2) reuses its
snapshot, MLflow run and version.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.apache.kafka.triggers.await_message import AwaitMessageTrigger
from airflow.sdk import (Asset, AssetOrTimeSchedule, AssetWatcher, Connection, CronTriggerTimetable, Param,
                         Variable, dag, get_current_context, task)
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException, AirflowSkipException
from pydantic import ValidationError

from ml import airflow_tasks as steps
from ml.settings import LoopSettings

KAFKA_CONN_ID = "kafka_default"
SCHEDULE = os.environ.get("RETRAIN_SCHEDULE", "@daily")
EVERY_N_FLIGHTS = int(os.environ.get("RETRAIN_EVERY_N_FLIGHTS", "5000"))
RETRIES = int(os.environ.get("RETRAIN_TASK_RETRIES", "2"))

_loop = LoopSettings()  # env only at parse time: topic names and the broker naming the asset
completed_flights = Asset(
    "kafka_flights_completed",
    uri=f"kafka://{_loop.kafka_bootstrap_servers.split(',')[0]}/{_loop.topic_flights_completed}",
    # poll_interval 0: the trigger sleeps that long after every non-matching record, not only when idle.
    watchers=[AssetWatcher(name="every_n_completed_flights", trigger=AwaitMessageTrigger(
        topics=[_loop.topic_flights_completed], kafka_config_id=KAFKA_CONN_ID, poll_interval=0,
        apply_function="ml.airflow_tasks.every_n_flights", apply_function_kwargs={"every": EVERY_N_FLIGHTS}))]
    if EVERY_N_FLIGHTS > 0 else [],
)
cron = None if SCHEDULE.lower() == "none" else CronTriggerTimetable(SCHEDULE, timezone="UTC")
if cron and EVERY_N_FLIGHTS > 0:
    schedule = AssetOrTimeSchedule(timetable=cron, assets=completed_flights)
else:
    schedule = cron or (completed_flights if EVERY_N_FLIGHTS > 0 else None)


def _settings() -> LoopSettings:
    """This run's settings: env defaults, the Airflow connection/Variable, then the run's Params."""
    try:
        kafka_extra = Connection.get(KAFKA_CONN_ID).extra_dejson
    except AirflowNotFoundException:
        kafka_extra = None
    try:
        return steps.settings_for_run(get_current_context()["params"], kafka_extra=kafka_extra,
                                      mlflow_tracking_uri=Variable.get("mlflow_tracking_uri", default=None))
    except ValidationError as e:  # a bad request does not get better with retries
        raise AirflowFailException(f"invalid run parameters: {e}") from e


def _run(fn, *args, **kwargs) -> dict:
    """Call one task function; StopRun becomes a skip carrying its reason, links become XComs."""
    ti = get_current_context()["ti"]
    try:
        out = fn(*args, **kwargs)
    except steps.StopRun as e:
        for key, url in e.links.items():
            ti.xcom_push(key=key, value=url)
        raise AirflowSkipException(str(e)) from e
    for key, url in out.pop("links", {}).items():  # the return value stays a plain model dump
        ti.xcom_push(key=key, value=url)
    return out


def _request() -> steps.RunRequest:
    return steps.RunRequest.model_validate(get_current_context()["params"])


def _mlflow_ui() -> str:
    return Variable.get("mlflow_ui_url", default="http://localhost:5000")


@dag(
    dag_id="retrain_flight_delay",
    schedule=schedule,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # snapshots of one topic follow each other: runs must not overlap
    default_args={"retries": RETRIES, "retry_delay": timedelta(seconds=30)},
    tags=["ml", "kafka", "retraining"],
    doc_md=__doc__,
    params={
        "snapshot_window": Param(None, type=["null", "integer"], minimum=1, maximum=120,
                                 description="Training window in snapshots (empty: SNAPSHOT_WINDOW, 12)."),
        "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=200,
                        description="Maximum epochs (early stopping may end sooner; empty: EPOCHS)."),
        "gate_auc_margin": Param(None, type=["null", "number"], minimum=0, maximum=0.5,
                                 description="How much lower than the champion's AUC the challenger may be."),
        "force_promote": Param(False, type="boolean",
                               description="Skip the champion comparison (never the floors). Needs a reason."),
        "force_reason": Param(None, type=["null", "string"], maxLength=500,
                              description="Required when force_promote is on: recorded in the gate decision."),
        "rollout_timeout_s": Param(600, type="number", minimum=0, maximum=3600,
                                   description="Wait this long for a scorer to run the new version (0: skip)."),
    },
)
def retrain_flight_delay():
    @task
    def snapshot() -> dict:
        return _run(steps.snapshot, _settings(), get_current_context()["run_id"])

    @task
    def validate(manifest: dict) -> dict:
        return _run(steps.validate, _settings(), get_current_context()["run_id"], manifest)

    @task
    def train() -> dict:
        return _run(steps.train, _settings(), get_current_context()["run_id"], mlflow_ui_url=_mlflow_ui())

    @task
    def evaluate(candidate: dict) -> dict:
        return _run(steps.evaluate, _settings(), candidate, force_reason=_request().forced_reason(),
                    mlflow_ui_url=_mlflow_ui())

    @task
    def register(candidate: dict, decision: dict) -> dict:
        return _run(steps.register, _settings(), candidate, decision)

    @task
    def publish(candidate: dict, decision: dict, registered: dict) -> dict:
        return _run(steps.publish, _settings(), candidate, decision, registered)

    @task(retries=0)  # the timeout is the wait: retrying would only wait again
    def verify_rollout(published: dict) -> dict:
        return _run(steps.verify_rollout, _settings(), published, _request().rollout_timeout_s)

    validated = validate(snapshot())
    candidate = train()
    validated >> candidate
    decision = evaluate(candidate)
    registered = register(candidate, decision)
    verify_rollout(publish(candidate, decision, registered))


retrain_flight_delay()
