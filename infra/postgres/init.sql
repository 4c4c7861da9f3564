-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d), as POSTGRES_USER:
-- one server, two databases: Airflow's metadata and MLflow's backend store.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
