"""`python -m ml`: list the use cases, create their topics, register and check their schemas, apply ACLs, snapshot
a topic, retrain; each use case adds its own commands (`python -m ml <use case> --help`, e.g. a replay of its
source data).

Settings come from the environment (``ml.settings.LoopSettings``: KAFKA_BOOTSTRAP_SERVERS, USE_CASE,
TOPIC_PREFIX, ...); ``--use-case`` overrides USE_CASE.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from ml import use_cases
from ml.errors import LoopError
from ml.settings import LoopSettings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

USE_CASE = typer.Option(None, "--use-case", envvar="USE_CASE", help="The use case (see `python -m ml use-cases`).")


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(1)


def _settings(use_case: str | None) -> LoopSettings:
    try:
        settings = LoopSettings(use_case=use_case)
        use_cases.selected(settings)
    except ValueError as exc:  # an unknown name, or none given
        _fail(exc)
    return settings


@app.command("use-cases")
def list_use_cases() -> None:
    """List the registered use cases and check each (exit 1 on a problem).

    Each with its topics as the settings name them, where it comes from, and what is inconsistent in it; a
    package that does not load is reported too.
    """
    settings = LoopSettings()
    failed = False
    for name in use_cases.names():
        try:
            uc = use_cases.get(name)
        except Exception as exc:  # noqa: BLE001 - a broken package is reported, the others still listed
            typer.secho(f"{name}: cannot be loaded: {type(exc).__name__}: {exc}", fg="red")
            failed = True
            continue
        t = uc.topics.resolved(settings)
        typer.echo(f"{name}: {uc.title}\n  input {t.input}, labels {t.labels}, predictions {t.predictions} (shadow "
                   f"{t.shadow}), dlq {t.dlq}\n  {type(uc).__module__}.{type(uc).__qualname__}")
        for problem in use_cases.problems(uc):
            typer.secho(f"  problem: {problem}", fg="red")
            failed = True
    if failed:
        raise typer.Exit(1)


@app.command()
def topics(use_case: str = typer.Option(None, "--use-case", help="Only this use case's topics (default: all).")
           ) -> None:
    """Create the missing topics of the use cases and the loop's own.

    Existing topics are left as they are.
    """
    from ml.topics import ensure_topics

    settings = LoopSettings()
    try:
        created = ensure_topics(settings, [use_cases.get(use_case)] if use_case else None)
    except (LoopError, ValueError) as exc:
        _fail(exc)
    for topic, new in created.items():
        typer.echo(f"{topic}: {'created' if new else 'exists'}")


schemas_app = typer.Typer(no_args_is_help=True, help="Each topic's value schema in the schema registry at "
                                                      "SCHEMA_REGISTRY_URL (subject <topic>-value).")
app.add_typer(schemas_app, name="schemas")


def _each_schema(use_case: str | None, act) -> None:
    """``act(registry, topic_schema) -> (ok, lines)`` for the schema of every topic (of ``use_case`` and the
    loop's own, or of every use case); prints the lines, red when not ok; exit 1 when one was not ok."""
    from ml.schema_registry import SchemaRegistry
    from ml.schemas import topic_schemas

    settings = LoopSettings()
    try:
        schemas = topic_schemas(settings, [use_cases.get(use_case)] if use_case else None)
    except ValueError as exc:
        _fail(exc)
    registry, failed = SchemaRegistry.of(settings), False
    for ts in schemas:
        try:
            ok, lines = act(registry, ts)
        except LoopError as exc:
            ok, lines = False, [f"{ts.subject}: {exc}"]
        for line in lines:
            typer.secho(line, fg=None if ok else "red")
        failed |= not ok
    if failed:
        raise typer.Exit(1)


SCHEMAS_USE_CASE = typer.Option(None, "--use-case", help="Only this use case's topics (and the loop's own).")


@schemas_app.command("register")
def schemas_register(use_case: str = SCHEMAS_USE_CASE) -> None:
    """Register the schema of every topic from its contract; a subject's compatibility is set to BACKWARD unless it
    is already as strict. Exit 1 when the registry refuses one (the fields that break it are named)."""

    def register(registry, ts) -> tuple[bool, list[str]]:
        done = registry.register(ts)
        return True, [f"{done.subject}: {ts.contract.__name__} is version {done.version} (id {done.schema_id}), "
                      f"compatibility {done.compatibility}"]

    _each_schema(use_case, register)


@schemas_app.command("check")
def schemas_check(use_case: str = SCHEMAS_USE_CASE) -> None:
    """Check the code's contracts against the registered schemas, each by its subject's compatibility level;
    exit 1 when one is incompatible, naming each field that breaks it. Registers nothing."""

    def check(registry, ts) -> tuple[bool, list[str]]:
        found = registry.check(ts)
        where = f" (version {found.version})" if found.version else ""
        return found.ok, [f"{found.subject}: {ts.contract.__name__} {found.state}{where}, compatibility "
                          f"{found.compatibility}", *(f"  {p}" for p in found.problems)]

    _each_schema(use_case, check)


acls_app = typer.Typer(no_args_is_help=True, help="Least-privilege Kafka ACLs of the roles replayer, loop, scorer "
                                                   "and monitor (run as the cluster's admin).")
app.add_typer(acls_app, name="acls")
PRINCIPAL = typer.Option(None, "--principal", help="role=principal, e.g. loop=User:svc-retrain (default "
                                                   "User:<role>); repeat per role.")


def _principals(pairs: list[str] | None) -> dict[str, str]:
    from ml.acls import ROLES

    out = {}
    for pair in pairs or []:
        role, sep, principal = pair.partition("=")
        if not sep or role not in ROLES or ":" not in principal:
            _fail(ValueError(f"--principal {pair!r}: expected role=Type:name with a role of {', '.join(ROLES)}"))
        out[role] = principal
    return out


@acls_app.command("show")
def acls_show(use_case: str = SCHEMAS_USE_CASE) -> None:
    """Print what each role may do on which topic, group and transactional id (nothing is changed)."""
    from ml import acls

    for line in acls.table(LoopSettings(), [use_cases.get(use_case)] if use_case else None):
        typer.echo(line)


@acls_app.command("check")
def acls_check(use_case: str = SCHEMAS_USE_CASE) -> None:
    """What this client (KAFKA_CLIENT_CONFIG, KAFKA_SASL_USERNAME, ...) may do on each topic, as the broker
    answers; reads and writes nothing."""
    from ml import acls

    settings = LoopSettings()
    try:
        access = acls.authorized(settings, [use_cases.get(use_case)] if use_case else None)
    except (LoopError, ValueError) as exc:
        _fail(exc)
    for topic, ops in access.items():
        typer.echo(f"{topic:<40} {','.join(sorted(ops)) if isinstance(ops, set) else 'refused: ' + ops}")


@acls_app.command("apply")
def acls_apply(use_case: str = SCHEMAS_USE_CASE, principal: list[str] = PRINCIPAL,
               dry_run: bool = typer.Option(False, "--dry-run", help="Print the changes, make none.")) -> None:
    """Make the roles' ACLs exactly the least-privilege set: create the missing ones, delete the others.
    Idempotent; the client must be a super user (KAFKA_CLIENT_CONFIG=<data dir>/clients/admin.properties)."""
    from ml import acls

    settings = LoopSettings()
    try:
        changes = acls.apply(settings, [use_cases.get(use_case)] if use_case else None,
                             principal_of=_principals(principal), dry_run=dry_run)
    except (LoopError, ValueError) as exc:
        _fail(exc)
    verb = "would " if dry_run else ""
    for b in changes.created:
        typer.echo(f"{verb}allow {b.principal} {b.operation.name} on {b.restype.name} {b.name} "
                   f"({b.resource_pattern_type.name})")
    for b in changes.deleted:
        typer.secho(f"{verb}remove {b.principal} {b.operation.name} on {b.restype.name} {b.name} "
                    f"({b.resource_pattern_type.name})", fg="yellow")
    typer.echo(f"{len(changes.created)} {verb}created, {len(changes.deleted)} {verb}deleted, {changes.kept} kept "
               f"on {settings.kafka_bootstrap_servers}")


keys_app = typer.Typer(no_args_is_help=True, help="Ed25519 key pairs of model envelopes: the loop signs with the "
                                                   "private key, the scorers verify with the public keys.")
app.add_typer(keys_app, name="keys")
KEYS_OUT = typer.Option(..., "--out", help="Folder to write <key id>.key (private, 0600) and <key id>.pem (public) "
                                           "into; existing files are never overwritten.")
KEY_ID = typer.Option(None, "--key-id", help="Key id the envelopes carry (default: the first 16 hex characters of "
                                             "the SHA-256 of the public key).")


@keys_app.command("generate")
def keys_generate(out: Path = KEYS_OUT, key_id: str = KEY_ID) -> None:
    """Generate a key pair that signs model envelopes; prints its key id and the variables to set."""
    from ml.signing import Signer, write_key_pair

    try:
        files = write_key_pair(out, Signer.generate(key_id))
    except LoopError as exc:
        _fail(exc)
    typer.echo(f"key id: {files.key_id}\n"
               f"private key: {files.private_file} (0600): a secret, only where the loop publishes (Airflow workers)\n"
               f"public key:  {files.public_file}: copy it into each scorer's trust folder\n\n"
               f"# where the loop publishes (or put the PEM text in MODEL_SIGNING_KEY, or in the password of the "
               f"Airflow connection model_signing with extra {{\"key_id\": \"{files.key_id}\"}}):\n"
               f"MODEL_SIGNING_KEY_FILE={files.private_file.absolute()}\n"
               f"MODEL_SIGNING_KEY_ID={files.key_id}\n"
               f"# each scorer: a folder of public keys only, holding a copy of {files.public_file.name}:\n"
               f"MODEL_TRUSTED_KEYS_DIR=<that folder>")


@app.command()
def snapshot(
    use_case: str = USE_CASE,
    topic: str = typer.Option(None, help="One of the use case's topics (default: its labels topic)."),
    snapshot_id: str = typer.Option(None, help="Id of the snapshot; an existing one is returned as is."),
) -> None:
    """Snapshot a topic from the previous snapshot's end offsets to its end now; prints the manifest."""
    from ml.contracts import DeadLetter
    from ml.snapshot import take_snapshot

    settings = _settings(use_case)
    uc = use_cases.selected(settings)
    t = uc.topics.resolved(settings)
    contracts = {t.dlq: DeadLetter, t.predictions: uc.prediction_contract, t.shadow: uc.prediction_contract,
                 t.input: uc.input_contract, t.labels: uc.label_contract}
    topic = topic or t.labels
    if topic not in contracts:
        _fail(ValueError(f"{topic!r} is not a topic of {uc.name}: {sorted(contracts)}"))
    try:
        manifest = take_snapshot(settings, topic, contracts[topic], snapshot_id=snapshot_id)
    except (LoopError, ValueError) as exc:
        _fail(exc)
    typer.echo(manifest.model_dump_json(indent=2))


@app.command()
def retrain(
    use_case: str = USE_CASE,
    run_id: str = typer.Option(None, help="Loop run id (default: manual__<UTC time>); a retry with the same "
                                          "id reuses its snapshot, training run and published version."),
    force_reason: str = typer.Option(None, help="Force-promote past the champion comparison (for a changed "
                                                "preprocessing); the reason is logged and recorded."),
    shadow: bool = typer.Option(None, "--shadow/--no-shadow", help="Publish a promoted candidate in shadow (scored "
                                "beside the champion, to the shadow topic) or as the champion (default: "
                                "SHADOW_FIRST)."),
) -> None:
    """Snapshot, validate, train, evaluate, register and publish in this process; prints the outcome.

    Exit status: 0 published or rejected by the gate, 2 skipped (too little data), 3 validation failed.
    """
    from datetime import UTC, datetime

    from ml.pipeline import retrain as run

    settings = _settings(use_case)
    run_id = run_id or f"manual__{datetime.now(UTC):%Y%m%dT%H%M%S}"
    try:
        outcome = run(settings, run_id, force_reason=force_reason, shadow=shadow)
    except (LoopError, ValueError) as exc:
        _fail(exc)
    typer.echo(outcome.model_dump_json(indent=2))
    raise typer.Exit({"skipped": 2, "invalid": 3}.get(outcome.status, 0))


@app.command()
def monitor(use_case: str = USE_CASE) -> None:
    """Run the live monitor of a use case until interrupted: predictions joined with their labels per version,
    live metrics to /metrics and MLflow, rollbacks, shadow verdicts and retraining requests (MONITOR_*)."""
    import signal

    from ml.monitoring.service import Monitor
    from ml.monitoring.settings import MonitorSettings

    _settings(use_case)
    try:
        service = Monitor(MonitorSettings(use_case=use_case))
    except (LoopError, ValueError) as exc:
        _fail(exc)
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    try:
        service.run()
    except KeyboardInterrupt:
        service.stop()


@app.command("promote-shadow")
def promote_shadow(use_case: str = USE_CASE,
                   version: int = typer.Option(..., "--version", help="The shadow's version (a check: it must be "
                                                                      "the one in shadow).")) -> None:
    """Make the shadow version the champion: its envelope signed anew as champion (same artifact: the scorers take
    it live without loading it again), published, the shadow retired, @champion moved. Safe to repeat."""
    from ml.pipeline import promote_shadow_step

    settings = _settings(use_case)
    try:
        result = promote_shadow_step(settings, version)
    except (LoopError, ValueError) as exc:
        _fail(exc)
    typer.echo(result.model_dump_json(indent=2))


@app.command("retire-shadow")
def retire_shadow(use_case: str = USE_CASE,
                  reason: str = typer.Option("", help="Why: carried by the tombstone, reported by the scorers.")
                  ) -> None:
    """Retire the use case's shadow model: a tombstone on its shadow key (the scorers stop scoring it), @shadow
    removed. Safe to repeat."""
    from ml.pipeline import retire_shadow_step

    settings = _settings(use_case)
    try:
        result = retire_shadow_step(settings, reason)
    except (LoopError, ValueError) as exc:
        _fail(exc)
    typer.echo(result.model_dump_json(indent=2))


def with_use_case_commands() -> typer.Typer:
    """The app with each registered use case's own commands under its name (a package that fails to load
    is logged and left out: one broken package does not take the CLI down)."""
    added = {group.name for group in app.registered_groups}
    for name in use_cases.names():
        if name in added:
            continue
        try:
            uc = use_cases.get(name)
            commands = uc.cli()
        except Exception as exc:  # noqa: BLE001 - any error of a third-party package; the log names it
            logging.getLogger(__name__).warning("use case %s: its commands are unavailable: %s", name, exc)
            continue
        if commands is not None:
            app.add_typer(commands, name=name, help=uc.title)
    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    with_use_case_commands()()
