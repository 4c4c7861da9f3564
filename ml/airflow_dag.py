"""The retraining DAG of a use case, built the same way for every registered one (``dags/retrain.py`` builds
one ``retrain_<name>`` per use case; only that file imports this module).

snapshot -> validate -> train -> evaluate -> register -> publish -> verify rollout, each task calling one function
of ``ml.airflow_tasks`` with the settings of the DAG's use case. Triggers: the use case's cron schedule
(``<NAME>_RETRAIN_SCHEDULE``), manual runs with Params (one ``gate_margin_<metric>`` per criterion of its gate that
has a margin; ``shadow``: publish in shadow, default ``SHADOW_FIRST``), and an AssetWatcher firing once
``<NAME>_RETRAIN_EVERY_N`` records of its labels topic are in no snapshot yet (``ml.airflow_trigger``: offsets
compared every ``<NAME>_RETRAIN_POLL_INTERVAL_S``). Kafka comes from the ``kafka_default`` connection, MLflow from
the Variables ``mlflow_tracking_uri`` / ``mlflow_ui_url``, the model signing key from the connection
``MODEL_SIGNING_CONN_ID`` (default ``model_signing``: password = the Ed25519 private key in PEM, extra ``{"key_id":
...}`` optional) if it exists; unset, the loop's env defaults apply. The Airflow run id is the loop run id, so a
retried task (``RETRAIN_TASK_RETRIES``, default 2, ``RETRAIN_TASK_RETRY_DELAY_S`` apart, default 30) reuses its
snapshot, MLflow run and version.
"""

from __future__ import annotations

import inspect
import logging
import os
from datetime import datetime, timedelta

from airflow.sdk import (DAG, Asset, AssetOrTimeSchedule, AssetWatcher, Connection, CronTriggerTimetable, Param,
                         Variable, dag, get_current_context, task)
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException, AirflowSkipException
from pydantic import ValidationError

from ml import airflow_tasks as steps, use_cases
from ml.airflow_trigger import NewRecordsTrigger
from ml.settings import LoopSettings
from ml.use_cases import UseCase

log = logging.getLogger(__name__)

KAFKA_CONN_ID = "kafka_default"

COMMON_PARAMS = {
    "snapshot_window": Param(None, type=["null", "integer"], minimum=1, maximum=120,
                             description="Training window in snapshots (empty: SNAPSHOT_WINDOW, 12)."),
    "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=200,
                    description="Maximum epochs (early stopping may end sooner; empty: EPOCHS)."),
    "force_promote": Param(False, type="boolean",
                           description="Skip the champion comparison (never the floors). Needs a reason."),
    "force_reason": Param(None, type=["null", "string"], maxLength=500,
                          description="Required when force_promote is on: recorded in the gate decision."),
    "rollout_timeout_s": Param(600, type="number", minimum=0, maximum=3600,
                               description="Wait this long for a scorer to run the new version (0: skip)."),
    "trigger": Param(None, type=["null", "string"], maxLength=2000,
                     description="Why this run started (the live monitor says which live metric or drift asked "
                                 "for it); recorded in the gate decision."),
}


def shadow_param(loop: LoopSettings) -> Param:
    """The Param that publishes a promoted candidate in shadow (its default: SHADOW_FIRST when the DAG is parsed)."""
    return Param(loop.shadow_first, type="boolean",
                 description="Publish the promoted candidate in shadow: the scorers score it beside the champion, "
                             "to the shadow predictions topic, until it is promoted or retired (default: "
                             "SHADOW_FIRST).")


def gate_params(uc: UseCase) -> dict[str, Param]:
    """One Param per criterion of the use case's gate that has a margin: this run's margin (empty: the
    use case's)."""
    return {steps.GATE_MARGIN_PARAM + c.metric: Param(
        None, type=["null", "number"], minimum=0,
        description=f"How much worse than the champion's {c.metric} the challenger's may be (empty: {c.margin}; "
                    f"{'higher' if c.higher_is_better else 'lower'} is better).")
        for c in uc.gate_criteria() if c.margin is not None}


def _schedule(asset: Asset, cron_spec: str, every_n: int):
    cron = None if cron_spec.lower() == "none" else CronTriggerTimetable(cron_spec, timezone="UTC")
    if cron and every_n > 0:
        return AssetOrTimeSchedule(timetable=cron, assets=asset)
    return cron or (asset if every_n > 0 else None)


def signing_connection(conn_id: str) -> tuple[str | None, str | None]:
    """The private key (PEM, the connection's password) and key id (its extra's ``key_id``) of the Airflow
    connection ``conn_id``; (None, None) when there is no such connection (the environment's key applies)."""
    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None, None
    return conn.password or None, (conn.extra_dejson or {}).get("key_id") or None


def retrain_dag(name: str) -> DAG:
    """The retraining DAG of the use case ``name``."""
    uc = use_cases.get(name)
    loop = LoopSettings(use_case=name)  # env only at parse time: the labels topic and the broker naming the asset
    topic = loop.topic(uc.topics.labels)
    every_n = uc.settings.retrain_every_n
    asset = Asset(
        f"kafka_{name}_labels", uri=f"kafka://{loop.kafka_bootstrap_servers.split(',')[0]}/{topic}",
        watchers=[AssetWatcher(name=f"every_n_{name}_records", trigger=NewRecordsTrigger(
            use_case=name, min_records=every_n, poll_interval_s=uc.settings.retrain_poll_interval_s,
            kafka_config_id=KAFKA_CONN_ID))]
        if every_n > 0 else [],
    )

    def settings() -> LoopSettings:
        """This run's settings: env defaults, the use case, the Airflow connection/Variable, the run's Params."""
        try:
            kafka_extra = Connection.get(KAFKA_CONN_ID).extra_dejson
        except AirflowNotFoundException:
            kafka_extra = None
        try:
            signing_pem, signing_key_id = signing_connection(loop.model_signing_conn_id)
            return steps.settings_for_run(request(), kafka_extra=kafka_extra,
                                          mlflow_tracking_uri=Variable.get("mlflow_tracking_uri", default=None),
                                          use_case=name, signing_pem=signing_pem, signing_key_id=signing_key_id)
        except ValidationError as e:  # a bad request does not get better with retries
            raise AirflowFailException(f"invalid run parameters: {e}") from e

    def run(fn, *args, **kwargs) -> dict:
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

    def request() -> steps.RunRequest:
        try:
            return steps.RunRequest.model_validate(get_current_context()["params"])
        except ValidationError as e:
            raise AirflowFailException(f"invalid run parameters: {e}") from e

    def mlflow_ui() -> str:
        return Variable.get("mlflow_ui_url", default="http://localhost:5000")

    @dag(
        dag_id=steps.dag_id(name),
        schedule=_schedule(asset, uc.settings.retrain_schedule, every_n),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # snapshots of one topic follow each other: runs must not overlap
        default_args={"retries": int(os.environ.get("RETRAIN_TASK_RETRIES", "2")),
                      "retry_delay": timedelta(seconds=float(os.environ.get("RETRAIN_TASK_RETRY_DELAY_S", "30")))},
        tags=["ml", "kafka", "retraining", name],
        doc_md=f"**{uc.title}**\n\n{inspect.getdoc(type(uc)) or ''}\n\n{__doc__}",
        params={**COMMON_PARAMS, "shadow": shadow_param(loop), **gate_params(uc)},
    )
    def retrain():
        @task
        def snapshot() -> dict:
            context = get_current_context()
            events = [e for evs in context["triggering_asset_events"].values() for e in evs]
            return run(steps.snapshot, settings(), context["run_id"], announced=steps.announced_by(events))

        @task
        def validate(manifest: dict) -> dict:
            return run(steps.validate, settings(), get_current_context()["run_id"], manifest)

        @task
        def train() -> dict:
            return run(steps.train, settings(), get_current_context()["run_id"], mlflow_ui_url=mlflow_ui())

        @task
        def evaluate(candidate: dict) -> dict:
            req = request()
            return run(steps.evaluate, settings(), candidate, force_reason=req.forced_reason(),
                       gate_margins=req.gate_margins, trigger=req.trigger, mlflow_ui_url=mlflow_ui())

        @task
        def register(candidate: dict, decision: dict) -> dict:
            return run(steps.register, settings(), candidate, decision)

        @task
        def publish(candidate: dict, decision: dict, registered: dict) -> dict:
            return run(steps.publish, settings(), candidate, decision, registered, shadow=request().shadow)

        @task(retries=0)  # the timeout is the wait: retrying would only wait again
        def verify_rollout(published: dict) -> dict:
            return run(steps.verify_rollout, settings(), published, request().rollout_timeout_s)

        validated = validate(snapshot())
        candidate = train()
        validated >> candidate
        decision = evaluate(candidate)
        registered = register(candidate, decision)
        verify_rollout(publish(candidate, decision, registered))

    return retrain()


def retrain_dags() -> dict[str, DAG]:
    """dag_id -> DAG of every registered use case. A use case whose package fails to load is logged and left
    out, so one broken package does not take the others' DAGs down."""
    dags = {}
    for name in use_cases.names():
        try:
            dags[steps.dag_id(name)] = retrain_dag(name)
        except Exception:  # noqa: BLE001 - any error of a third-party package; the log names it
            log.exception("no retraining DAG for use case %s: its package failed to load", name)
    return dags
