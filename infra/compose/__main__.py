"""`python -m infra.compose`: one-shots of the compose overrides (run inside the project image)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from infra.compose import kafka_setup
from infra.kafka import security
from infra.kafka.errors import KafkaSetupError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def main() -> None:
    """One-shots of the compose overrides."""


def _owner(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    uid, sep, gid = value.partition(":")
    if not (uid.isdigit() and gid.isdigit() and sep):
        raise typer.BadParameter(f"expected uid:gid, got {value!r}", param_hint="--owner")
    return int(uid), int(gid)


@app.command("kafka-setup")
def kafka_setup_command(
    data_dir: Path = typer.Option(..., "--data-dir", help="The broker's folder (its volume): certificate, settings, "
                                                          "storage."),
    ca_dir: Path = typer.Option(..., "--ca-dir", help="Where the clients read the CA certificate (ca.pem)."),
    owner: str = typer.Option(None, "--owner", help="uid:gid the broker runs as, to give its files to."),
) -> None:
    """Prepare the secured compose broker (infra/compose/sasl-ssl.yml) from KAFKA_<ROLE>_PASSWORD: its CA and
    certificate, settings and SCRAM credentials, as the local sasl_ssl broker's."""
    try:
        files = kafka_setup.prepare(data_dir, ca_dir, kafka_setup.role_passwords(os.environ), _owner(owner))
    except KafkaSetupError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    scram = (f"{security.MECHANISM} credentials of {', '.join(security.ROLES)} for the storage format ({files.scram})"
             if files.scram else "storage formatted already (its SCRAM credentials kept)")
    typer.echo(f"broker settings {files.server_properties} for {kafka_setup.BROKER_HOST}:{kafka_setup.PORT} "
               f"(SASL_SSL, mTLS controller, ACLs); {scram}; CA certificate {files.ca_cert}")


if __name__ == "__main__":
    app()
