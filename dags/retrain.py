"""The retraining DAGs, one per registered use case (``retrain_<name>``): wiring only. Each runs snapshot ->
validate -> train -> evaluate -> register -> publish -> verify rollout for its use case; ``ml.airflow_dag``
builds them and documents their triggers and Params."""

from ml.airflow_dag import retrain_dags

globals().update(retrain_dags())
