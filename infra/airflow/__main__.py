"""`python -m infra.airflow`: start, stop and check the local Airflow (``airflow standalone``) for the demo.

Settings from the environment (``local.AirflowConfig``): AIRFLOW_PORT (8080), AIRFLOW_LOCAL_HOME
(.local/airflow), KAFKA_BOOTSTRAP_SERVERS (localhost:9092, becomes the ``kafka_default`` connection).
"""

from __future__ import annotations

import logging
import sys

import typer

from infra.airflow import local
from infra.local_service import add_commands

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
add_commands(app, lambda: local.Airflow(local.AirflowConfig()), what="Airflow",
             stop_hint="python -m infra.airflow down")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    app()
