"""`python -m ml sensor_anomaly ...`: generate labelled machine readings and replay them into sensors.readings.
Settings come from the environment (``ml.settings.LoopSettings``)."""

from __future__ import annotations

import typer

from ml.errors import LoopError
from ml.settings import LoopSettings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def replay(
    machines: int = typer.Option(4, min=1, help="Number of machines (keys m000, m001, ...)."),
    readings: int = typer.Option(2000, min=1, help="Readings per machine."),
    seed: int = typer.Option(7, help="Seed: the same seed gives the same readings and anomalies."),
    anomaly_rate: float = typer.Option(0.03, min=0.001, max=0.49, help="Share of readings in anomaly episodes."),
    cadence_s: float = typer.Option(60.0, min=1, help="Event-time seconds between two readings of a machine."),
    speed: float = typer.Option(None, min=0, help="Event-time seconds per wall second."),
    rate: float = typer.Option(None, min=0, help="Target readings per second."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Generate labelled machine readings and replay them into sensors.readings; prints the summary as JSON.

    Anomaly episodes: spikes, drift, stuck values, correlated failures; readings in event-time order.
    """
    from use_cases.sensor_anomaly.generator import generate, replay_readings

    try:
        frame = generate(machines, readings, seed=seed, anomaly_rate=anomaly_rate, cadence_s=cadence_s)
        summary = replay_readings(LoopSettings(use_case="sensor_anomaly"), frame, speed=speed, rate=rate,
                                  progress=progress)
    except (LoopError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(summary.model_dump_json(indent=2))
