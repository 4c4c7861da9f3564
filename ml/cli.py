"""`python -m ml`: create the loop's topics, replay flights or sensor readings into Kafka, snapshot a topic,
retrain.

Settings come from the environment (``ml.settings.LoopSettings``: KAFKA_BOOTSTRAP_SERVERS, TOPIC_*, ...).
"""

from __future__ import annotations

import logging
import sys

import typer

from ml.errors import LoopError
from ml.settings import LoopSettings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(1)


def _months(spec: str | None, first: int | None, last: int | None) -> tuple[int, int]:
    """``--months 3`` or ``--months 1-12``, or --first-month/--last-month (each defaults to 1 and 12)."""
    if spec is not None:
        if first is not None or last is not None:
            raise typer.BadParameter("give --months or --first-month/--last-month, not both")
        lo, _, hi = spec.partition("-")
        try:
            return int(lo), int(hi or lo)
        except ValueError:
            raise typer.BadParameter(f"--months must look like 3 or 1-12, got {spec!r}") from None
    return first or 1, last or 12


@app.command()
def topics() -> None:
    """Create the loop's topics that are missing (existing ones are left as they are)."""
    from ml.topics import ensure_topics

    settings = LoopSettings()
    try:
        created = ensure_topics(settings)
    except LoopError as exc:
        _fail(exc)
    for topic, new in created.items():
        typer.echo(f"{topic}: {'created' if new else 'exists'}")


@app.command()
def replay(
    months: str = typer.Option(None, help="Month range, e.g. 1-12 or 3."),
    first_month: int = typer.Option(None, min=1, max=12, help="First month (inclusive)."),
    last_month: int = typer.Option(None, min=1, max=12, help="Last month (inclusive)."),
    speed: float = typer.Option(None, min=0, help="Event-time seconds per wall second."),
    rate: float = typer.Option(None, min=0, help="Target events per second."),
    limit: int = typer.Option(None, min=1, help="Replay only the first N flights by departure."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Replay flights into flights.scheduled / flights.completed in event-time order (as fast as possible
    unless --speed or --rate is given); prints the summary as JSON."""
    from ml.replay import replay as run

    try:
        summary = run(LoopSettings(), _months(months, first_month, last_month), limit=limit, speed=speed,
                      rate=rate, progress=progress)
    except (LoopError, ValueError) as exc:
        _fail(exc)
    typer.echo(summary.model_dump_json(indent=2))


@app.command("sensors-replay")
def sensors_replay(
    machines: int = typer.Option(4, min=1, help="Number of machines (keys m000, m001, ...)."),
    readings: int = typer.Option(2000, min=1, help="Readings per machine."),
    seed: int = typer.Option(7, help="Seed: the same seed gives the same readings and anomalies."),
    anomaly_rate: float = typer.Option(0.03, min=0.001, max=0.49, help="Share of readings in anomaly episodes."),
    cadence_s: float = typer.Option(60.0, min=1, help="Event-time seconds between two readings of a machine."),
    speed: float = typer.Option(None, min=0, help="Event-time seconds per wall second."),
    rate: float = typer.Option(None, min=0, help="Target readings per second."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Generate labelled machine sensor readings (spikes, drift, stuck values, correlated failures) and
    replay them into sensors.readings in event-time order; prints the summary as JSON."""
    from ml.sensors.generator import generate, replay_readings

    try:
        frame = generate(machines, readings, seed=seed, anomaly_rate=anomaly_rate, cadence_s=cadence_s)
        summary = replay_readings(LoopSettings(), frame, speed=speed, rate=rate, progress=progress)
    except (LoopError, ValueError) as exc:
        _fail(exc)
    typer.echo(summary.model_dump_json(indent=2))


@app.command()
def snapshot(
    topic: str = typer.Option(None, help="Topic to snapshot (default: the use case's training topic)."),
    snapshot_id: str = typer.Option(None, help="Id of the snapshot; an existing one is returned as is."),
) -> None:
    """Snapshot a topic from the previous snapshot's end offsets to its end now; prints the manifest."""
    from ml import usecases
    from ml.snapshot import take_snapshot

    settings = LoopSettings()
    try:
        manifest = take_snapshot(settings, topic or usecases.get(settings.use_case).training_topic(settings),
                                 snapshot_id=snapshot_id)
    except (LoopError, ValueError) as exc:
        _fail(exc)
    typer.echo(manifest.model_dump_json(indent=2))


@app.command()
def retrain(
    run_id: str = typer.Option(None, help="Loop run id (default: manual__<UTC time>); a retry with the same "
                                          "id reuses its snapshot, training run and published version."),
    force_reason: str = typer.Option(None, help="Force-promote past the champion comparison (for a changed "
                                                "feature contract); the reason is logged and recorded."),
) -> None:
    """Snapshot, validate, train, evaluate, register and publish the use case of USE_CASE (default
    flight_delay) in this process; prints the outcome.

    Exit status: 0 published or rejected by the gate, 2 skipped (too little data), 3 validation failed.
    """
    from datetime import UTC, datetime

    from ml.pipeline import retrain as run

    run_id = run_id or f"manual__{datetime.now(UTC):%Y%m%dT%H%M%S}"
    try:
        outcome = run(LoopSettings(), run_id, force_reason=force_reason)
    except (LoopError, ValueError) as exc:
        _fail(exc)
    typer.echo(outcome.model_dump_json(indent=2))
    raise typer.Exit({"skipped": 2, "invalid": 3}.get(outcome.status, 0))


@app.command()
def loop(
    months: str = typer.Option("1-3", help="Month range to replay, e.g. 1-3."),
    progress: bool = typer.Option(True, help="Show a progress bar per month."),
) -> None:
    """Replay month by month and retrain after each month (run id ``monthly-2013-MM``); one line per month.

    Months whose run already has a snapshot are not replayed again, so a second call only repeats the
    (reused) outcomes.
    """
    from ml import snapshot
    from ml.pipeline import retrain as run, snapshot_id_for
    from ml.replay import replay as replay_months

    settings = LoopSettings()
    first, last = _months(months, None, None)
    try:
        for month in range(first, last + 1):
            run_id = f"monthly-2013-{month:02d}"
            done = {m.snapshot_id for m in snapshot.list_manifests(settings, settings.topic_flights_completed)}
            if snapshot_id_for(run_id) not in done:
                replay_months(settings, (month, month), progress=progress)
            outcome = run(settings, run_id)
            steps = " ".join(f"{k}={v:.1f}s" for k, v in outcome.seconds.items())
            version = f" v{outcome.model_version}" if outcome.model_version else ""
            typer.echo(f"2013-{month:02d}: {outcome.status}{version} ({steps}): {outcome.reason}")
    except (LoopError, ValueError) as exc:
        _fail(exc)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    app()
