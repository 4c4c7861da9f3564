"""`python -m infra.kafka`: fetch, start, stop and check the local single-node Kafka broker.

Settings come from the environment (the Makefile passes them through; ``broker.BrokerConfig``):
KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT + 1), KAFKA_DATA_DIR (.local/kafka),
KAFKA_VERSION (the pinned version), KAFKA_DIST_CACHE (~/.cache/retrain-loop/kafka).
"""

from __future__ import annotations

import logging
import sys

import typer

from infra.kafka import broker, distribution
from infra.kafka.errors import KafkaSetupError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


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
def up() -> None:
    """Start the broker in the background and return once it answers."""
    cfg = broker.BrokerConfig()
    node = broker.Broker(cfg)
    try:
        pid, took = node.up()
    except KafkaSetupError as exc:
        _fail(exc)
    if took is None:
        typer.echo(f"Kafka already running on {cfg.bootstrap_servers} (pid {pid}, data {cfg.data_dir})")
    else:
        typer.echo(f"Kafka {node.dist.version} ready on {cfg.bootstrap_servers} in {took:.1f} s (pid {pid}; data and "
                   f"broker.log in {cfg.data_dir}); stop it with `make kafka-down`")


@app.command()
def down() -> None:
    """Stop the broker started by `up` (same KAFKA_DATA_DIR)."""
    cfg = broker.BrokerConfig()
    if broker.Broker(cfg).stop():
        typer.echo(f"Kafka on {cfg.bootstrap_servers} stopped")
    else:
        typer.echo(f"no Kafka broker running from {cfg.data_dir}")


@app.command()
def status() -> None:
    """Say whether the broker is running and answering; exit 1 if not."""
    cfg = broker.BrokerConfig()
    node = broker.Broker(cfg)
    pid = node.running_pid()
    if pid is None:
        typer.echo(f"no Kafka broker running from {cfg.data_dir}")
        raise typer.Exit(1)
    try:
        node.wait_healthy(timeout=5)
    except KafkaSetupError as exc:
        _fail(exc)
    typer.echo(f"Kafka running on {cfg.bootstrap_servers} (pid {pid})")


@app.command()
def check(
    bootstrap: str = typer.Option(None, envvar="KAFKA_BOOTSTRAP_SERVERS", help="Broker to check."),
    messages: int = typer.Option(10_000, help="Records to produce and read back."),
) -> None:
    """Round-trip records through a fresh topic and print what the broker reports."""
    from infra.kafka.smoke import round_trip

    bootstrap = bootstrap or broker.BrokerConfig().bootstrap_servers
    try:
        result = round_trip(bootstrap, messages)
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
