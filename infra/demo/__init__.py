"""`make demo`: the whole loop on a replayed year (Kafka, MLflow, Airflow, scorer) and its report."""
