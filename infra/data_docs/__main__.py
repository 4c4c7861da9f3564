"""`python -m infra.data_docs fetch`: download the Data Docs pages' assets (WebJars) from Maven Central into the
cache (DATA_DOCS_ASSETS_CACHE, default ~/.cache/retrain-loop/data-docs) and print their folder, the value of
DATA_DOCS_ASSETS_DIR; `unpack JARS TARGET`: the same from WebJars Maven copied elsewhere (the Airflow image)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from infra.data_docs import assets

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def fetch() -> None:
    """Fetch the assets (a no-op when cached) and print their folder."""
    try:
        folder = assets.fetch()
    except assets.DataDocsAssetsError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(folder)


@app.command()
def unpack(jars: Path = typer.Argument(..., help="Folder of the WebJars of infra/data_docs/pom.xml (Maven's copy)."),
           target: Path = typer.Argument(..., help="Folder to unpack them into: DATA_DOCS_ASSETS_DIR.")) -> None:
    """Unpack WebJars that Maven copied elsewhere (the Airflow image's build stage) as ``fetch`` does."""
    try:
        assets.unpack(jars, target)
    except assets.DataDocsAssetsError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(target)


@app.callback()
def main() -> None:
    """Commands of the Data Docs assets."""


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app()
