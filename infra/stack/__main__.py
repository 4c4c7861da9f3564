"""`python -m infra.stack`: the docker compose deployment seen through the Docker engine.

`status` lists the compose project's containers, their state and health, and the model version each scorer
serves (from its /metrics). Exit codes: 0 all running containers healthy (or without healthcheck),
1 something unhealthy, exited with an error or not found, 2 no Docker engine reachable.
The engine address is the Docker SDK's: DOCKER_HOST, else unix:///var/run/docker.sock.
"""

from __future__ import annotations

import typer

from infra.stack import status as st

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def _main() -> None:
    """The docker compose deployment (docker-compose.yml)."""


@app.command()
def status(project: str = typer.Option(st.PROJECT, help="Compose project name (`name:` of the file, or -p).")
           ) -> None:
    """Containers of the compose project, their health, and each scorer's model version."""
    try:
        client = st.connect()
    except st.EngineUnavailable as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    rows = st.stack_status(client, project)
    if not rows:
        typer.echo(f"no containers of compose project {project!r} (start it with `docker compose up -d`)")
        raise typer.Exit(1)
    bad = False
    for r in rows:
        line = f"{r.service:<22} {r.name:<40} {r.state:<10} {r.health:<10}"
        if r.exit_code is not None:
            line += f" exit {r.exit_code}"
            bad |= r.exit_code != 0
        if r.model_versions is not None:
            models = ", ".join(f"{n} v{v}" if v else f"{n} (no model yet)" for n, v in r.model_versions.items())
            line += f" model: {models or 'no model gauge yet'}"
        elif r.model_error:
            line += f" model: unknown ({r.model_error})"
        bad |= r.health == "unhealthy" or r.state in ("restarting", "dead")
        typer.echo(line)
    raise typer.Exit(1 if bad else 0)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
