"""`python -m infra.demo`: the whole retraining loop on a replayed 2013, and its report.

`run` starts a fresh broker state (the loop's topics are recreated), MLflow, Airflow and the scorer, replays
the months, runs the DAG after each month, writes the report and, unless --no-hold, keeps the services up
until Ctrl-C. `down` stops what an interrupted run left. Knobs: flags or DEMO_* environment variables.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from infra.demo import run as demo_run

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(highlight=False)


def _say(line: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {line}", soft_wrap=True)


def _hold() -> None:
    _say("press Ctrl-C to stop everything")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # the expected end of a finished demo: stop the services, exit 0
        _say("stopping")


def _on_sigterm(signum: int, _frame) -> None:
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C


@app.command()
def run(
    months: str = typer.Option(None, help="Months of 2013, e.g. 1-12 or 1-2 (env DEMO_MONTHS, default 1-12)."),
    limit: int = typer.Option(None, min=1, help="Only the first N flights of each month (env DEMO_LIMIT)."),
    head_share: float = typer.Option(None, min=0, max=0.99, help="Share of each month's events streamed while the "
                                     "previous month's run trains (env DEMO_HEAD_SHARE, default 0.05)."),
    rate: float = typer.Option(None, min=0, help="Events/s of the rest of each month, once the run before it has "
                                                 "finished (env DEMO_RATE; default and 0: full speed)."),
    report_dir: Path = typer.Option(None, help="Report folder (env DEMO_REPORT_DIR, default reports/demo)."),
    home: Path = typer.Option(None, help="State folder, wiped at the start (env DEMO_HOME, .local/demo)."),
    hold: bool = typer.Option(True, envvar="DEMO_HOLD", help="Keep the services up after the report until Ctrl-C."),
) -> None:
    """Run the demo end to end; Ctrl-C stops everything it started."""
    overrides = {k: v for k, v in {"months": months, "limit": limit, "head_share": head_share, "rate": rate,
                                   "report_dir": report_dir,
                                   "home": home}.items() if v is not None}
    demo = demo_run.DemoSettings(**overrides)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        demo_run.run(demo, _say, hold=_hold if hold else None)
    except KeyboardInterrupt:
        _say("interrupted: everything the demo started is stopped")
        raise typer.Exit(130) from None
    except Exception as exc:  # every failure ends the same way: stopped services and the reason
        logging.getLogger(__name__).debug("demo failed", exc_info=True)
        typer.secho(f"error: {type(exc).__name__}: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


@app.command()
def report(report_dir: Path = typer.Option(None, help="Report folder holding the run's summary.json "
                                                     "(env DEMO_REPORT_DIR, default reports/demo).")) -> None:
    """Rebuild the report of the last run from the topics (its DAG runs from the existing summary.json)."""
    from infra.demo import report as demo_report

    demo = demo_run.DemoSettings(**({"report_dir": report_dir} if report_dir else {}))
    try:
        previous = json.loads((demo.report_dir / demo_report.SUMMARY).read_text())
    except FileNotFoundError:
        typer.secho(f"error: no {demo_report.SUMMARY} in {demo.report_dir}: run the demo first", fg="red", err=True)
        raise typer.Exit(1) from None
    summary = demo_report.build(demo.loop_settings(), previous["runs"], demo.report_dir,
                                wall_seconds=previous.get("wall_seconds"))
    _say(f"report rebuilt in {demo.report_dir}: loop beat frozen in months {summary['loop_beat_frozen_months']}")


@app.command()
def down(home: Path = typer.Option(None, help="State folder of the run (env DEMO_HOME, .local/demo).")) -> None:
    """Stop the scorer, Airflow and MLflow that a demo run left running."""
    demo = demo_run.DemoSettings(**({"home": home} if home else {}))
    stopped = demo_run.stop_all(demo)
    typer.echo(f"stopped {', '.join(stopped)}" if stopped else f"nothing of a demo runs from {demo.home}")


if __name__ == "__main__":
    # One line per DAG run and swap: no per-download progress bars from MLflow's client in between.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    app()
