"""Benchmark of one full run of the retraining DAG on a year of flights; the last stdout line is one JSON object.

Replays 2013 into Kafka, then runs ``retrain_flight_delay`` with ``dag.test()`` (Airflow in this process,
SQLite metadata DB in a temporary AIRFLOW_HOME, MLflow on SQLite) and reports the wall time of the run
(``dag_test_s``, including Airflow's fixed start-up cost), the seconds of each task from its task instance
(``tasks_s``) and its state. No scorer runs, so the run asks for no rollout wait (verify_rollout skipped).

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/dag_run.py

Uses $KAFKA_BOOTSTRAP_SERVERS if set, otherwise starts a local broker.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.replay_snapshot import bench_settings, kafka_cluster  # noqa: E402
from infra.airflow.local import REPO, AirflowConfig, airflow_env  # noqa: E402
from ml import use_cases  # noqa: E402
from ml.airflow_tasks import dag_id  # noqa: E402
from ml.settings import LoopSettings  # noqa: E402
from use_cases.flight_delay.replay import replay_frame  # noqa: E402
from use_cases.flight_delay.source import load_completed  # noqa: E402

DAG_ID = dag_id("flight_delay")


def loop_env(settings: LoopSettings) -> dict[str, str]:
    """The environment through which the task processes get these settings."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "LOOP_DATA_DIR": str(settings.loop_data_dir),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "AIRFLOW_VAR_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLFLOW_ARTIFACT_ROOT": str(settings.mlflow_artifact_root),
        "TOPIC_PREFIX": settings.topic_prefix, "RETRAIN_TASK_RETRIES": "0",
        **{f"{name.upper()}_{knob}": off for name in use_cases.names()
           for knob, off in (("RETRAIN_SCHEDULE", "none"), ("RETRAIN_EVERY_N", "0"))},
    }


def run(bootstrap: str, tmp: Path) -> dict:
    settings = bench_settings(bootstrap, tmp / "data").model_copy(update={
        "mlflow_tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "mlflow_artifact_root": tmp / "artifacts"})
    # Airflow reads its configuration once, at import: the environment is complete before the first import.
    os.environ.update({**airflow_env(AirflowConfig(home=tmp / "airflow", kafka_bootstrap_servers=bootstrap)),
                       **loop_env(settings)})
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True,
                   capture_output=True)
    summary = replay_frame(settings, load_completed((1, 12)))

    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag(DAG_ID)
    t0 = time.perf_counter()
    dag_run = dag.test(logical_date=datetime.now(UTC), run_conf={"rollout_timeout_s": 0})
    wall = time.perf_counter() - t0
    tis = sorted(dag_run.get_task_instances(), key=lambda ti: ti.start_date or datetime.max.replace(tzinfo=UTC))
    tasks_s = {ti.task_id: round(ti.duration or 0.0, 2) for ti in tis}
    return {
        "dag_state": str(dag_run.state),
        "dag_test_s": round(wall, 1),
        "tasks_s": tasks_s,
        "task_states": {ti.task_id: str(ti.state) for ti in tis},
        "tasks_sum_s": round(sum(tasks_s.values()), 1),
        "airflow_overhead_s": round(wall - sum(tasks_s.values()), 1),
        "events": summary.events,
        "replay_eps": round(summary.events_per_s),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    with kafka_cluster() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-dag-") as tmp:
        result = run(bootstrap, Path(tmp))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
