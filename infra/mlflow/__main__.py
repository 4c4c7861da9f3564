"""`python -m infra.mlflow`: start, stop and check the local MLflow tracking server.

Settings from the environment (``local.MlflowConfig``): MLFLOW_PORT (5000), MLFLOW_LOCAL_HOME (.local/mlflow:
mlflow.db, artifacts/).
"""

from __future__ import annotations

import logging
import sys

import typer

from infra.local_service import add_commands
from infra.mlflow import local

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
add_commands(app, lambda: local.Mlflow(local.MlflowConfig()), what="the MLflow server",
             stop_hint="python -m infra.mlflow down")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    app()
