"""`python -m infra.mlflow`: start, stop and check the local MLflow tracking server.

Settings from the environment: MLFLOW_PORT (5000), MLFLOW_LOCAL_HOME (.local/mlflow: mlflow.db, artifacts/).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import typer

from infra.mlflow import local

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _config() -> local.MlflowConfig:
    return local.MlflowConfig(
        home=Path(os.environ.get("MLFLOW_LOCAL_HOME", local.REPO / ".local" / "mlflow")).resolve(),
        port=int(os.environ.get("MLFLOW_PORT", "5000")))


@app.command()
def up() -> None:
    """Start the server in the background; return once it answers."""
    cfg = _config()
    pid = local.running_pid(cfg)
    if pid is not None:
        typer.echo(f"MLflow already running on {cfg.url} (pid {pid})")
        return
    t0 = time.monotonic()
    try:
        proc = local.start(cfg)
    except local.MlflowSetupError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(f"MLflow ready on {cfg.url} in {time.monotonic() - t0:.0f} s (pid {proc.pid}, store "
               f"{cfg.backend_store_uri}, log {cfg.log_file}); stop it with `python -m infra.mlflow down`")


@app.command()
def down() -> None:
    """Stop the server started by `up` (its whole process group)."""
    cfg = _config()
    typer.echo(f"MLflow on {cfg.url} stopped" if local.stop(cfg) else f"no MLflow running from {cfg.home}")


@app.command()
def status() -> None:
    """Say whether the server runs and answers; exit 1 when it is down."""
    cfg = _config()
    pid, ok = local.running_pid(cfg), local.healthy(cfg)
    if pid is None and not ok:
        typer.echo(f"MLflow is not running from {cfg.home}")
        raise typer.Exit(1)
    typer.echo(f"MLflow on {cfg.url}: pid {pid}, {'healthy' if ok else 'not answering'}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    app()
