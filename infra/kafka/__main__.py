"""`python -m infra.kafka`: fetch, start, stop and check the local Kafka broker, or cluster of KAFKA_NODES nodes.

Settings come from the environment (the Makefile passes them through; ``broker.BrokerConfig``):
KAFKA_NODES (1; node i of a larger cluster listens on KAFKA_PORT + 2(i-1) and the next port, data in
KAFKA_DATA_DIR/node-<i>), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT + 1), KAFKA_DATA_DIR (.local/kafka),
KAFKA_SECURITY (plaintext, or sasl_ssl: TLS + SCRAM-SHA-512, client settings per role in KAFKA_DATA_DIR/clients),
KAFKA_VERSION (the pinned version), KAFKA_DIST_CACHE (~/.cache/retrain-loop/kafka).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from infra.kafka import broker, distribution, security
from infra.kafka.cluster import Cluster
from infra.kafka.errors import KafkaSetupError
from infra.local_service import add_commands
from ml.kafka_client import KafkaConfigError, read_properties

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
add_commands(app, Cluster.from_env, what="the broker (or every node of the cluster)", stop_hint="make kafka-down")


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(1)


@app.command()
def fetch() -> None:
    """Download the broker jars from Maven Central into the cache (no-op when cached)."""
    cfg = broker.BrokerConfig()
    try:
        dist = distribution.fetch(cfg.version, cfg.dist_cache)
    except KafkaSetupError as exc:
        _fail(exc)
    typer.echo(f"Apache Kafka {dist.version} jars in {dist.lib_dir}")


@app.command()
def check(
    bootstrap: str = typer.Option(None, envvar="KAFKA_BOOTSTRAP_SERVERS", help="Broker to check."),
    messages: int = typer.Option(10_000, help="Records to produce and read back."),
    client_config: Annotated[Path | None, typer.Option(
        envvar="KAFKA_CLIENT_CONFIG",
        help="librdkafka properties of the client (credentials, CA); default with KAFKA_SECURITY=sasl_ssl: the "
             "admin's, KAFKA_DATA_DIR/clients/admin.properties.")] = None,
) -> None:
    """Round-trip records through a fresh topic and print what the broker reports."""
    from infra.kafka.smoke import round_trip

    cfg = broker.BrokerConfig()
    bootstrap = bootstrap or Cluster(cfg).bootstrap_servers
    if client_config is None and cfg.secured:
        client_config = cfg.client_config(security.ADMIN)
    try:
        settings = read_properties(client_config) if client_config else {}
    except KafkaConfigError as exc:
        _fail(KafkaSetupError(f"{exc} (a sasl_ssl broker writes them on its first start: make kafka-up "
                              "KAFKA_SECURITY=sasl_ssl)"))
    try:
        result = round_trip(bootstrap, messages, settings=settings)
    except KafkaSetupError as exc:
        _fail(exc)
    typer.echo(
        f"broker {bootstrap}: produced {result.produced} records to {result.topic} in "
        f"{result.produce_s:.2f} s, high watermark {result.high_watermark}, consumed {result.consumed} "
        f"in {result.consume_s:.2f} s; round trip OK"
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
