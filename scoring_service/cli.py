"""`python -m scoring_service`: run one scorer replica until SIGTERM/SIGINT.

Every setting is read from its environment variable (upper-case name, e.g. BATCH_SIZE) and may be overridden
by the flag of the same name; the settings in ENV_ONLY (credentials) are read from the environment only, so they
never show in a process listing. A scorer holds no private key: it checks each model's signature against the
public keys in MODEL_TRUSTED_KEYS_DIR.
"""

from __future__ import annotations

import inspect
import json
import logging
import signal
import sys
import types
import typing
from typing import Any

import typer
from pydantic import ValidationError

from scoring_service.config import ScorerSettings

ENV_ONLY = frozenset({"kafka_client_properties"})
JSON_FLAGS = frozenset(name for name, f in ScorerSettings.model_fields.items()
                       if typing.get_origin(f.annotation) is dict)


def _flag_type(annotation: object) -> type:
    """The type typer parses a flag as: Literal choices as str (pydantic validates them), others as is."""
    if typing.get_origin(annotation) is typing.Literal:
        return str
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _flag_type(next(a for a in typing.get_args(annotation) if a is not type(None)))
    return annotation if annotation in (str, int, float, bool) else str


def _parameters() -> list[inspect.Parameter]:
    params = []
    for name, field in ScorerSettings.model_fields.items():
        if name in ENV_ONLY:
            continue
        default = ("required" if field.is_required() else "per use case" if field.default is None
                   else field.get_default(call_default_factory=True))
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else ()
        help_text = f"{field.description} (env {name.upper()}, default {default})"
        if choices:
            help_text += f" One of: {', '.join(choices)}."
        flag = f"--{name.replace('_', '-')}"
        if field.annotation is bool:  # both ways: --static-membership / --no-static-membership
            flag = f"{flag}/--no-{name.replace('_', '-')}"
        option = typer.Option(None, flag, help=help_text, show_default=False)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=_flag_type(field.annotation) | None))
    return params


def run(**overrides: Any) -> None:
    """Run one scorer replica (settings: env vars, overridden by flags; credentials env only)."""
    try:
        given = {k: v for k, v in overrides.items() if v is not None}
        for name in JSON_FLAGS & given.keys():  # a JSON object on the command line, as in the environment
            given[name] = json.loads(given[name])
        settings = ScorerSettings(**given)
    except (ValidationError, json.JSONDecodeError) as e:
        typer.secho(f"error: invalid settings:\n{e}", fg="red", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    from ml.errors import LoopError
    from scoring_service.app import Scorer

    try:
        scorer = Scorer(settings)
    except LoopError as e:  # the schema registry: unreachable, or the output schemas refused or not registered
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from None

    def on_signal(signum: int, _frame) -> None:
        logging.getLogger(__name__).info("%s: finishing the current batch, then stopping",
                                         signal.Signals(signum).name)
        scorer.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    scorer.run()


run.__signature__ = inspect.Signature(_parameters())  # typer reads the options from the signature
app = typer.Typer(add_completion=False, help=__doc__)
app.command(help=__doc__)(run)


def main() -> None:
    app()


