"""Retrain the flight-delay model from Kafka: snapshot -> validate -> train -> evaluate -> register -> publish
-> verify rollout. Wiring only: the Airflow DAG is ``plugins/retrain_dag.py`` with the ``flight_delay`` use case.

Triggers: a cron schedule (env ``RETRAIN_SCHEDULE``, default ``@daily``; ``none`` turns it off), manual runs
with the Params below, and every ``RETRAIN_EVERY_N_FLIGHTS`` completed flights per partition of
flights.completed (a Kafka AssetWatcher; 0 turns it off). Kafka comes from the ``kafka_default`` connection,
MLflow from the Variables ``mlflow_tracking_uri`` / ``mlflow_ui_url``; unset, the loop's env defaults apply.
The Airflow run id is the loop run id, so a retried task (``RETRAIN_TASK_RETRIES``, default 2) reuses its
snapshot, MLflow run and version.
"""

from __future__ import annotations

import os

from airflow.sdk import Param
from retrain_dag import retrain_dag

dag = retrain_dag(
    dag_id="retrain_flight_delay", use_case="flight_delay", asset_name="kafka_flights_completed",
    watcher_name="every_n_completed_flights", cron_spec=os.environ.get("RETRAIN_SCHEDULE", "@daily"),
    every_n=int(os.environ.get("RETRAIN_EVERY_N_FLIGHTS", "5000")), doc_md=__doc__,
    params={"gate_auc_margin": Param(None, type=["null", "number"], minimum=0, maximum=0.5,
                                     description="How much lower than the champion's AUC the challenger may be.")},
)
