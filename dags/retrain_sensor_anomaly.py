"""Retrain the sensor anomaly autoencoder from Kafka: the same Airflow tasks as the flight DAG
(``plugins/retrain_dag.py``) with the ``sensor_anomaly`` use case, snapshotting `sensors.readings`.

Triggers: a cron schedule (env ``SENSOR_RETRAIN_SCHEDULE``, default ``@daily``; ``none`` turns it off), manual
runs with Params, and every ``RETRAIN_EVERY_N_READINGS`` readings per partition of sensors.readings (a Kafka
AssetWatcher; 0 turns it off). The model is registered and published as ``sensor_anomaly`` (envelope key on
the shared `models` topic) in the MLflow experiment ``sensor-anomaly``.
"""

from __future__ import annotations

import os

from retrain_dag import retrain_dag

dag = retrain_dag(
    dag_id="retrain_sensor_anomaly", use_case="sensor_anomaly", asset_name="kafka_sensors_readings",
    watcher_name="every_n_sensor_readings", cron_spec=os.environ.get("SENSOR_RETRAIN_SCHEDULE", "@daily"),
    every_n=int(os.environ.get("RETRAIN_EVERY_N_READINGS", "20000")), doc_md=__doc__,
)
