"""`python -m infra.registry`: fetch, start, stop and check the local Apicurio Registry (schemas kept in Kafka).

Settings come from the environment (the Makefile passes them through; ``server.RegistryConfig``): REGISTRY_PORT
(8081), REGISTRY_MANAGEMENT_PORT (8091), REGISTRY_DATA_DIR (.local/registry), REGISTRY_JAVA_HOME (a Java 21+;
unset: JAVA_HOME, PATH, then /usr/lib/jvm), REGISTRY_DIST_CACHE (~/.cache/retrain-loop/apicurio),
KAFKA_BOOTSTRAP_SERVERS (the broker that stores the schemas, localhost:9092).
"""

from __future__ import annotations

import logging
import sys

import typer

from infra.local_service import add_commands
from infra.registry import distribution, server
from infra.registry.distribution import RegistrySetupError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
add_commands(app, lambda: server.Registry(server.RegistryConfig()), what="the schema registry",
             stop_hint="make registry-down")


@app.command()
def fetch() -> None:
    """Find a Java 21+ and download the registry server from Maven Central into the cache (no-op when cached)."""
    cfg = server.RegistryConfig()
    try:
        java, release = server.find_java(cfg)
        dist = distribution.fetch(cfg.dist_cache, cfg.version)
    except RegistrySetupError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Apicurio Registry {dist.version} in {dist.home}; runs on Java {release} ({java})")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    app()
