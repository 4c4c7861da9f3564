"""`python -m infra.airflow`: start, stop and check the local Airflow (``airflow standalone``) for the demo.

Settings from the environment (``local.AirflowConfig``): AIRFLOW_PORT (8080), AIRFLOW_LOCAL_HOME
(.local/airflow), KAFKA_BOOTSTRAP_SERVERS (localhost:9092, becomes the ``kafka_default`` connection).
"""

from __future__ import annotations

import logging
import sys

import typer

from infra.airflow import local

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _login(cfg: local.AirflowConfig) -> str:
    try:
        return f"login {local.ADMIN_USER} / {local.admin_password(cfg)}"
    except local.AirflowSetupError as exc:
        return str(exc)


@app.command()
def up() -> None:
    """Start Airflow in the background; return once the API server and scheduler are healthy."""
    cfg = local.AirflowConfig()
    try:
        pid, took = local.Airflow(cfg).up()
    except local.AirflowSetupError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1)
    if took is None:
        typer.echo(f"Airflow already running on {cfg.url} (pid {pid}); {_login(cfg)}")
    else:
        typer.echo(f"Airflow ready on {cfg.url} in {took:.0f} s (pid {pid}, home {cfg.home}, log {cfg.log_file}); "
                   f"{_login(cfg)}; loop page {cfg.url}/retrain-loop/; stop it with `python -m infra.airflow down`")


@app.command()
def down() -> None:
    """Stop the Airflow started by `up` (its whole process group)."""
    cfg = local.AirflowConfig()
    if local.Airflow(cfg).stop():
        typer.echo(f"Airflow on {cfg.url} stopped")
    else:
        typer.echo(f"no Airflow running from {cfg.home}")


@app.command()
def status() -> None:
    """Say whether Airflow runs, its component health and the admin login; exit 1 when it is down."""
    cfg = local.AirflowConfig()
    pid, health = local.Airflow(cfg).running_pid(), local.health(cfg)
    if pid is None and health is None:
        typer.echo(f"Airflow is not running from {cfg.home}")
        raise typer.Exit(1)
    parts = {k: v.get("status") for k, v in (health or {}).items() if isinstance(v, dict)}
    typer.echo(f"Airflow on {cfg.url}: pid {pid}, health {parts or 'no answer'}; {_login(cfg)}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    app()
