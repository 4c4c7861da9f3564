"""`python -m infra.mlflow`: start, stop and check the local MLflow tracking server.

Settings from the environment (``local.MlflowConfig``): MLFLOW_PORT (5000), MLFLOW_LOCAL_HOME (.local/mlflow:
mlflow.db, artifacts/).
"""

from __future__ import annotations

import logging
import sys

import typer

from infra.mlflow import local

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def up() -> None:
    """Start the server in the background; return once it answers."""
    cfg = local.MlflowConfig()
    mlflow = local.Mlflow(cfg)
    try:
        pid, took = mlflow.up()
    except local.MlflowSetupError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1)
    if took is None:
        typer.echo(f"MLflow already running on {cfg.url} (pid {pid})")
    else:
        typer.echo(f"MLflow ready on {cfg.url} in {took:.0f} s (pid {pid}, store {cfg.backend_store_uri}, log "
                   f"{mlflow.log_file}); stop it with `python -m infra.mlflow down`")


@app.command()
def down() -> None:
    """Stop the server started by `up` (its whole process group)."""
    cfg = local.MlflowConfig()
    typer.echo(f"MLflow on {cfg.url} stopped" if local.Mlflow(cfg).stop() else f"no MLflow running from {cfg.home}")


@app.command()
def status() -> None:
    """Say whether the server runs and answers; exit 1 when it is down."""
    cfg = local.MlflowConfig()
    mlflow = local.Mlflow(cfg)
    pid, ok = mlflow.running_pid(), mlflow.healthy()
    if pid is None and not ok:
        typer.echo(f"MLflow is not running from {cfg.home}")
        raise typer.Exit(1)
    typer.echo(f"MLflow on {cfg.url}: pid {pid}, {'healthy' if ok else 'not answering'}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    app()
